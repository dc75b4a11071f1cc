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
    assert set(p.model_dump()) == {"speaker_key", "feature_version", "count", "mean", "m2", "level_db", "updates",
                                   "created", "updated"}


@pytest.mark.parametrize("bad", [
    "not json",
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1, 2], "m2": [0]}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [-1]}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "audio": "AAAA"}',
    '{"speaker_key": "", "feature_version": "f", "count": 0, "mean": [], "m2": []}',
    # The speaker's level: finite, within the bounds, and only in a profile that summarises clips.
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "level_db": NaN}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "level_db": Infinity}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "level_db": 1e308}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "level_db": -201}',
    '{"speaker_key": "a", "feature_version": "f", "count": 1, "mean": [1], "m2": [0], "level_db": "loud"}',
    '{"speaker_key": "a", "feature_version": "f", "count": 0, "mean": [0], "m2": [0], "level_db": -20}',
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
    inputs, labels, prior = speaker_training_set(X, y, groups, ProfileRecipe(enrolment="mixed", enrol_clips=4,
                                                                           relative_level=False))
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
    Xa, ya, ga, la = with_copies(X, y, groups, [X + 100, X + 200], np.zeros(4), [np.ones(4), np.full(4, 2.0)])
    assert Xa.shape == (12, 3) and list(ya) == list(y) * 3
    assert list(la) == [0.0] * 4 + [1.0] * 4 + [2.0] * 4  # each copy's levels follow its rows
    assert list(ga) == ["a", "a", "b", "b", "a@copy1", "a@copy1", "b@copy1", "b@copy1",
                        "a@copy2", "a@copy2", "b@copy2", "b@copy2"]
    assert with_copies(X, y, groups, None)[0] is X


# ---------------------------------------------------------------- the speaker's level (issue 16)


def _level_prior(**kw) -> SpeakerPrior:
    return _prior(**kw).model_copy(update={"relative_level": True})


def test_profile_level_is_the_running_mean_of_its_clips_levels_in_batch_or_one_by_one():
    rng = np.random.default_rng(8)
    x, levels = rng.normal(size=(9, F)), rng.uniform(-45.0, -15.0, 9)
    p = profiles.build("s", x, "fv", levels=levels)
    assert p.level_db == pytest.approx(levels.mean(), abs=1e-4)
    q = profiles.new_profile("s", F, "fv")
    for row, level in zip(x, levels):  # a worker's enrolment: one clip at a time
        q = profiles.add(q, row, [level])
    assert q.level_db == pytest.approx(p.level_db, abs=1e-4)
    assert profiles.from_json(profiles.to_json(p)).level_db == p.level_db
    with pytest.raises(ValueError):
        profiles.add(p, x[:2], [-20.0])  # one level per clip


def test_the_level_model_reads_the_clips_level_relative_to_the_speakers():
    rng = np.random.default_rng(9)
    x, levels = rng.normal(size=(6, F)), np.array([-30.0, -28.0, -32.0, -30.0, -29.0, -31.0])
    p = profiles.build("s", x, "fv", levels=levels)  # level_db -30
    prior = _level_prior()
    inp = profiles.model_input(x[:2], p, prior, [-20.0, -36.0])
    assert inp.shape == (2, 2 * F + 1)
    np.testing.assert_allclose(inp[:, -1], [10.0, -6.0], atol=1e-4)
    np.testing.assert_array_equal(inp[:, :2 * F], profiles.model_input(x[:2], p, _prior()))
    # The same speaker recorded 18 dB quieter, enrolment and clip alike: the same input (only relative level).
    quiet = profiles.build("s", x, "fv", levels=levels - 18.0)
    np.testing.assert_allclose(profiles.model_input(x[:2], quiet, prior, [-38.0, -54.0]), inp, atol=1e-4)
    # Without a level the model's input cannot be made; the plain [x, z] model does not need one.
    with pytest.raises(ValueError):
        profiles.model_input(x[:2], p, prior)
    inp, status = profiles.route(x[0], p, _Model(prior), "fv", -24.0)
    assert status == "used" and inp[0, -1] == pytest.approx(6.0, abs=1e-4)


def test_a_profile_without_a_level_is_a_typed_error_for_the_level_model_and_stays_without():
    """A profile from before profiles carried a level: JSON without ``level_db``. The level model
    refuses it with a typed error that says what to do; the older [x, z] model still uses it."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(5, F))
    old = profiles.build("caller-1", x, "fv")
    text = profiles.to_json(old).replace(',"level_db":null', "")
    assert "level_db" not in text
    old = profiles.from_json(text)
    assert old.level_db is None
    with pytest.raises(InvalidRequest, match="no speech level.*enrol the speaker again"):
        profiles.model_input(x[:1], old, _level_prior(), [-20.0])
    with pytest.raises(InvalidRequest, match="no speech level"):
        profiles.route(x[0], old, _Model(_level_prior()), "fv", -20.0)
    assert profiles.route(x[0], old, _Model(_prior()), "fv", -20.0)[1] == "used"
    # Adding clips to it does not invent a level from the later clips only.
    assert profiles.add(old, x[:2], [-20.0, -21.0]).level_db is None
    allowed = old.model_copy(update={"updates": True})
    assert profiles.updated(allowed, x[0], silent=False, status="used", level=-20.0).level_db is None


def test_updates_carry_the_level_along():
    p = profiles.build("s", np.ones((3, F)), "fv", updates=True, levels=[-30.0, -30.0, -30.0])
    q = profiles.updated(p, np.zeros(F), silent=False, status="used", level=-10.0)
    assert q.count == 4 and q.level_db == pytest.approx(-25.0)
    assert profiles.updated(p, np.zeros(F), silent=True, status="used", level=None).level_db == p.level_db


def test_level_training_set_and_online_mode_read_each_clip_relative_to_its_speaker():
    rng = np.random.default_rng(11)
    groups = np.repeat(["a", "b"], 12)
    X = rng.normal(size=(24, F))
    y = np.tile(np.array(["calm", "angry", "sad", "neutral"]), 6)
    # Speaker b is recorded 20 dB hotter; within each speaker angry is 6 dB above the rest.
    levels = np.where(groups == "b", -10.0, -30.0) + np.where(y == "angry", 6.0, 0.0)
    recipe = ProfileRecipe(enrolment="neutral_calm", enrol_clips=4)
    assert recipe.relative_level  # the default recipe reads the level
    with pytest.raises(ValueError):
        speaker_training_set(X, y, groups, recipe)
    inputs, labels, prior = speaker_training_set(X, y, groups, recipe, levels)
    assert prior.relative_level and inputs.shape == (24, 2 * F + 1)
    np.testing.assert_allclose(inputs[labels == "angry", -1], 6.0, atol=1e-4)  # calm enrolment: 0 dB for calm
    np.testing.assert_allclose(inputs[labels == "calm", -1], 0.0, atol=1e-4)
    # A silent clip (NaN level) reads as its speaker's level, never NaN.
    holes = levels.copy()
    holes[3] = np.nan
    assert np.isfinite(speaker_training_set(X, y, groups, recipe, holes)[0]).all()
    # online: each clip relative to the mean level of the clips before it.
    out = online_inputs(X[:12], prior, np.random.default_rng(5), levels[:12])
    order = np.random.default_rng(5).permutation(12)
    for pos, i in enumerate(order[prior.min_clips:], start=prior.min_clips):
        assert out[i][-1] == pytest.approx(levels[i] - levels[order[:pos]].mean(), abs=1e-4)
