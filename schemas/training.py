"""Training job messages: the request, its progress events and its result."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serq.errors import SerqError
from serq.labels import parse_emotions
from serq.schemas.engine import (
    ErrorInfo,
    EvaluationReport,
    Hyperparameters,
    ModelMetadata,
)

Stage = Literal["scanning", "extracting", "cross-validating", "fitting", "registering", "done", "failed"]


class DataSource(BaseModel):
    """One labelled source of a training job: a directory or CSV manifest, and its weight."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="a directory or CSV manifest on the trainer's side, inside SERQ_DATA_ROOTS")
    weight: float = Field(1.0, gt=0, le=1000, description="each clip of this source counts this many times in training")

    @classmethod
    def parse(cls, text: str) -> "DataSource":
        """``"DIR"`` -> weight 1; ``"DIR:W"`` -> weight ``W`` when what follows the last colon is a number
        (`serq train --data`).

        >>> DataSource.parse("mine.csv:5")
        DataSource(dataset='mine.csv', weight=5.0)
        >>> DataSource.parse("../shared/data/ravdess")
        DataSource(dataset='../shared/data/ravdess', weight=1.0)
        """
        path, sep, tail = text.rpartition(":")
        try:
            weight = float(tail) if sep and path else None
        except ValueError:  # not a number: the colon is part of the path
            weight = None
        return cls(dataset=text) if weight is None else cls(dataset=path, weight=weight)


class TrainRequest(BaseModel):
    """Ask a trainer to fit (``kind`` 'train') or adapt ('adapt'), evaluate, register and maybe activate a model."""

    model_config = ConfigDict(extra="forbid")

    job_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], pattern=r"^[A-Za-z0-9_-]{1,64}$")
    kind: Literal["train", "adapt"] = Field(
        "train", description="'train': fit on labelled data; 'adapt': re-read a model's features relative to "
        "the statistics of a folder of unlabelled clips (`serq adapt`)")
    dataset: str | None = Field(
        None, description="a directory or CSV manifest on the trainer's side, inside SERQ_DATA_ROOTS (one source, "
        "weight 1); give this or `sources`. For 'adapt': a directory of unlabelled clips")
    sources: list[DataSource] | None = Field(
        None, min_length=1, max_length=16, description="several labelled sources with weights ('train' only)")
    model: str | None = Field(None, description="'adapt': the version to adapt; null = the active model")
    adaptation: Literal["auto", "reweighted", "mixture", "robust", "plain"] = Field(
        "auto", description="'adapt': how the domain's statistics are estimated; 'auto' = 'reweighted' "
        "(see docs/training.md)")
    emotions: list[str] | None = Field(None, description="subset of the 8 emotions; null = all")
    speakers: list[str] | None = Field(None, description="only these speakers (e.g. '01' or 'ravdess:01'); null = all")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    protocol: Literal["speaker", "random"] = Field(
        "speaker", description="'speaker' = speaker-grouped k-fold (honest); 'random' = over clips (speaker-dependent)"
    )
    folds: int = Field(5, ge=2, le=20)
    activate: Literal["always", "if_better", "never"] = "if_better"
    speaker_normalisation: bool = Field(False, description="train a model that expects speaker profiles")

    @field_validator("emotions")
    @classmethod
    def _emotions(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else list(parse_emotions(value))

    @model_validator(mode="after")
    def _one_data_field(self) -> "TrainRequest":
        if (self.dataset is None) == (self.sources is None):
            raise ValueError("give either `dataset` or `sources`")
        if self.kind == "adapt" and self.sources is not None:
            raise ValueError("'adapt' reads one folder of unlabelled clips: give `dataset`")
        if self.kind == "train" and self.model is not None:
            raise ValueError("`model` names the version to adapt: only for kind 'adapt'")
        return self

    @property
    def data_sources(self) -> list[DataSource]:
        """The job's sources: ``sources``, or ``dataset`` as one source of weight 1."""
        return list(self.sources) if self.sources is not None else [DataSource(dataset=self.dataset)]


def request_error(exc: ValidationError) -> SerqError:
    """A training request's validation errors as one typed error.

    Codes: ``bad_hyperparameter`` (``hyperparameters.*``), ``unknown_emotion``, else
    ``invalid_request``; the message names at most three fields.
    """
    errors = exc.errors(include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": ""}
    code = "invalid_request"
    if first["loc"][:1] == ("hyperparameters",):
        code = "bad_hyperparameter"
    elif first["loc"][:1] == ("emotions",) and "unknown emotion" in first["msg"]:
        code = "unknown_emotion"
    parts = [f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg'].removeprefix('Value error, ')}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return SerqError(f"bad training request: {'; '.join(parts)}{more}", code=code)


class TrainProgress(BaseModel):
    """A progress event (to the request's reply_to and `serq.events`, key `train.<job_id>.<stage>`)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    stage: Stage
    done: int = 0
    total: int = 0
    eta_s: float | None = Field(None, description="estimated seconds left in this stage")
    message: str = ""


class TrainResult(BaseModel):
    """The final message of a training job: metrics, version, activation; or a typed error."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    ok: bool
    version: str | None = None
    activated: bool = False
    activation_reason: str = ""
    metrics: EvaluationReport | None = None
    baseline: EvaluationReport | None = Field(None, description="the active model's recipe on the same folds (if_better)")
    dataset: dict = Field(default_factory=dict)
    error: ErrorInfo | None = None
    duration_s: float = 0.0


class ModelActivated(BaseModel):
    """Fanout on `serq.models`: a model version became active; workers verify and hot-swap it.

    The artifact travels inside the event (base64 of the skops file, a few MB at
    most), so workers on other machines need no shared disk. Workers accept it only
    when ``signature`` verifies under a key in their ``SERQ_TRUSTED_KEYS``. ``metadata.normalisation``
    picks the slot: ``"speaker"`` replaces the profile path's model, never the plain one.
    """

    model_config = ConfigDict(extra="forbid")

    version: str
    sha256: str = Field(description="sha256 of the artifact bytes")
    feature_version: str
    metadata: ModelMetadata
    artifact_b64: str = Field(description="base64 of the skops artifact")
    reason: str = Field("", description="why: 'trained', 'activate', 'rollback'")
    announced_at: datetime | None = Field(None, description="when it was announced (signed: a replay is recognised)")
    signer: str | None = Field(None, max_length=64,
                               description="id of the key that signed it (sha256 of the public key, 16 hex)")
    signature: str | None = Field(None, max_length=200, description="Ed25519 signature (base64) of the announcement: "
                                  "metadata, kind, reason, announced_at (see docs/deploy.md)")

    @classmethod
    def announcing(cls, meta: ModelMetadata, artifact: bytes, reason: str = "") -> "ModelActivated":
        """The (unsigned) event announcing ``meta``'s version with its artifact bytes inside."""
        return cls(version=meta.version, sha256=meta.sha256, feature_version=meta.feature_version, metadata=meta,
                   artifact_b64=base64.b64encode(artifact).decode("ascii"), reason=reason)
