"""Speaker profiles: Welford statistics, the wire format, normalisation, routing, and the evaluation rule
that a clip never helps normalise itself. Unit tests: synthetic vectors, no corpus, no broker."""

from __future__ import annotations

import numpy as np
import pytest

from serq.errors import InvalidRequest
from serq.schemas import PredictionResult, SpeakerPrior, SpeakerProfile
from serq.worker.engine import profiles
from serq.worker.training.evaluation import enrol_plan, online_inputs, parse_mode
from serq.worker.training.speaker import ProfileRecipe, enrolment_indices, speaker_training_set, with_copies

F = 6


def _prior(min_clips: int = 3, prior_clips: float = 2.0, std_floor: float = 0.1, f: int = F) -> SpeakerPrior:
    return SpeakerPrior(enrolment="neutral_calm", enrol_clips=4, min_clips=min_clips, prior_clips=prior_clips,
                        std_floor=std_floor, mean=[0.0] * f, var=[1.0] * f)


def test_welford_equals_numpy_mean_and_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(50.0, 7.0, size=(40, F)) * np.arange(1, F + 1)
    p = profiles.build("spk", x, "fv")
    assert p.count == 40
    np.testing.assert_allclose(p.mean, x.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(profiles.variance(p), x.var(axis=0), rtol=1e-5)
    # Adding in two batches (a profile updated later) gives the same statistics.
    q = profiles.add(profiles.build("spk", x[:7], "fv"), x[7:])
    np.testing.assert_allclose(q.mean, p.mean, rtol=1e-6)
    np.testing.assert_allclose(q.m2, p.m2, rtol=1e-5)


def test_add_does_not_modify_its_input_and_checks_width():
    p = profiles.build("spk", np.ones((2, F)), "fv")
    profiles.add(p, np.zeros(F))
    assert p.count == 2 and p.mean == [1.0] * F
    with pytest.raises(InvalidRequest):
        profiles.add(p, np.zeros(F + 1))


def test_json_round_trip_is_compact_and_exact_enough():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 359)).astype(np.float32) * 100
    p = profiles.build("opaque-key-1", x, "serq-fe-x", updates=True)
    text = profiles.to_json(p)
    assert len(text) < 16_000  # fits an AMQP header comfortably
    back = profiles.from_json(text)
    assert back == p
    np.testing.assert_allclose(back.mean, x.mean(axis=0), rtol=1e-5, atol=1e-4)
    assert set(p.model_dump()) == {"speaker_key", "feature_version", "count", "mean", "m2", "updates", "created",
                                   "updated"}


@pytest.mark.parametrize("bad", [
    "not json",
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1, 2], "m2": [0]}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [-1]}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "audio": "AAAA"}',
    '{"speaker_key": "", "feature_version": "f", "count": 0, "mean": [], "m2": []}',
])
def test_a_bad_profile_is_a_typed_error(bad):
    with pytest.raises(InvalidRequest):
        profiles.from_json(bad)


def test_normalise_z_scores_with_floor_and_shrinkage():
    x = np.array([[1.0, 10.0, 5.0, 0, 0, 0], [3.0, 10.0, 5.0, 0, 0, 0]])
    p = profiles.build("s", x, "fv")  # mean [2, 10, 5, 0...], var [1, 0, 0, ...]
    no_shrink = _prior(prior_clips=0.0, std_floor=0.5)
    z = profiles.normalise(np.array([4.0, 11.0, 5.0, 0, 0, 0]), p, no_shrink)
    assert z[0] == pytest.approx(2.0)  # (4 - 2) / 1
    assert z[1] == pytest.approx(2.0)  # std 0 floored at 0.5 * population std 1
    assert z[2] == 0.0
    # Shrinkage: 2 clips + 2 pseudo-clips of population variance 1 -> var (2*0 + 2*1) / 4 = 0.5.
    z = profiles.normalise(np.array([4.0, 11.0, 5.0, 0, 0, 0]), p, _prior(prior_clips=2.0, std_floor=0.01))
    assert z[1] == pytest.approx(1 / np.sqrt(0.5))
    inp = profiles.model_input(x, p, no_shrink)
    assert inp.shape == (2, 2 * F)
    np.testing.assert_array_equal(inp[:, :F], x)


class _Model:
    def __init__(self, prior):
        from serq.schemas import Hyperparameters, ModelMetadata

        self.meta = ModelMetadata(version="spk", created="2026-01-01T00:00:00Z", feature_version="fv",
                                  feature_names_sha256="x", labels=["angry", "sad"], sha256="x",
                                  hyperparameters=Hyperparameters(), normalisation="speaker", speaker_prior=prior)


def test_route_falls_back_and_says_why():
    prior = _prior(min_clips=3)
    speaker_model = _Model(prior)
    vec = np.zeros(F)
    assert profiles.route(vec, None, speaker_model, "fv") == (None, None)
    small = profiles.build("s", np.ones((2, F)), "fv")
    assert profiles.route(vec, small, speaker_model, "fv") == (None, "too_few_clips")
    enough = profiles.add(small, np.zeros(F))
    assert profiles.route(vec, enough, None, "fv") == (None, "no_speaker_model")
    assert profiles.route(vec, enough, speaker_model, "other-fv") == (None, "feature_version_mismatch")
    inp, status = profiles.route(vec, enough, speaker_model, "fv")
    assert status == "used" and inp.shape == (1, 2 * F)


def test_updates_only_when_allowed_and_never_from_silence():
    p = profiles.build("s", np.ones((3, F)), "fv")
    assert profiles.updated(p, np.zeros(F), silent=False, status="used") is None
    allowed = p.model_copy(update={"updates": True})
    assert profiles.updated(allowed, np.zeros(F), silent=False, status="used").count == 4
    assert profiles.updated(allowed, np.zeros(F), silent=True, status="used").count == 3
    assert profiles.updated(allowed, np.zeros(F + 1), silent=False, status="feature_version_mismatch").count == 3


def test_result_schema_carries_the_path():
    fields = PredictionResult.model_fields
    assert {"normalisation", "profile_status", "profile_clips", "profile"} <= set(fields)
    assert fields["normalisation"].default == "none"


# ---------------------------------------------------------------- evaluation: no clip normalises itself


def test_enrolment_prefers_neutral_and_calm():
    labels = np.array(["angry", "calm", "sad", "neutral", "happy", "calm"])
    chosen = enrolment_indices(labels, 3, np.random.default_rng(0), "neutral_calm")
    assert set(chosen) == {1, 3, 5}
    more = enrolment_indices(labels, 4, np.random.default_rng(0), "neutral_calm")
    assert {1, 3, 5} < set(more)
    assert len(set(enrolment_indices(labels, 6, np.random.default_rng(0), "random"))) == 6


def test_enroll_mode_never_scores_a_profile_clip_and_scored_clips_never_shape_a_profile():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, F))
    y = np.array(["calm", "angry"] * 6)
    scored, profile = enrol_plan(X, y, 4, np.random.default_rng(7))
    assert len(scored) == 8
    enrolled = sorted(set(range(12)) - set(scored))
    assert set(y[enrolled]) == {"calm"}
    np.testing.assert_allclose(profile.mean, X[enrolled].mean(axis=0), rtol=1e-6)
    # Perturb every scored clip wildly: the profile (and so every normalised vector) must not move.
    X2 = X.copy()
    X2[scored] += 1e6
    _, profile2 = enrol_plan(X2, y, 4, np.random.default_rng(7))
    assert profile2.mean == profile.mean and profile2.m2 == profile.m2


def test_online_mode_normalises_each_clip_only_by_the_clips_before_it():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(10, F))
    prior = _prior(min_clips=2, prior_clips=0.0, std_floor=1e-3)
    base = online_inputs(X, prior, np.random.default_rng(5))
    order = np.random.default_rng(5).permutation(len(X))  # the order online_inputs draws
    assert [base[i] is None for i in order] == [True, True] + [False] * 8  # plain model until 2 clips came before
    for pos, i in enumerate(order):
        if pos < 2:
            continue
        before = profiles.build("x", X[order[:pos]], "fv")
        np.testing.assert_allclose(base[i], profiles.model_input(X[i], before, prior)[0], rtol=1e-5, atol=1e-6)
    # Would fail if a clip were in its own profile: moving clip `j` changes its own z by exactly delta / std of the
    # clips before it, and leaves every earlier clip untouched.
    pos_j = 5
    j = order[pos_j]
    X2 = X.copy()
    X2[j] += 3.0
    moved = online_inputs(X2, prior, np.random.default_rng(5))
    for pos, i in enumerate(order[:pos_j]):
        if moved[i] is not None:
            np.testing.assert_array_equal(moved[i], base[i])
    before = profiles.build("x", X[order[:pos_j]], "fv")
    np.testing.assert_allclose(moved[j][F:] - base[j][F:], 3.0 / profiles.shrunk_std(before, prior), rtol=1e-5)


def test_training_set_normalises_each_speaker_by_its_own_profile():
    rng = np.random.default_rng(6)
    groups = np.repeat(["a", "b", "c"], 12)
    offsets = {"a": 0.0, "b": 100.0, "c": -50.0}
    X = rng.normal(size=(36, F)) + np.array([offsets[g] for g in groups])[:, None]
    y = np.tile(np.array(["calm", "angry", "sad", "neutral"]), 9)
    inputs, labels, prior = speaker_training_set(X, y, groups, ProfileRecipe(enrolment="mixed", enrol_clips=4))
    assert inputs.shape == (72, 2 * F) and len(labels) == 72  # one neutral/calm and one random profile each
    z = inputs[:, F:]
    assert np.abs(z).mean() < 5  # the speakers' offsets (50..100 std) are gone
    assert len(prior.mean) == F and prior.enrolment == "mixed"


def test_parse_mode():
    assert parse_mode("enroll:8") == ("enroll", 8)
    assert parse_mode("online") == ("online", 0)
    for bad in ("enroll", "enroll:0", "enroll:x", "online:3", "all"):
        with pytest.raises(ValueError):
            parse_mode(bad)


def test_profile_is_statistics_only():
    p = profiles.build("k", np.arange(12.0).reshape(2, F), "fv")
    assert isinstance(p, SpeakerProfile)
    # Two different pairs of clips with the same mean and variance give the same profile: it cannot be inverted.
    q = profiles.build("k", np.array([[1.0] * F, [3.0] * F]), "fv")
    r = profiles.build("k", np.array([[3.0] * F, [1.0] * F]), "fv")
    assert q.mean == r.mean and q.m2 == r.m2


def test_speed_perturbed_copies_are_speakers_of_their_own():
    X = np.arange(12.0).reshape(4, 3)
    y = np.array(["calm", "sad", "calm", "sad"])
    groups = np.array(["a", "a", "b", "b"])
    Xa, ya, ga = with_copies(X, y, groups, [X + 100, X + 200])
    assert Xa.shape == (12, 3) and list(ya) == list(y) * 3
    assert list(ga) == ["a", "a", "b", "b", "a@copy1", "a@copy1", "b@copy1", "b@copy1",
                        "a@copy2", "a@copy2", "b@copy2", "b@copy2"]
    assert with_copies(X, y, groups, None)[0] is X
