"""Speaker profiles: per-speaker feature statistics that travel with requests.

A profile is a compact summary of one speaker's feature vectors (count, running
mean and sum of squared deviations per feature, the feature version): no audio,
no identity beyond an opaque key the caller chose. Workers keep none: the caller
sends the profile with a request (AMQP header ``x-serq-profile``) and gets the
updated one back in the reply. See docs/profiles.md.

This module imports nothing from the rest of :mod:`serq.schemas`, so the engine
models can refer to it.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The AMQP header carrying a profile (JSON of :class:`SpeakerProfile`).
PROFILE_HEADER = "x-serq-profile"
#: The AMQP ``type`` of an enrolment request.
ENROLL = "enroll"
#: Where a result's path came from: the profile was used, or why not.
ProfileStatus = Literal["used", "too_few_clips", "feature_version_mismatch", "no_speaker_model"]
#: How a training speaker's profile is chosen: neutral/calm clips first, random clips, or one of each.
Enrolment = Literal["neutral_calm", "random", "mixed"]
#: Most clips a profile summarises: far beyond any speaker's, and exactly representable as a float.
MAX_PROFILE_CLIPS = 10**9
#: Largest magnitude of a profile's statistics. Real features are below 1e4 (means) and their sums of
#: squares far below this; the bound keeps every z-score a worker computes from them finite.
MAX_PROFILE_STATISTIC = 1e15
#: Bounds of a profile's speech level (dB re full scale). Real speech lies within about -80 to 0 dBFS;
#: the engine's own levels stay within -176 to +124 (its gain is clipped to +-150 dB), so these bound
#: any level it can compute and keep a relative level finite and small enough for a model.
MIN_PROFILE_LEVEL_DB, MAX_PROFILE_LEVEL_DB = -200.0, 200.0


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


class SpeakerProfile(BaseModel):
    """One speaker's feature statistics (Welford): what the speaker-normalised model needs, nothing more.

    ``mean[i]`` and ``m2[i]`` are the running mean and sum of squared deviations of
    feature ``i`` over ``count`` clips; the variance is ``m2 / count``.
    """

    model_config = ConfigDict(extra="forbid")

    speaker_key: str = Field(min_length=1, max_length=128, description="opaque key the caller chose; never a name")
    feature_version: str = Field(description="feature layout the statistics are over; another layout cannot use them")
    count: int = Field(0, ge=0, le=MAX_PROFILE_CLIPS, description="clips summarised")
    mean: list[float] = Field(description="running mean per feature")
    m2: list[float] = Field(description="running sum of squared deviations per feature (variance = m2 / count)")
    level_db: float | None = Field(None, ge=MIN_PROFILE_LEVEL_DB, le=MAX_PROFILE_LEVEL_DB, allow_inf_nan=False,
                                   description="the speaker's speech level: running mean over the clips of their "
                                               "active-speech levels, in dB re full scale (null: a profile made "
                                               "before profiles carried a level, or an empty one)")
    updates: bool = Field(False, description="the user allows later clips to update this profile")
    created: datetime = Field(default_factory=_now)
    updated: datetime = Field(default_factory=_now)

    @field_validator("mean", "m2")
    @classmethod
    def _finite(cls, values: list[float]) -> list[float]:
        if not all(math.isfinite(v) and abs(v) <= MAX_PROFILE_STATISTIC for v in values):
            raise ValueError(f"statistics must be finite numbers within +-{MAX_PROFILE_STATISTIC:g}")
        return values

    @model_validator(mode="after")
    def _shape(self) -> "SpeakerProfile":
        if len(self.mean) != len(self.m2):
            raise ValueError(f"mean has {len(self.mean)} features, m2 {len(self.m2)}")
        if any(v < 0 for v in self.m2):
            raise ValueError("m2 is a sum of squares: it cannot be negative")
        if self.count == 0 and (any(self.mean) or any(self.m2) or self.level_db is not None):
            raise ValueError("an empty profile has zero statistics and no level")
        return self


class SpeakerPrior(BaseModel):
    """What a speaker-normalised model expects, stored in its metadata (``ModelMetadata.speaker_prior``).

    The model's input is ``[x, z]``: the raw feature vector and its z-score by the
    speaker's profile, ``z = (x - mean) / max(std, std_floor * population_std)``,
    where the profile's variance is shrunk toward the population's with
    ``prior_clips`` pseudo-clips: ``var = (count * var_s + prior_clips * var_pop) / (count + prior_clips)``.
    """

    model_config = ConfigDict(extra="forbid")

    enrolment: Enrolment = Field(description="how each training speaker's profile was chosen")
    enrol_clips: int = Field(ge=1, description="clips per training speaker's profile")
    min_clips: int = Field(ge=1, description="a profile with fewer clips falls back to the plain model")
    prior_clips: float = Field(ge=0, description="shrinkage strength: pseudo-clips of the population variance")
    std_floor: float = Field(gt=0, description="floor on the std, as a fraction of the population's")
    relative_level: bool = Field(False, description="the model also reads the clip's speech level minus the "
                                                    "profile's (dB): input [x, z, level - profile.level_db]")
    mean: list[float] = Field(description="population: mean over training speakers' profile means")
    var: list[float] = Field(description="population: mean over training speakers' profile variances")


class EnrollHeaders(BaseModel):
    """AMQP headers of an ``enroll`` request (body: one audio file)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    speaker: str | None = Field(None, alias="x-serq-speaker", min_length=1, max_length=128,
                                description="opaque key of a new profile (ignored when a profile is sent)")
    profile: str | None = Field(None, alias=PROFILE_HEADER, description="JSON of the profile to add the clip to")
    updates: bool = Field(False, alias="x-serq-profile-updates",
                          description="for a new profile: the user allows later clips to update it")
    filename: str | None = Field(None, max_length=255)


class EnrollResult(BaseModel):
    """Reply to an ``enroll`` request: the profile with the clip added (unless it was silent)."""

    model_config = ConfigDict(extra="forbid")

    speaker_key: str
    profile: SpeakerProfile
    added: bool = Field(description="false when the clip held no speech (the profile is unchanged)")
    min_clips: int | None = Field(None, ge=1, description="clips a profile needs before the served speaker-normalised "
                                                          "model uses it (null: no such model is served)")
    file: str | None = None
    request_id: str | None = None
    worker: str | None = None
