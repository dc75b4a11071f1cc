"""`serq adapt`: unlabelled adaptation to a domain, with a skewed emotion mix; locally and over the queue.

Unit tests check the statistics on synthetic data whose channel and mix are known. The
corpus tests adapt throwaway models in temp dirs: the shipped model on TurEV (evaluation
only: nothing trained or adapted on it is kept), and a quick RAVDESS model that records
class statistics.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from conftest import ravdess_clip
from helpers import REPO
from helpers.corpus import TUREV_SPEAKERS, make_subset, turev_clips, write_manifest
from serq.errors import DatasetError, ModelError
from serq.models.registry import Registry, default_metadata
from serq.schemas import ClassStatistics, TrainRequest, TrainResult
from serq.settings import Settings
from serq.worker.training.adaptation import (
    adapted_pipeline,
    choose_method,
    mixture_moments,
    plain_moments,
    prior_shift_mix,
    reweighted_moments,
    robust_moments,
    source_mix,
)
from serq.worker.training.job import run_training

#: A quick recipe: these tests check plumbing, not accuracy.
QUICK = {"hidden_layers": [32], "max_iter": 30, "augment_speeds": []}

# --------------------------------------------------------------------------- unit: known channel, known mix


def _source(rng, k=4, f=30):
    """Class means/variances in standardised units, with a training mix that averages to 0."""
    means = rng.normal(0, 1.0, (k, f))
    means -= means.mean(axis=0)
    variances = np.full((k, f), 0.3)
    return ClassStatistics(labels=[f"c{i}" for i in range(k)], priors=[1 / k] * k,
                           means=means.tolist(), variances=variances.tolist())


def _domain(rng, stats: ClassStatistics, mix, n, shift, scale):
    """Clips of the source's classes in proportions ``mix``, through a channel ``x * scale + shift``."""
    m, v = np.asarray(stats.means), np.asarray(stats.variances)
    labels = rng.choice(len(mix), size=n, p=mix)
    Z = m[labels] + rng.normal(0, 1, (n, m.shape[1])) * np.sqrt(v[labels])
    return Z * scale + shift, labels


def test_mixture_statistics_find_the_channel_under_a_skewed_mix():
    rng = np.random.default_rng(0)
    stats = _source(rng)
    shift, scale = rng.normal(5, 2, 30), rng.uniform(0.5, 3, 30)
    skewed = [0.85, 0.05, 0.05, 0.05]  # "mostly neutral"
    X, _ = _domain(rng, stats, skewed, 800, shift, scale)
    mean, spread, mix = mixture_moments(X, stats)
    naive_mean, naive_spread = plain_moments(X)
    # The channel is recovered; the plain mean is pulled toward the dominant class.
    assert np.abs((mean - shift) / scale).mean() < 0.1
    assert np.abs((naive_mean - shift) / scale).mean() > 3 * np.abs((mean - shift) / scale).mean()
    assert np.abs(spread / scale - 1).mean() < 0.1
    assert np.abs(np.asarray(mix) - skewed).max() < 0.05
    # Robust statistics alone do not remove a mix this skewed.
    robust_mean, _ = robust_moments(X)
    assert np.abs((robust_mean - shift) / scale).mean() > 3 * np.abs((mean - shift) / scale).mean()


def test_mixture_statistics_on_a_balanced_mix_agree_with_plain_ones():
    rng = np.random.default_rng(1)
    stats = _source(rng)
    shift, scale = rng.normal(-2, 1, 30), rng.uniform(0.5, 2, 30)
    X, _ = _domain(rng, stats, [0.25] * 4, 800, shift, scale)
    mean, spread, mix = mixture_moments(X, stats)
    naive_mean, naive_spread = plain_moments(X)
    assert np.abs((mean - naive_mean) / scale).max() < 0.2
    assert np.abs(np.asarray(mix) - 0.25).max() < 0.05


def _gaussian_classes(rng, k=4, f=12, n=400):
    """``k`` classes in ``f`` features (means ~3 apart, unit spread), ``n`` clips each, and a model fitted on them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    means = rng.normal(0, 1.5, (k, f))
    labels = np.repeat(np.arange(k), n)
    X = means[labels] + rng.normal(0, 1, (k * n, f))
    names = np.array([f"c{i}" for i in range(k)])
    model = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=2000))]).fit(X, names[labels])
    return means, model


def test_reweighted_statistics_take_a_skewed_mix_out_using_only_the_model():
    """A domain 85 % of one class, through a mild channel: the model's own posteriors estimate the mix, and the
    clips weighted back to the training mix give the channel's mean and spread where plain statistics do not."""
    rng = np.random.default_rng(2)
    means, model = _gaussian_classes(rng)
    source = np.full(4, 0.25)
    skewed = np.array([0.85, 0.05, 0.05, 0.05])
    labels = rng.choice(4, size=1500, p=skewed)
    shift, scale = rng.normal(0, 0.3, 12), rng.uniform(0.9, 1.2, 12)
    X = (means[labels] + rng.normal(0, 1, (1500, 12))) * scale + shift
    # what the channel does to the source's (balanced) clips: the statistics a perfect adaptation finds
    balanced = (means[rng.choice(4, size=20000)] + rng.normal(0, 1, (20000, 12))) * scale + shift
    target_mean, target_sd = balanced.mean(axis=0), balanced.std(axis=0)
    mean, spread, mix = reweighted_moments(model, X, source)
    naive_mean, naive_sd = plain_moments(X)
    assert np.abs(mix - skewed).max() < 0.05
    error = np.abs(mean - target_mean) / target_sd
    assert error.mean() < 0.12
    assert (np.abs(naive_mean - target_mean) / target_sd).mean() > 3 * error.mean()
    assert np.abs(spread / target_sd - 1).mean() < 0.1
    assert np.abs(naive_sd / target_sd - 1).mean() > 2 * np.abs(spread / target_sd - 1).mean()
    # on a domain in the training mix, the weights stay ~1: the plain statistics
    labels = rng.choice(4, size=1500)
    X = (means[labels] + rng.normal(0, 1, (1500, 12))) * scale + shift
    mean, spread, mix = reweighted_moments(model, X, source)
    assert np.abs(mix - 0.25).max() < 0.05
    assert (np.abs(mean - X.mean(axis=0)) / X.std(axis=0)).max() < 0.1


def test_prior_shift_mix_recovers_the_mix_behind_calibrated_posteriors():
    # Posteriors of a 2-class problem trained 50/50, on a domain that is 80/20: the EM finds 0.8.
    rng = np.random.default_rng(3)
    y = rng.random(4000) < 0.8
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    p1 = 1 / (1 + np.exp(-2 * x))  # exact posterior of class 1 under equal priors
    mix, adjusted = prior_shift_mix(np.stack([p1, 1 - p1], axis=1), np.array([0.5, 0.5]))
    assert abs(mix[0] - 0.8) < 0.03 and np.allclose(adjusted.sum(axis=1), 1)


def test_the_source_mix_comes_from_class_statistics_else_the_cross_validated_supports():
    from serq.models.registry import load_default

    shipped = load_default()
    mix = dict(zip([str(c) for c in shipped.pipeline.classes_], source_mix(shipped.pipeline, shipped.meta)))
    supports = {k: v["support"] for k, v in shipped.meta.metrics.per_class.items()}
    total = sum(supports.values())
    assert all(abs(mix[k] - supports[k] / total) < 1e-9 for k in mix)
    stats = ClassStatistics(labels=sorted(mix), priors=[0.5] + [0.5 / 7] * 7, means=[[0.0]] * 8,
                            variances=[[1.0]] * 8)
    mix = source_mix(shipped.pipeline, shipped.meta.model_copy(update={"class_statistics": stats}))
    assert abs(mix[0] - 0.5) < 1e-9
    uniform = source_mix(shipped.pipeline, shipped.meta.model_copy(update={"metrics": None}))
    assert np.allclose(uniform, 1 / 8)


def test_an_adapted_pipeline_keeps_the_network_and_standardises_by_the_domain(tmp_path):
    from serq.models.registry import load_default

    source = load_default().pipeline
    f = source.named_steps["scale"].mean_.shape[0]
    mean, scale = np.arange(f, dtype=float), np.full(f, 2.0)
    scale[0] = 0.0  # a constant feature keeps the source's scale
    adapted = adapted_pipeline(source, mean, scale)
    assert adapted.named_steps["mlp"] is not source.named_steps["mlp"]
    for a, b in zip(adapted.named_steps["mlp"].coefs_, source.named_steps["mlp"].coefs_):
        assert np.array_equal(a, b)
    assert np.array_equal(adapted.named_steps["scale"].mean_, mean)
    assert adapted.named_steps["scale"].scale_[0] == source.named_steps["scale"].scale_[0]
    assert adapted.named_steps["scale"].scale_[1] == 2.0
    assert choose_method("auto", None) == "reweighted" and choose_method("robust", None) == "robust"


def test_adapt_requests_are_validated():
    from serq.cli import main

    with pytest.raises(ValueError, match="unlabelled"):
        TrainRequest(kind="adapt", sources=[{"dataset": "a"}])
    with pytest.raises(ValueError, match="only for kind 'adapt'"):
        TrainRequest(dataset="a", model="v1")
    with pytest.raises(SystemExit):
        main(["adapt", "--data", "x", "--local", "--wait"])


# --------------------------------------------------------------------------- TurEV, locally


def _unlabelled(folder: Path, clips) -> Path:
    """``folder/clip0001.flac ...``: the clips under names that say nothing (no label can leak)."""
    folder.mkdir(parents=True)
    for i, (path, _, _) in enumerate(clips):
        (folder / f"clip{i:04d}{path.suffix}").symlink_to(path)
    return folder


def _skewed(clips, major: str, share: float, rng):
    """``clips`` with every clip of ``major`` and only enough others to make it ``share`` of the folder."""
    mine = [c for c in clips if c[1] == major]
    rest = [c for c in clips if c[1] != major]
    keep = int(len(mine) * (1 - share) / share)
    return mine + [rest[i] for i in sorted(rng.choice(len(rest), keep, replace=False))]


def _restricted_balanced_accuracy(model, X, y) -> float:
    """Balanced accuracy with the choice restricted to the classes present (TurEV has 4 of the 8)."""
    from serq.worker.engine.inference import probabilities

    present = sorted(set(y))
    cols = [list(model.meta.labels).index(c) for c in present]
    pred = np.array(present)[probabilities(model, X)[:, cols].argmax(axis=1)]
    return balanced_accuracy_score(y, pred)


@pytest.mark.corpus
@pytest.mark.slow
def test_adapting_on_turev_speakers_helps_the_other_speakers_even_with_a_skewed_mix(turev_dir, ravdess_dir, tmp_path,
                                                                                     monkeypatch):
    """Half of TurEV's speakers, unlabelled, adapt a RAVDESS model; the other half is scored.

    Adapted on a folder that is 75 % calm ("mostly neutral" traffic), the default method
    (``reweighted``) stays at least as good as zero-shot and close to what a balanced folder gives.
    """
    from serq.worker.training.datasets import scan
    from serq.worker.training.extraction import training_set

    cache = tmp_path / "cache"
    monkeypatch.setenv("SERQ_MODEL_DIR", str(tmp_path / "models"))
    settings = Settings(model_dir=tmp_path / "models", cache_dir=cache)
    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2, 3, 4, 5, 6], "six")
    trained = run_training(TrainRequest(dataset=str(root / "six"), folds=2, activate="always",
                                        hyperparameters=QUICK | {"max_iter": 200, "hidden_layers": [64]}),
                           settings, n_jobs=1)
    assert trained.ok and trained.activated, trained
    registry = Registry(settings.model_dir)
    assert registry.active_metadata().class_statistics is not None

    adapt_speakers, test_speakers = TUREV_SPEAKERS[:3], TUREV_SPEAKERS[3:]
    pool = turev_clips(turev_dir, adapt_speakers, per_emotion=25)
    test_clips = turev_clips(turev_dir, test_speakers, per_emotion=25)
    test = training_set(scan(write_manifest(tmp_path / "test.csv", test_clips)), cache, n_jobs=1)
    zero_shot = _restricted_balanced_accuracy(registry.load_active(), test.X, test.y)

    rng = np.random.default_rng(0)
    figures = {}
    for name, clips in {"balanced": pool, "skewed": _skewed(pool, "calm", 0.75, rng)}.items():
        folder = _unlabelled(tmp_path / name, clips)
        result = run_training(TrainRequest(kind="adapt", dataset=str(folder), activate="never"), settings, n_jobs=1)
        assert result.ok and not result.activated, result
        meta = registry.metadata(result.version)
        assert meta.adaptation.method == "reweighted" and meta.adaptation.clips == len(clips)
        assert meta.adaptation.source_version == trained.version
        figures[name] = _restricted_balanced_accuracy(registry.load(result.version), test.X, test.y)
        figures[name + " mix"] = meta.adaptation.estimated_mix
    print(f"TurEV other half: zero-shot {zero_shot:.3f}, adapted {figures}")
    assert figures["balanced"] >= zero_shot - 0.02
    assert figures["skewed"] >= zero_shot - 0.02
    assert abs(figures["skewed"] - figures["balanced"]) <= 0.06
    assert registry.active_version() == trained.version, "activate never: the active model stays"


@pytest.mark.corpus
def test_serq_adapt_local_registers_a_card_without_paths_and_refuses_what_it_cannot_use(turev_dir, tmp_path):
    env = os.environ | {"SERQ_MODEL_DIR": str(tmp_path / "models"), "SERQ_CACHE_DIR": str(tmp_path / "cache")}
    folder = _unlabelled(tmp_path / "my-private-calls", turev_clips(turev_dir, ["1234"], per_emotion=6))
    out = subprocess.run([sys.executable, "-m", "serq", "adapt", "--data", str(folder), "--local", "--activate",
                          "--json"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["ok"] and result["activated"] and result["version"]
    registry = Registry(tmp_path / "models")
    assert registry.active_version() == result["version"]
    meta = registry.metadata(result["version"])
    # The default method needs only the model: the shipped one (no class statistics) is reweighted too.
    assert meta.adaptation.method == "reweighted" and set(meta.adaptation.estimated_mix) == set(meta.labels)
    assert meta.adaptation.clips == 24 and meta.adaptation.duration_s > 5
    folder_text = (registry.folder(result["version"]) / "MODEL_CARD.md").read_text()
    assert "24 unlabelled clips" in folder_text
    for leak in ("my-private-calls", "clip0000", str(tmp_path)):
        assert leak not in folder_text and leak not in (registry.folder(result["version"]) / "model.json").read_text()

    few = _unlabelled(tmp_path / "few", turev_clips(turev_dir, ["1234"], per_emotion=2))
    out = subprocess.run([sys.executable, "-m", "serq", "adapt", "--data", str(few), "--local"], env=env,
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 2 and "[dataset_error]" in out.stderr and "at least 20" in out.stderr


def test_adapting_a_speaker_model_or_a_file_is_refused_with_typed_errors(tmp_path):
    import shutil

    from serq.models.registry import DEFAULT_SPEAKER_DIR, read_metadata

    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    (tmp_path / "f.wav").write_bytes(b"RIFF")
    result = run_training(TrainRequest(kind="adapt", dataset=str(tmp_path / "f.wav")), settings)
    assert not result.ok and result.error.code == "dataset_error" and "directory" in result.error.message
    speaker = read_metadata(DEFAULT_SPEAKER_DIR).version
    shutil.copytree(DEFAULT_SPEAKER_DIR, tmp_path / "models" / "versions" / speaker)
    (tmp_path / "clips").mkdir()
    result = run_training(TrainRequest(kind="adapt", dataset=str(tmp_path / "clips"), model=speaker), settings)
    assert not result.ok and result.error.code == "model_error" and "speaker-normalised" in result.error.message
    result = run_training(TrainRequest(kind="adapt", dataset=str(tmp_path / "clips"), model="nope"), settings)
    assert not result.ok and result.error.code == "model_error"
    result = run_training(TrainRequest(kind="adapt", dataset=str(tmp_path / "clips")), settings)
    assert not result.ok and result.error.code == "dataset_error" and "at least 20" in result.error.message
    assert not (tmp_path / "models" / "ACTIVE").exists()


# --------------------------------------------------------------------------- over the queue, with hot-swap


@pytest.mark.broker
@pytest.mark.corpus
@pytest.mark.slow
def test_adapt_over_the_queue_hot_swaps_the_workers_after_a_multi_source_training(
        amqp_url, prefix, tmp_path, ravdess_dir, start_worker, start_trainer):
    """A trainer takes a two-source training job (weights, per-source figures), then an adaptation job;
    a worker serving all along hot-swaps to each activated version and no request fails."""
    from serq.client import Client

    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2, 3, 4], "four")
    user = [(p, {3: "happy", 4: "sad", 5: "angry", 1: "neutral"}[e], s)
            for s, actor in (("alice", 5), ("bob", 6))
            for e in (1, 3, 4, 5) for p in sorted((ravdess_dir / f"Actor_{actor:02d}").glob(f"03-01-{e:02d}-*.flac"))[:4]]
    write_manifest(root / "mine.csv", user)
    unlabelled = _unlabelled(root / "calls", [(p, "", "") for p in sorted((ravdess_dir / "Actor_07").glob("*.flac"))[:30]])
    env_common = {"SERQ_DATA_ROOTS": f"{root}:{ravdess_dir}", "SERQ_CACHE_DIR": str(tmp_path / "cache")}
    start_trainer(env=env_common)
    worker = start_worker()
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}
    client = Client(amqp_url, prefix, timeout=60)
    clip = ravdess_clip(8, 5, intensity=2)
    try:
        assert client.classify(clip).model_version == default_metadata().version

        trained = subprocess.run(
            [sys.executable, "-m", "serq", "train", "--data", "four", "--data", "mine.csv:5", "--emotions",
             "neutral,happy,sad,angry", "--folds", "2", "--hidden", "32", "--max-iter", "60", "--augment", "none",
             "--activate", "always", "--wait", "--json"], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert trained.returncode == 0, trained.stderr
        result = TrainResult.model_validate_json(trained.stdout)
        assert result.ok and result.activated
        assert [s["name"] for s in result.dataset["sources"]] == ["four", "mine.csv"]
        assert [s["weight"] for s in result.dataset["sources"]] == [1.0, 5.0]
        assert result.dataset["sources"][1] == {"name": "mine.csv", "weight": 5.0, "clips": 32, "speakers": 2}
        per_source = result.metrics.sources
        assert set(per_source) == {"four", "mine.csv"} and per_source["mine.csv"].n == 32
        assert per_source["four"].n + per_source["mine.csv"].n == result.metrics.n
        assert {"manifest:alice", "manifest:bob"} <= set(result.dataset["speaker_ids"])
        _wait_for_version(client, clip, result.version)

        adapted = subprocess.run([sys.executable, "-m", "serq", "adapt", "--data", "calls", "--activate", "--wait"],
                                 env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert adapted.returncode == 0, adapted.stderr
        for stage in ("scanning", "extracting", "fitting", "registering"):  # the trainer's progress events
            assert stage in adapted.stderr, adapted.stderr
        version = re.search(r"^model (\S+) registered; activated: True", adapted.stdout, re.M).group(1)
        assert f"adapted {result.version} to 30 clips" in adapted.stdout and "method reweighted" in adapted.stdout
        assert version != result.version
        _wait_for_version(client, clip, version)
        registry = Registry(tmp_path / "models")
        assert registry.active_version() == version
        assert registry.metadata(version).adaptation.source_version == result.version
        assert "job_answered" in (tmp_path / "trainer0.log").read_text()
    finally:
        client.close()
    assert worker.poll() is None


def _wait_for_version(client, clip, version: str, timeout: float = 120) -> None:
    """Classify until the worker answers with ``version`` (every reply must succeed meanwhile)."""
    deadline = time.monotonic() + timeout
    while (seen := client.classify(clip).model_version) != version:
        assert time.monotonic() < deadline, f"the worker still serves {seen}, not {version}"
        time.sleep(0.2)
