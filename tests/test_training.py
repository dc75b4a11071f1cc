"""Training and honest evaluation, end to end on the real corpus.

`serq train --local` (a real subprocess) fits on actors 01-06; `serq evaluate` then
scores actors 17-20, whom the model never heard. The network is small and
max_iter low: this tests the plumbing and the honesty of the figures, not accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serq.labels import EMOTIONS
from serq.schemas import Hyperparameters, TrainRequest
from serq.settings import Settings
from serq.worker.training.fit import cross_validate, folds_for

from helpers.corpus import link_actors

TRAIN_ACTORS = [1, 2, 3, 4, 5, 6]
HELD_OUT_ACTORS = [17, 18, 19, 20]
SMALL = ["--hidden", "64", "--max-iter", "60", "--seed", "3", "--channel-copies", "0"]
REPORT_KEYS = {"n", "accuracy", "balanced_accuracy", "macro_f1", "labels", "per_class", "confusion_matrix", "skipped"}


def serq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run the real `serq` in a subprocess (training: the whole CLI path, as a user runs it)."""
    return subprocess.run([sys.executable, "-m", "serq", *args], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    return os.environ | {"SERQ_MODEL_DIR": str(workdir / "models"), "SERQ_CACHE_DIR": str(workdir / "cache")}


@pytest.fixture(scope="module")
def trained(ravdess_dir, env) -> dict:
    speakers = ",".join(f"{a:02d}" for a in TRAIN_ACTORS)
    proc = serq("train", "--local", "--data", str(ravdess_dir), "--speakers", speakers, "--activate", *SMALL, "--json",
                env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def held_out(ravdess_dir, workdir) -> Path:
    return link_actors(ravdess_dir, workdir / "held_out", HELD_OUT_ACTORS)


@pytest.mark.corpus
@pytest.mark.slow
def test_train_local_registers_activates_and_reports_speaker_grouped_metrics(trained, cli):
    assert trained["ok"] and trained["activated"]
    metrics = trained["metrics"]
    assert metrics["speaker_independent"] is True
    assert metrics["protocol"] == "speaker-grouped 5-fold"
    assert metrics["n"] == 60 * len(TRAIN_ACTORS)
    assert set(metrics["folds"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert trained["dataset"]["speaker_ids"] == [f"ravdess:{a:02d}" for a in TRAIN_ACTORS]
    assert trained["dataset"]["skipped"] == {"speaker not selected": 60 * (20 - len(TRAIN_ACTORS))}

    code, out, _ = cli("models", "list", "--json")
    active = [m for m in json.loads(out) if m["active"]]
    assert code == 0 and [m["version"] for m in active] == [trained["version"]]


@pytest.mark.corpus
@pytest.mark.slow
def test_evaluate_on_unheard_speakers_prints_honest_metrics(trained, held_out, cli):
    code, out, err = cli("evaluate", "--data", str(held_out), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert REPORT_KEYS <= set(report)
    assert report["speaker_independent"] is True
    assert "none seen in training" in report["protocol"]
    assert report["n"] == 60 * len(HELD_OUT_ACTORS)
    assert report["labels"] == list(EMOTIONS)
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (8, 8) and matrix.sum() == report["n"]
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    recalls = [report["per_class"][e]["recall"] for e in EMOTIONS]
    assert report["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert report["skipped"] == {}
    # Six speakers and a tiny network still learn something real: far above chance (1/8).
    assert report["balanced_accuracy"] > 0.2

    code, out, _ = cli("evaluate", "--data", str(held_out))
    assert code == 0 and "speaker-independent" in out and "balanced accuracy" in out


@pytest.mark.corpus
@pytest.mark.slow
def test_training_speakers_are_skipped_by_default(trained, ravdess_dir, workdir, cli):
    mixed = link_actors(ravdess_dir, workdir / "mixed", [1, 17])
    report = json.loads(cli("evaluate", "--data", str(mixed), "--json")[1])
    assert report["n"] == 60 and report["skipped"] == {"speaker seen in training": 60}
    assert report["speaker_independent"] is True

    seen = link_actors(ravdess_dir, workdir / "seen", [1])
    code, _, err = cli("evaluate", "--data", str(seen), "--json")
    assert code == 2
    assert "[dataset_error]" in err and "--include-seen-speakers" in err

    forced = json.loads(cli("evaluate", "--data", str(seen), "--include-seen-speakers", "--json")[1])
    assert forced["n"] == 60 and forced["speaker_independent"] is False
    assert "seen in training" in forced["protocol"]


@pytest.mark.corpus
@pytest.mark.slow
def test_same_seed_gives_identical_metrics(trained, ravdess_dir, workdir):
    from serq.worker.training.job import run_training

    settings = Settings(model_dir=workdir / "models-again", cache_dir=workdir / "cache")
    request = TrainRequest(
        dataset=str(ravdess_dir), speakers=[f"{a:02d}" for a in TRAIN_ACTORS], activate="never",
        hyperparameters=Hyperparameters(hidden_layers=[64], max_iter=60, random_state=3, channel_copies=0),
    )
    first = run_training(request, settings, n_jobs=1)
    second = run_training(request, settings, n_jobs=1)
    assert first.ok and second.ok
    assert first.metrics.model_dump() == second.metrics.model_dump()
    # ...and equal to the CLI run in another process with the same data and seed.
    assert first.metrics.model_dump(mode="json") == trained["metrics"]


def synthetic(n_speakers: int = 20, per: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"s{i:02d}" for i in range(n_speakers)], per)
    y = np.array(EMOTIONS[:4])[rng.integers(0, 4, len(groups))]
    X = rng.standard_normal((len(groups), 6))
    return X, y, groups


def test_speaker_grouped_folds_never_share_a_speaker():
    X, y, groups = synthetic()
    splits = folds_for(y, groups, protocol="speaker", k=5)
    assert len(splits) == 5
    tested = np.concatenate([test for _, test in splits])
    assert sorted(tested.tolist()) == list(range(len(y)))  # every clip tested exactly once
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
        assert len(set(groups[test])) == 4  # 20 speakers over 5 folds


def test_too_few_speakers_for_grouped_folds_is_a_dataset_error():
    from serq.errors import DatasetError

    _, y, groups = synthetic(n_speakers=3)
    with pytest.raises(DatasetError, match="at least 5 speakers"):
        folds_for(y, groups, protocol="speaker", k=5)


def test_random_split_is_labelled_speaker_dependent():
    X, y, groups = synthetic()
    hp = Hyperparameters(hidden_layers=[4], max_iter=10)
    labels = list(EMOTIONS[:4])
    honest = cross_validate(X, y, groups, hp, labels=labels, protocol="speaker", k=5)
    flattering = cross_validate(X, y, groups, hp, labels=labels, protocol="random", k=5)
    assert honest.speaker_independent is True and "speaker-grouped" in honest.protocol
    assert flattering.speaker_independent is False and "speaker-dependent" in flattering.protocol
