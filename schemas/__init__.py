"""The message contract: pydantic models of every message serq sends or receives.

These models are the single source of truth. ``serq schemas generate`` writes the
JSON Schema files in ``schemas/json/`` and the AsyncAPI document
``schemas/asyncapi.yaml`` from them; a test fails when those drift.
"""

from serq.schemas.contract import ClassifyHeaders, type_name
from serq.schemas.engine import (
    ClassStatistics,
    DomainAdaptation,
    ConditionFigures,
    ConditionResult,
    ConditionsReport,
    ErrorInfo,
    ErrorReply,
    EvaluationReport,
    FoldStats,
    Hyperparameters,
    ModelMetadata,
    PitchSummary,
    PredictionResult,
    SpectralSummary,
    Spectrum,
    Timings,
)
from serq.schemas.profiles import (
    EnrollHeaders,
    EnrollResult,
    SpeakerPrior,
    SpeakerProfile,
)
from serq.schemas.timeline import (
    Moment,
    Timeline,
    TimelineChunkHeaders,
    TimelineChunkResult,
    TimelineParams,
    TimelineSegment,
    TimelineStreamState,
    TimelineSummary,
)
from serq.schemas.training import (
    DataSource,
    ModelActivated,
    Stage,
    TrainProgress,
    TrainRequest,
    TrainResult,
)

__all__ = [
    "ClassifyHeaders",
    "type_name",
    "ClassStatistics",
    "DomainAdaptation",
    "ConditionFigures",
    "ConditionResult",
    "ConditionsReport",
    "ErrorInfo",
    "ErrorReply",
    "EvaluationReport",
    "FoldStats",
    "Hyperparameters",
    "ModelMetadata",
    "PitchSummary",
    "PredictionResult",
    "Spectrum",
    "SpectralSummary",
    "Timings",
    "DataSource",
    "ModelActivated",
    "Stage",
    "TrainProgress",
    "TrainRequest",
    "TrainResult",
    "EnrollHeaders",
    "EnrollResult",
    "SpeakerPrior",
    "SpeakerProfile",
    "Moment",
    "Timeline",
    "TimelineChunkHeaders",
    "TimelineChunkResult",
    "TimelineParams",
    "TimelineSegment",
    "TimelineStreamState",
    "TimelineSummary",
]
