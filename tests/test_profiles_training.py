"""Speaker-normalised training, honest profile evaluation and the profile path of classify, on the real corpus.

A tiny network on four actors: this tests the plumbing and the honesty of the
figures (which clips are scored, which model answers), not accuracy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION

from conftest import ravdess_clip
from helpers.corpus import link_actors

ACTORS = [1, 2, 3, 4]
SMALL = ["--hidden", "32", "--max-iter", "40", "--seed", "1", "--folds", "2"]
ENROL = 8  # ProfileRecipe().enrol_clips: training metrics are enroll:8

pytestmark = [pytest.mark.corpus, pytest.mark.slow]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("profiles")


@pytest.fixture(scope="module")
def env(workdir) -> dict[str, str]:
    """A private model registry for `cli` (test_training's fixture); the environment's feature cache if set."""
    cache = os.environ.get("SERQ_CACHE_DIR") or str(workdir / "cache")
    return os.environ | {"SERQ_MODEL_DIR": str(workdir / "models"), "SERQ_CACHE_DIR": cache}


@pytest.fixture(scope="module")
def subset(ravdess_dir, workdir) -> Path:
    return link_actors(ravdess_dir, workdir / "data", ACTORS)


_trained: dict[str, dict] = {}


@pytest.fixture
def trained(cli, subset) -> dict:
    """`serq train --local --speaker-normalisation --activate`, once per module."""
    if str(subset) not in _trained:
        code, out, err = cli("train", "--local", "--data", str(subset), "--speaker-normalisation", "--activate",
                             *SMALL, "--json")
        assert code == 0, err
        _trained[str(subset)] = json.loads(out)
    return _trained[str(subset)]


def test_speaker_normalised_training_registers_a_speaker_model_beside_the_plain_one(trained, workdir):
    from serq.models.registry import Registry, load_speaker_model, speaker_version

    assert trained["ok"] and trained["activated"], trained
    metrics = trained["metrics"]
    assert metrics["speaker_independent"] is True and metrics["protocol"] == f"speaker-grouped 2-fold, enroll:{ENROL}"
    assert set(metrics["folds"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert metrics["speaker_profiles"].startswith(f"enroll:{ENROL}")
    assert metrics["n"] == len(ACTORS) * (60 - ENROL)  # enrolment clips are never scored
    registry = Registry(workdir / "models")
    assert speaker_version(registry) == trained["version"]
    assert registry.active_version() is None  # the plain model's ACTIVE is untouched
    meta = registry.metadata(trained["version"])
    assert meta.normalisation == "speaker" and meta.feature_version == FEATURE_VERSION
    assert len(meta.speaker_prior.mean) == len(meta.speaker_prior.var) == len(FEATURE_NAMES)
    served = load_speaker_model(workdir / "models")
    assert served is not None and served.version == trained["version"]


def test_a_speaker_model_never_replaces_the_plain_model(trained, workdir):
    from serq.errors import ModelError
    from serq.models.registry import Registry
    from serq.models.signing import Signer
    from serq.settings import Settings
    from serq.worker.services.worker import Worker

    registry = Registry(workdir / "models")
    with pytest.raises(ModelError, match="speaker profiles"):
        registry.activate(trained["version"])
    assert registry.active_version() is None
    settings = Settings(model_dir=workdir / "models")
    event = registry.announcement(trained["version"], "trained", Signer.from_settings(settings))
    # Announced on <p>.models (signed), it is verified and goes to the profile path's slot, never the plain one.
    worker = Worker(settings)
    plain = worker.holder.current
    worker._activate(event.model_dump_json().encode())
    assert worker.holder.current is plain and plain.meta.normalisation == "none"
    assert worker.speaker_model.version == trained["version"]


def _levels(paths):
    from serq.settings import get_settings
    from serq.worker.training.datasets import Clip
    from serq.worker.training.extraction import extract_levels

    return extract_levels([Clip(p, "calm", "x", "ravdess") for p in paths], get_settings().cache_dir)


def _vectors(paths):
    from serq.settings import get_settings
    from serq.worker.training.datasets import Clip
    from serq.worker.training.extraction import extract_clips

    X, ok, _ = extract_clips([Clip(p, "calm", "x", "ravdess") for p in paths], get_settings().cache_dir)
    assert ok.all()
    return X


def test_classify_uses_the_profile_or_falls_back_and_says_which(trained, workdir, cli):
    from serq.models.registry import Registry, load_speaker_model
    from serq.settings import get_settings
    from serq.worker.engine import profiles
    from serq.worker.engine.inference import classify

    settings = get_settings()
    plain = Registry(workdir / "models").load_active()
    speaker_model = load_speaker_model(workdir / "models")
    actor = 9  # not a training speaker
    calm = [ravdess_clip(actor, 2, intensity, statement, rep) for intensity in (1, 2) for statement in (1, 2)
            for rep in (1, 2)]
    enrolled = profiles.build("caller-9", _vectors(calm[:5]), FEATURE_VERSION, updates=True, levels=_levels(calm[:5]))
    clip = ravdess_clip(actor, 5, 2, 1, 1)

    none = classify(clip, plain, settings)
    assert (none.normalisation, none.profile_status, none.profile_clips, none.profile) == ("none", None, None, None)

    used = classify(clip, plain, settings, profile=enrolled, speaker_model=speaker_model)
    assert used.normalisation == "speaker" and used.profile_status == "used"
    assert used.model_version == trained["version"] and used.profile_clips == 5
    assert used.profile.count == 6  # updates allowed: this clip was added, after it was classified
    np.testing.assert_allclose(used.profile.mean, profiles.add(enrolled, _vectors([clip])).mean, rtol=1e-5, atol=1e-6)
    assert used.profile.level_db == pytest.approx(profiles.add(enrolled, _vectors([clip]), _levels([clip])).level_db,
                                                  abs=1e-4)
    # The speaker model reads the clip's level relative to the speaker's: the same clip 12 dB louder than the
    # speaker's enrolment (the profile recorded 12 dB quieter) is another input, and the plain model's is unchanged.
    quieter = enrolled.model_copy(update={"level_db": enrolled.level_db - 12.0})
    louder = classify(clip, plain, settings, profile=quieter, speaker_model=speaker_model)
    assert louder.profile_status == "used" and louder.probabilities != used.probabilities
    assert classify(clip, plain, settings).probabilities == none.probabilities
    # The speaker enrolled and heard through the same gain: the same answer at any gain (only relative level).
    import io

    import soundfile as sf

    from serq.worker.engine.audio import decode

    samples = decode(clip).samples
    for gain_db in (-18.0, 6.0):
        buf = io.BytesIO()
        sf.write(buf, samples * np.float32(10 ** (gain_db / 20)), 16000, format="WAV", subtype="FLOAT")
        shifted = enrolled.model_copy(update={"level_db": enrolled.level_db + gain_db})
        again = classify(buf.getvalue(), plain, settings, profile=shifted, speaker_model=speaker_model)
        assert again.label == used.label
        np.testing.assert_allclose(list(again.probabilities.values()), list(used.probabilities.values()), atol=0.01)

    small = profiles.build("caller-9", _vectors(calm[:2]), FEATURE_VERSION)
    fallback = classify(clip, plain, settings, profile=small, speaker_model=speaker_model)
    assert fallback.normalisation == "none" and fallback.profile_status == "too_few_clips"
    assert fallback.model_version == plain.version and fallback.profile is None  # no updates allowed
    assert fallback.probabilities == none.probabilities

    no_model = classify(clip, plain, settings, profile=enrolled, speaker_model=None)
    assert (no_model.normalisation, no_model.profile_status) == ("none", "no_speaker_model")
    stale = enrolled.model_copy(update={"feature_version": "serq-fe-0"})
    old = classify(clip, plain, settings, profile=stale, speaker_model=speaker_model)
    assert old.profile_status == "feature_version_mismatch" and old.profile.count == 5  # nothing added


def test_evaluate_speaker_profiles_scores_only_clips_outside_each_profile(trained, subset, cli):
    code, out, err = cli("evaluate", "--data", str(subset), "--model", trained["version"],
                         "--speaker-profiles", "enroll:4", "--folds", "2", "--json")
    assert code == 0, err
    reports = json.loads(out)
    assert set(reports) == {"plain", "plain_same_clips", "speaker_profiles"}
    assert reports["plain"]["n"] == 60 * len(ACTORS)
    assert reports["speaker_profiles"]["n"] == reports["plain_same_clips"]["n"] == (60 - 4) * len(ACTORS)
    # Enrolment takes neutral/calm clips first: 4 of each speaker's 12 are gone from the scored set.
    support = {e: reports["speaker_profiles"]["per_class"][e]["support"] for e in ("neutral", "calm")}
    assert sum(support.values()) == (12 - 4) * len(ACTORS)
    assert all(r["speaker_independent"] for r in reports.values())

    code, out, err = cli("evaluate", "--data", str(subset), "--model", trained["version"],
                         "--speaker-profiles", "online", "--folds", "2")
    assert code == 0, err
    assert "online: random order" in out and "with profiles" in out

    code, _, err = cli("evaluate", "--data", str(subset), "--speaker-profiles", "enroll:x")
    assert code == 2 and "invalid_request" in err
