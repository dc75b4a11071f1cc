"""Forged speaker profiles: ``invalid_request`` with the reason, never ``internal``; the bounds still serve.

A profile is the caller's own data (it may be built anywhere, so it is validated, not
sealed): a forged one can only change the forger's own results, and must never crash
a worker. Real shipped models, a real clip; tests/reliability/test_forged_state.py sends
the same profiles to a real worker.
"""

from __future__ import annotations

import pytest
from helpers.forgeries import FORGED_PROFILES as FORGED
from helpers.forgeries import profile_json

from serq.errors import InvalidRequest, SerqError
from serq.schemas import SpeakerProfile
from serq.schemas.profiles import MAX_PROFILE_CLIPS, MAX_PROFILE_LEVEL_DB, MAX_PROFILE_STATISTIC, MIN_PROFILE_LEVEL_DB
from serq.settings import Settings
from serq.worker.engine import profiles
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION

from conftest import REPO

N = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from serq.models.registry import load_default, load_speaker_model

    speaker = load_speaker_model(tmp_path_factory.mktemp("models"))
    assert speaker is not None and speaker.meta.speaker_prior is not None
    return load_default(), speaker


@pytest.fixture(scope="module")
def clip() -> bytes:
    return next((REPO / "samples").glob("neutral-*.flac")).read_bytes()


def classify(models, clip, text: str):
    from serq.worker.engine.inference import classify as run

    plain, speaker = models
    try:
        return run(clip, plain, Settings(), profile=profiles.from_json(text), speaker_model=speaker)
    except SerqError as exc:
        return exc


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_profiles_get_invalid_request(models, clip, name):
    text, words = FORGED[name]
    outcome = classify(models, clip, text)
    assert isinstance(outcome, InvalidRequest), f"{name}: {outcome!r}"
    assert words in str(outcome)


def test_a_profile_at_the_bounds_is_served(models, clip):
    """The largest statistics, count and levels the schema accepts still give a result (the z-scores and the
    level relative to the speaker stay finite)."""
    edge = [MAX_PROFILE_STATISTIC] * N
    _, speaker = models
    assert speaker.meta.speaker_prior.relative_level  # the shipped speaker model reads the level term
    for text in (profile_json(count=MAX_PROFILE_CLIPS, mean=edge, m2=edge, level_db=MAX_PROFILE_LEVEL_DB),
                 profile_json(count=MAX_PROFILE_CLIPS, mean=[-v for v in edge], m2=[0.0] * N,
                              level_db=MIN_PROFILE_LEVEL_DB),
                 profile_json(count=4, mean=[0.0] * N, m2=[0.0] * N, level_db=-26.0),
                 profile_json(count=4, mean=[0.0] * N, m2=[0.0] * N, level_db=MAX_PROFILE_LEVEL_DB),
                 profile_json(count=4, mean=[0.0] * N, m2=[0.0] * N, level_db=MIN_PROFILE_LEVEL_DB)):
        result = classify(models, clip, text)
        assert not isinstance(result, Exception), result
        assert result.profile_status == "used" and 0 <= result.confidence <= 1


def test_model_input_refuses_non_finite_z_scores(models):
    """A profile that bypassed the schema (built in code) still never reaches a model as inf."""
    _, speaker = models
    forged = SpeakerProfile.model_construct(speaker_key="x", feature_version=FEATURE_VERSION, count=5,
                                            mean=[1.7e308] * N, m2=[1.0] * N, updates=False)
    with pytest.raises(InvalidRequest, match="non-finite z-scores"):
        profiles.model_input([-1.7e308] * N, forged, speaker.meta.speaker_prior)


def test_a_full_profile_takes_no_more_clips():
    full = profiles.new_profile("k", N, FEATURE_VERSION).model_copy(update={"count": MAX_PROFILE_CLIPS})
    with pytest.raises(InvalidRequest, match="the most a profile may"):
        profiles.add(full, [0.0] * N)


def test_a_profile_without_a_level_is_invalid_request_for_the_shipped_speaker_model(models, clip):
    """A profile from before profiles carried a level: a typed error that says what to do, never internal."""
    outcome = classify(models, clip, profile_json(count=4, mean=[0.0] * N, m2=[0.0] * N))
    assert isinstance(outcome, InvalidRequest) and "enrol the speaker again" in str(outcome)
