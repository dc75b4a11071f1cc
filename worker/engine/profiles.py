"""Speaker profiles: Welford statistics of a speaker's feature vectors, and normalising by them.

Pure functions over :class:`serq.schemas.SpeakerProfile` (the wire format) and
numpy arrays. A profile never holds audio or a single clip's features: only the
count, mean and sum of squared deviations per feature.

The speaker-normalised model's input is :func:`model_input`: ``[x, z]`` with ``z``
the z-score of ``x`` by the speaker's profile (std floored, variance shrunk
toward the population's when the profile has few clips; see
:class:`serq.schemas.SpeakerPrior`), plus, for a model that reads it, the clip's
speech level minus the speaker's (``level_db``: the running mean of their clips' levels). Training (:mod:`serq.worker.training.speaker`),
evaluation and inference all go through it, so the three cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from serq.errors import InvalidRequest
from serq.schemas import SpeakerPrior, SpeakerProfile
from serq.schemas.profiles import MAX_PROFILE_CLIPS

if TYPE_CHECKING:
    from serq.worker.engine.model import LoadedModel

#: Significant digits kept on the wire: float32 features carry about 7.
DIGITS = 7


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def new_profile(speaker_key: str, n_features: int, feature_version: str, *, updates: bool = False) -> SpeakerProfile:
    """An empty profile (count 0) for ``n_features`` features."""
    zeros = [0.0] * n_features
    return SpeakerProfile(speaker_key=speaker_key, feature_version=feature_version, mean=zeros, m2=list(zeros),
                          updates=updates)


def stats(profile: SpeakerProfile) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, m2)`` as float64 arrays, shape ``(n_features,)`` each."""
    return profile.count, np.asarray(profile.mean, np.float64), np.asarray(profile.m2, np.float64)


def variance(profile: SpeakerProfile) -> np.ndarray:
    """Population variance per feature (``m2 / count``; zeros for an empty profile)."""
    n, _, m2 = stats(profile)
    return m2 / n if n else np.zeros_like(m2)


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.{DIGITS}g}") for v in values]


def add(profile: SpeakerProfile, vectors: np.ndarray, levels: np.ndarray | float | None = None) -> SpeakerProfile:
    """A new profile with ``vectors`` (shape ``(n, n_features)`` or ``(n_features,)``) added, Welford's way.

    ``levels``: the clips' speech levels in dB (one per vector); the profile's ``level_db`` is
    their running mean. A profile without a level (made before profiles carried one) stays
    without: a mean over only the later clips would not be the speaker's level. Adding clips
    without levels leaves a profile without a level.

    The input profile is not modified. Raises :class:`InvalidRequest` on a width mismatch.
    """
    vectors = np.atleast_2d(np.asarray(vectors, np.float64))
    n, mean, m2 = stats(profile)
    if vectors.shape[1] != len(mean):
        raise InvalidRequest(f"profile {profile.speaker_key!r} has {len(mean)} features, the clip {vectors.shape[1]}")
    if n + len(vectors) > MAX_PROFILE_CLIPS:
        raise InvalidRequest(f"profile {profile.speaker_key!r} already summarises {n} clips, the most a profile may")
    level = None
    if levels is not None and (n == 0 or profile.level_db is not None):
        levels = np.atleast_1d(np.asarray(levels, np.float64))
        if levels.shape != (len(vectors),) or not np.all(np.isfinite(levels)):
            raise ValueError(f"{len(vectors)} clips need {len(vectors)} finite levels, got {levels}")
        level = (n * (profile.level_db or 0.0) + levels.sum()) / (n + len(vectors))
    for x in vectors:  # one clip at a time: exactly the online update a worker does
        n += 1
        delta = x - mean
        mean = mean + delta / n
        m2 = m2 + delta * (x - mean)
    return profile.model_copy(update={"count": n, "mean": _round(mean), "m2": _round(np.maximum(m2, 0.0)),
                                      "level_db": None if level is None else _round(np.array([level]))[0],
                                      "updated": _now()})


def build(speaker_key: str, vectors: np.ndarray, feature_version: str, *, updates: bool = False,
          levels: np.ndarray | None = None) -> SpeakerProfile:
    """A profile of ``vectors`` (shape ``(n, n_features)``) and their speech ``levels``: what enrolment produces."""
    vectors = np.atleast_2d(vectors)
    return add(new_profile(speaker_key, vectors.shape[1], feature_version, updates=updates), vectors, levels)


# ---------------------------------------------------------------- normalising


def shrunk_std(profile: SpeakerProfile, prior: SpeakerPrior) -> np.ndarray:
    """Per-feature std used for z-scores: variance shrunk toward the population's, then floored."""
    n = profile.count
    pop_var = np.asarray(prior.var, np.float64)
    var = (n * variance(profile) + prior.prior_clips * pop_var) / max(n + prior.prior_clips, 1e-12)
    floor = np.maximum(prior.std_floor * np.sqrt(pop_var), 1e-6)
    return np.maximum(np.sqrt(var), floor)


def normalise(vectors: np.ndarray, profile: SpeakerProfile, prior: SpeakerPrior) -> np.ndarray:
    """z-scores of ``vectors`` (shape ``(n, f)`` or ``(f,)``) by the speaker's profile; same shape, float64."""
    _, mean, _ = stats(profile)
    return (np.asarray(vectors, np.float64) - mean) / shrunk_std(profile, prior)


def model_input(vectors: np.ndarray, profile: SpeakerProfile, prior: SpeakerPrior,
                levels: np.ndarray | float | None = None) -> np.ndarray:
    """What a speaker-normalised model consumes: ``[x, z]``, shape ``(n, 2 * f)``; with
    ``prior.relative_level``, ``[x, z, level - profile.level_db]``, shape ``(n, 2 * f + 1)``
    (``levels``: the clips' speech levels in dB, :func:`serq.worker.engine.features.speech_level`).

    Raises :class:`InvalidRequest` when the profile's statistics make a z-score non-finite
    (the schema's bounds rule that out for any profile it accepts; this keeps a model from
    ever seeing one, whatever built the profile), and when the model reads the relative level
    but the profile has none (one made before profiles carried a level: enrol again).
    """
    x = np.atleast_2d(np.asarray(vectors, np.float64))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = np.hstack([x, normalise(x, profile, prior)])
    if not np.all(np.isfinite(out)):
        raise InvalidRequest(f"profile {profile.speaker_key!r}: its statistics give non-finite z-scores; "
                             "enrol the speaker again")
    if prior.relative_level:
        if profile.level_db is None:
            raise InvalidRequest(f"profile {profile.speaker_key!r} has no speech level (it was made before "
                                 "profiles carried one) and the speaker model reads the level relative to the "
                                 "speaker: enrol the speaker again into a new profile (x-serq-speaker, "
                                 "or `serq profiles enroll` after `serq profiles delete`)")
        if levels is None:
            raise ValueError("this speaker model reads each clip's speech level: pass levels")
        rel = np.atleast_1d(np.asarray(levels, np.float64)) - profile.level_db
        if rel.shape != (len(x),) or not np.all(np.isfinite(rel)):
            raise ValueError(f"{len(x)} clips need {len(x)} finite levels")
        out = np.hstack([out, rel[:, None]])
    return out


# ---------------------------------------------------------------- the wire


def to_json(profile: SpeakerProfile) -> str:
    """Compact JSON (what the ``x-serq-profile`` header carries; a few KB)."""
    return profile.model_dump_json()


def from_json(text: str | bytes) -> SpeakerProfile:
    """Parse a profile; :class:`InvalidRequest` with the first problem if it is not one."""
    try:
        return SpeakerProfile.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "profile"
        raise InvalidRequest(f"x-serq-profile is not a speaker profile: {where}: {err['msg']}") from None
    except (TypeError, json.JSONDecodeError) as exc:  # pragma: no cover - pydantic wraps JSON errors
        raise InvalidRequest(f"x-serq-profile is not JSON: {exc}") from None


# ---------------------------------------------------------------- choosing the path at run time


def check_profile(profile: SpeakerProfile, feature_version: str, n_features: int) -> str | None:
    """Why ``profile`` cannot be used with features ``feature_version`` (``None`` if it can)."""
    if profile.feature_version != feature_version or len(profile.mean) != n_features:
        return "feature_version_mismatch"
    return None


def route(vector: np.ndarray, profile: SpeakerProfile | None, speaker_model: "LoadedModel | None",
          feature_version: str, level: float | None = None) -> tuple[np.ndarray | None, str | None]:
    """The speaker model's input for ``vector``, or ``None``, and the profile status.

    Returns ``(input, status)``: ``input`` is ``None`` when the plain model must
    answer; ``status`` is ``None`` (no profile sent), ``"used"``, or why the
    profile was not used (``too_few_clips``, ``feature_version_mismatch``,
    ``no_speaker_model``). ``level``: the clip's speech level in dB, for a model that reads it
    relative to the speaker's.
    """
    status = usable(profile, speaker_model, feature_version, len(vector))
    if status != "used":
        return None, status
    return model_input(vector, profile, speaker_model.meta.speaker_prior, level), "used"


def usable(profile: SpeakerProfile | None, speaker_model: "LoadedModel | None", feature_version: str,
           width: int) -> str | None:
    """Whether ``profile`` can drive ``speaker_model`` on vectors of ``width`` features: the status
    :func:`route` reports (``None``: no profile; ``"used"``; or why not)."""
    if profile is None:
        return None
    problem = check_profile(profile, feature_version, width)
    if problem:
        return problem
    if speaker_model is None or speaker_model.meta.speaker_prior is None:
        return "no_speaker_model"
    if profile.count < speaker_model.meta.speaker_prior.min_clips:
        return "too_few_clips"
    return "used"


def digest(profile: SpeakerProfile) -> str:
    """sha256 of the profile's wire form: names the profile a timeline stream was started with."""
    return hashlib.sha256(to_json(profile).encode()).hexdigest()


def updated(profile: SpeakerProfile | None, vector: np.ndarray, *, silent: bool, status: str | None,
            level: float | None = None) -> SpeakerProfile | None:
    """The profile with this clip added, when the profile allows updates (``None`` otherwise).

    A silent clip or a profile of another feature layout is returned unchanged:
    neither can add anything true to it.
    """
    if profile is None or not profile.updates:
        return None
    if silent or status == "feature_version_mismatch":
        return profile
    return add(profile, vector, None if level is None else [level])
