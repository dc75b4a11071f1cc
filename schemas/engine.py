"""Models shared by the engine and every message: results, errors, metrics, model metadata."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serq.labels import EMOTIONS
from serq.schemas.profiles import ProfileStatus, SpeakerPrior, SpeakerProfile


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorInfo(_Model):
    code: str = Field(description="stable machine-readable code, see the contract's error table")
    message: str = Field(description="what went wrong, for people")


class ErrorReply(_Model):
    """Sent instead of a result when a request fails."""

    error: ErrorInfo
    file: str | None = Field(None, description="the file, for `serq predict`/`serq classify` output")
    request_id: str | None = None
    worker: str | None = None


class PitchSummary(_Model):
    median_hz: float | None = Field(description="median f0 over voiced frames; null if none is voiced")
    mean_hz: float | None
    min_hz: float | None
    max_hz: float | None
    std_hz: float | None
    voiced_fraction: float = Field(ge=0, le=1, description="voiced share of active frames")


class Spectrum(_Model):
    freqs_hz: list[float] = Field(description="band centre frequencies (mel-spaced), Hz")
    db: list[float] = Field(description="mean power per band over active frames, in dB (power averaged "
                                       "before the log, as for dominant_hz)")


class SpectralSummary(_Model):
    """What the clip sounds like: level, pitch, spectral shape and a small spectrum."""

    duration_s: float = Field(description="clip length, seconds")
    sample_rate: int = Field(description="the file's own sample rate, Hz")
    rms_dbfs: float
    peak_dbfs: float
    active_fraction: float = Field(ge=0, le=1, description="share of 10 ms frames that carry speech energy")
    pitch: PitchSummary
    centroid_hz: float
    bandwidth_hz: float
    rolloff_hz: float = Field(description="frequency below which 85 % of the magnitude lies")
    flatness: float = Field(description="spectral flatness, 0 (tonal) .. 1 (noise)")
    zcr: float = Field(description="zero crossings per sample")
    dominant_hz: float = Field(description="peak of the mean power spectrum of active frames")
    spectrum: Spectrum


class Timings(_Model):
    decode: float = Field(description="ms")
    features: float = Field(description="ms")
    inference: float = Field(description="ms")


class PredictionResult(_Model):
    """One classified clip: what `serq predict --json` prints and a worker replies."""

    file: str | None = Field(None, description="the file, in CLI output")
    label: str | None = Field(description="the most probable emotion; null when the clip is silent")
    confidence: float = Field(ge=0, le=1, description="probability of `label` (0 when silent)")
    probabilities: dict[str, float] = Field(description="probability of every class the model knows")
    silent: bool = Field(False, description="true when the clip holds no speech energy; no emotion is claimed")
    spectral: SpectralSummary
    model_version: str
    timings_ms: Timings
    request_id: str | None = Field(None, description="the request's correlation id (broker replies)")
    worker: str | None = Field(None, description="the worker that answered (broker replies)")
    normalisation: Literal["none", "speaker"] = Field(
        "none", description="'speaker': the speaker-normalised model used the request's profile; 'none': the plain model")
    profile_status: ProfileStatus | None = Field(None, description="what became of the request's profile (null: none sent)")
    profile_clips: int | None = Field(None, description="clips in the profile sent (before this one was added)")
    profile: SpeakerProfile | None = Field(None, description="the profile with this clip added, when it allows updates")


class Hyperparameters(_Model):
    """The MLP's hyperparameters, validated; defaults are the ones chosen by speaker-grouped CV."""

    hidden_layers: list[int] = Field(default_factory=lambda: [256], min_length=1, max_length=4)
    alpha: float = Field(1.0, gt=0, le=1000, description="L2 penalty")
    learning_rate_init: float = Field(1e-3, gt=0, le=1)
    max_iter: int = Field(400, ge=10, le=5000)
    early_stopping: bool = False
    random_state: int = Field(0, ge=0)
    augment_speeds: list[float] = Field(
        default_factory=lambda: [0.9, 1.1], max_length=6,
        description="speed-perturbed copies of each training clip (1.1 = 10 % faster, higher pitch); "
        "training folds only, never scored",
    )
    channel_copies: int = Field(
        3, ge=0, le=8,
        description="channel-augmented copies of each training clip (noise, phone line, codec, room, gain, "
        "pitch; seeded, see docs/training.md); training folds only, never scored",
    )

    @field_validator("augment_speeds")
    @classmethod
    def _speeds(cls, speeds: list[float]) -> list[float]:
        if any(not 0.5 <= s <= 2.0 or s == 1.0 for s in speeds):
            raise ValueError("each speed must be in 0.5..2.0 and not 1.0")
        return speeds

    @field_validator("hidden_layers")
    @classmethod
    def _sizes(cls, sizes: list[int]) -> list[int]:
        if any(not 2 <= n <= 4096 for n in sizes):
            raise ValueError("each hidden layer needs 2..4096 units")
        return sizes


class FoldStats(_Model):
    mean: float
    std: float


class EvaluationReport(_Model):
    """Metrics, as `serq evaluate` prints them and training results carry them."""

    n: int = Field(description="clips scored")
    protocol: str = Field(description="how the figure was obtained, e.g. 'speaker-grouped 5-fold'")
    speaker_independent: bool = Field(description="false only for an explicit random split over clips")
    accuracy: float
    balanced_accuracy: float = Field(description="unweighted average recall")
    macro_f1: float
    labels: list[str]
    per_class: dict[str, dict[str, float]] = Field(description="label -> recall, precision, f1, support")
    confusion_matrix: list[list[int]] = Field(description="rows true, columns predicted, in `labels` order")
    folds: dict[str, FoldStats] | None = Field(None, description="mean and std over folds, for cross-validation")
    skipped: dict[str, int] = Field(default_factory=dict, description="files left out, by reason")
    speaker_profiles: str | None = Field(None, description="speaker normalisation used in evaluation, if any")
    sources: dict[str, "EvaluationReport"] | None = Field(
        None, description="training on several sources: the same out-of-fold predictions, per source")


class ClassStatistics(_Model):
    """Per-class feature statistics of a model's training data, in its scaler's standardised space.

    What unlabelled adaptation (`serq adapt`) needs to tell a new domain's channel from its
    emotion mix: ``means[k]`` and ``variances[k]`` belong to ``labels[k]``; ``priors`` is the
    training mix. Only class summaries: no clip, no speaker.
    """

    labels: list[str]
    priors: list[float]
    means: list[list[float]] = Field(description="per class, per feature: mean of the standardised features")
    variances: list[list[float]] = Field(description="per class, per feature: variance of the standardised features")


class DomainAdaptation(_Model):
    """What an adapted model was adapted to (`serq adapt`): counts only, never file names or paths."""

    source_version: str = Field(description="the model whose weights were kept")
    method: Literal["reweighted", "mixture", "robust", "plain"] = Field(
        description="'reweighted': mean and spread of the clips weighted to the source's class mix (the domain's "
        "mix estimated from the source model's posteriors; robust to a skewed emotion mix); 'mixture': the domain "
        "as a mix of the source's classes (EM on its class statistics); 'robust': median and interquartile range; "
        "'plain': mean and standard deviation")
    clips: int = Field(ge=1, description="unlabelled clips the statistics came from")
    duration_s: float = Field(ge=0, description="their total duration, seconds")
    skipped: dict[str, int] = Field(default_factory=dict, description="files left out, by reason")
    estimated_mix: dict[str, float] | None = Field(
        None, description="'reweighted', 'mixture': the emotion mix the domain's clips were estimated to have")


class ConditionFigures(_Model):
    """One condition's figures over one choice of classes."""

    accuracy: float
    balanced_accuracy: float = Field(description="unweighted average recall over the classes present")
    agreement: float = Field(description="fraction of clips given the label they got under `clean`")


class ConditionResult(_Model):
    condition: str = Field(description="e.g. 'noise:10' (see docs/training.md for the grammar)")
    n: int = Field(description="clips scored")
    all_classes: ConditionFigures = Field(description="the model's choice among all its classes")
    present_classes: ConditionFigures | None = Field(
        None, description="the choice restricted to the classes present in the data (when some are absent)")


class ConditionsReport(_Model):
    """`serq evaluate --conditions`: the same test clips under each recording condition."""

    model_version: str | None = Field(None, description="the model scored, or whose recipe was refitted by fold")
    protocol: str = Field(description="e.g. 'speaker-grouped 5-fold, refitted' or 'held-out data: 6 speakers'")
    speaker_independent: bool
    seed: int = Field(description="seed of the conditions' random parts (noise, room)")
    n: int
    speakers: int
    labels: list[str] = Field(description="the model's classes")
    present: list[str] = Field(description="the classes present in the data")
    conditions: list[ConditionResult]
    skipped: dict[str, int] = Field(default_factory=dict, description="files left out, by reason")


class ModelMetadata(_Model):
    version: str
    created: datetime
    feature_version: str
    feature_names_sha256: str = Field(description="sha256 of the feature layout's names, joined by newlines")
    labels: list[str]
    artifact: str = Field("model.skops", description="file name of the artifact beside this metadata")
    artifact_format: Literal["skops"] = "skops"
    sha256: str = Field(description="sha256 of the artifact file")
    hyperparameters: Hyperparameters
    normalisation: Literal["none", "speaker"] = Field("none", description="feature normalisation the model expects")
    speaker_prior: SpeakerPrior | None = Field(None, description="for normalisation 'speaker': how profiles are applied")
    training_data: dict = Field(default_factory=dict, description="summary of the data it was fitted on")
    metrics: EvaluationReport | None = Field(None, description="cross-validated, speaker-independent")
    class_statistics: ClassStatistics | None = Field(
        None, description="per-class statistics of the training data, for unlabelled adaptation")
    adaptation: DomainAdaptation | None = Field(None, description="set on a model made by `serq adapt`")
    conditions: ConditionsReport | None = Field(
        None, description="cross-validated figures under recording conditions (`serq evaluate --conditions`)")
    notes: str = ""

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: list[str]) -> list[str]:
        unknown = set(labels) - set(EMOTIONS)
        if unknown:
            raise ValueError(f"unknown labels {sorted(unknown)}")
        return labels
