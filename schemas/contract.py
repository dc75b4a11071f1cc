"""The AMQP contract: which message goes over which queue or exchange, in what shape.

The payload models live beside this module (:mod:`.engine`, :mod:`.training`);
this module adds the request headers of a classify call, the AMQP ``type`` names
and the catalogue of channels, messages and operations that
:mod:`serq.schemas.generate` turns into JSON Schema files and the AsyncAPI
document. Adding a message to the contract = a model plus one :class:`Message`
and one line in :data:`CHANNELS` (and :data:`OPERATIONS`); then
``serq schemas generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from serq.schemas.engine import ErrorReply, PredictionResult
from serq.schemas.profiles import ENROLL, PROFILE_HEADER, EnrollHeaders, EnrollResult
from serq.schemas.timeline import (
    PCM_CONTENT_TYPE,
    TIMELINE_CHUNK,
    TimelineChunkHeaders,
    TimelineChunkResult,
)
from serq.schemas.training import (
    ModelActivated,
    TrainProgress,
    TrainRequest,
    TrainResult,
)

#: Content types a classify request may carry (absent is accepted too).
AUDIO_CONTENT_TYPES = ("audio/*", "application/octet-stream")
#: The AMQP ``type`` of a classify request; absent means the same.
CLASSIFY = "classify"
#: Header by which a caller keeps a request's reply off ``<p>.results`` (no copy to followers at all).
PRIVATE_HEADER = "x-serq-private"
#: Request types whose replies followers may see on ``<p>.results`` (timeline and enrolment replies never).
PUBLIC_TYPES = frozenset({CLASSIFY})
#: Reply fields never published to followers: the caller's file name and speaker profile.
PRIVATE_FIELDS = ("file", "profile")


class ClassifyHeaders(BaseModel):
    """AMQP headers of a classify request (all optional; unknown headers are ignored)."""

    model_config = ConfigDict(extra="allow")

    filename: str | None = Field(
        None, max_length=255, description="the clip's file name, echoed in the reply's `file`; informational only"
    )
    profile: str | None = Field(
        None, alias=PROFILE_HEADER, max_length=65_536,
        description="the speaker's profile (JSON of SpeakerProfile, docs/profiles.md): with enough clips the "
        "speaker-normalised model answers; the reply says which path was used",
    )
    private: bool = Field(
        False, alias=PRIVATE_HEADER,
        description="true: the reply goes to `reply_to` only, no copy is published to `<p>.results`",
    )


def is_private(headers: dict | None) -> bool:
    """Whether a request's headers ask for no copy on ``<p>.results``; a malformed value counts as private
    (failing closed: the caller meant something)."""
    if not headers or PRIVATE_HEADER not in headers:
        return False
    try:
        return TypeAdapter(bool).validate_python(headers[PRIVATE_HEADER])
    except ValidationError:
        return True


def is_public(request_type: str | None, headers: dict | None) -> bool:
    """Whether followers get a copy of the reply to a request of ``request_type`` with ``headers``."""
    return (request_type or CLASSIFY) in PUBLIC_TYPES and not is_private(headers)


def type_name(model: type[BaseModel] | BaseModel) -> str:
    """The AMQP ``type`` property naming a JSON body's schema: ``PredictionResult -> "serq.PredictionResult"``."""
    cls = model if isinstance(model, type) else type(model)
    return f"serq.{cls.__name__}"


#: Replies a caller can receive on its ``reply_to``, by AMQP ``type``.
REPLY_MODELS: dict[str, type[BaseModel]] = {
    type_name(m): m for m in (PredictionResult, ErrorReply, TrainProgress, TrainResult, TimelineChunkResult,
                              EnrollResult)
}


def parse_reply(body: bytes, amqp_type: str | None) -> BaseModel:
    """Parse a reply by its ``type`` property (or, without one, by shape: ``error`` key = :class:`ErrorReply`).

    Raises :class:`ValueError` when the body matches neither.
    """
    model = REPLY_MODELS.get(amqp_type or "")
    if model is not None:
        return model.model_validate_json(body)
    try:
        return ErrorReply.model_validate_json(body)
    except ValidationError:
        return PredictionResult.model_validate_json(body)


# --- the catalogue ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One kind of AMQP message.

    ``payload`` is the pydantic model of a JSON body, or ``None`` for raw audio bytes.
    """

    name: str
    summary: str
    payload: type[BaseModel] | None
    content_type: str = "application/json"
    headers: type[BaseModel] | None = None
    description: str = ""

    @property
    def amqp_type(self) -> str | None:
        return type_name(self.payload) if self.payload is not None else None


@dataclass(frozen=True)
class Channel:
    """A queue, an exchange (with its routing keys) or a reply address.

    ``suffix`` is appended to the prefix (``serq.<suffix>``); ``None`` for the
    caller's own ``reply_to`` address.
    """

    id: str
    suffix: str | None
    kind: Literal["queue", "topic", "fanout", "reply"]
    description: str
    messages: tuple[Message, ...]
    routing_keys: str = ""
    quorum: bool = False


@dataclass(frozen=True)
class Operation:
    """What a serq service does on a channel (``receive`` = consumes it, ``send`` = publishes to it).

    ``request_type`` is the AMQP ``type`` of the requests a worker takes on this
    operation: each has one handler in :mod:`serq.worker.handlers`. ``request`` is their
    :class:`Message` (content type and headers), which the consumer loop checks every
    request against before a handler sees it (:class:`serq.transport.middleware.RequestCheck`).
    """

    id: str
    action: Literal["send", "receive"]
    channel: str
    summary: str
    reply_channel: str | None = None
    request_type: str | None = None
    request: Message | None = None


CLASSIFY_REQUEST = Message(
    "ClassifyRequest",
    "a clip to classify: the audio file's bytes, unchanged",
    None,
    content_type="audio/*",
    headers=ClassifyHeaders,
    description="Body: the bytes of a WAV, FLAC, OGG/Vorbis or MP3 file (no JSON, no base64). "
    "Properties: `reply_to` (required), `correlation_id` (copied into the reply), `content_type` "
    "`audio/*` or `application/octet-stream` (or absent), `type` absent or `classify`, optional `message_id`.",
)
PREDICTION = Message("PredictionResult", "a classified clip (same fields as `serq predict --json`)", PredictionResult)
ERROR = Message("ErrorReply", "a failed request, with a stable error code", ErrorReply)
TRAIN_REQUEST = Message("TrainRequest", "a training job", TrainRequest)
TRAIN_PROGRESS = Message("TrainProgress", "progress of a training job", TrainProgress)
TRAIN_RESULT = Message("TrainResult", "the final message of a training job", TrainResult)
MODEL_ACTIVATED = Message("ModelActivated", "a model version became active; workers verify and hot-swap it",
                          ModelActivated)
TIMELINE_CHUNK_REQUEST = Message(
    "TimelineChunkRequest",
    "one chunk of a streamed recording (emotion timeline, docs/timeline.md)",
    None,
    content_type=PCM_CONTENT_TYPE,
    headers=TimelineChunkHeaders,
    description="Body: raw little-endian float32 PCM, mono, 16 kHz (not an audio file), starting at sample "
    "`x-serq-offset`: the previous reply's `next_offset` (the undecided tail is re-sent), then the new audio. "
    "Properties: `type` `timeline.chunk`, `content_type` as given, `reply_to`, `correlation_id`. The stream's "
    "state travels in `x-serq-state` (the previous reply's `state`), so any worker can take any chunk; send "
    "chunk n+1 after the reply to chunk n. The state is sealed (HMAC-SHA256 under the workers' shared "
    "SERQ_STATE_KEY) and re-checked: a changed or inconsistent state is refused `invalid_request`, and a "
    "chunk's work is bounded by its audio. Body at most SERQ_MAX_BYTES.",
)
TIMELINE_RESULT = Message("TimelineChunkResult", "segments decided by a chunk, and the stream's next state",
                          TimelineChunkResult)
ENROLL_REQUEST = Message(
    "EnrollRequest",
    "one clip of a speaker talking normally, to add to the speaker's profile (docs/profiles.md)",
    None,
    content_type="audio/*",
    headers=EnrollHeaders,
    description="Body: the bytes of an audio file, as for classify. Properties: `type` `enroll`, `reply_to`, "
    "`correlation_id`. Headers: `x-serq-profile` (the profile to add to) or `x-serq-speaker` (an opaque key, "
    "to start one; `x-serq-profile-updates` true if later classify requests may update it). Workers keep "
    "nothing: the reply carries the profile.",
)
ENROLL_RESULT = Message("EnrollResult", "the speaker's profile with the clip added", EnrollResult)

CHANNELS: tuple[Channel, ...] = (
    Channel("classify", "classify", "queue",
            "Classify requests. Durable quorum queue; a request delivered SERQ_DELIVERY_LIMIT times without an "
            "ack (it kills workers) is dead-lettered to `{prefix}.dead`.",
            (CLASSIFY_REQUEST, TIMELINE_CHUNK_REQUEST, ENROLL_REQUEST), quorum=True),
    Channel("classifyReply", None, "reply", "The caller's `reply_to` (e.g. direct reply-to `amq.rabbitmq.reply-to`): "
            "exactly one reply per request, same `correlation_id`, AMQP `type` naming the schema.",
            (PREDICTION, ERROR, TIMELINE_RESULT, ENROLL_RESULT)),
    Channel("results", "results", "topic",
            "Every classify reply again, for followers (`emotion.silent`: a clip without speech), without the "
            "caller's `file` name and profile; never replies to timeline chunks or enrolments, nor requests "
            "marked private (header `x-serq-private: true`).",
            (PREDICTION, ERROR), routing_keys="emotion.<label> | emotion.silent | error.<code>"),
    Channel("dead", "dead", "queue",
            "Requests that exhausted the delivery limit or expired unanswered (kept 7 days, at most 10000).",
            (CLASSIFY_REQUEST,)),
    Channel("train", "train", "queue", "Training jobs, one at a time per trainer. Durable quorum queue.",
            (TRAIN_REQUEST,), quorum=True),
    Channel("trainReply", None, "reply", "The job's `reply_to`: progress events, then one final result.",
            (TRAIN_PROGRESS, TRAIN_RESULT)),
    Channel("events", "events", "topic", "Training progress for followers.", (TRAIN_PROGRESS, TRAIN_RESULT),
            routing_keys="train.<job_id>.<stage>"),
    Channel("models", "models", "fanout", "Model activations; every worker binds an exclusive queue and hot-swaps.",
            (MODEL_ACTIVATED,)),
)

OPERATIONS: tuple[Operation, ...] = (
    Operation("classify", "receive", "classify", "A worker classifies a clip and replies to `reply_to`.",
              reply_channel="classifyReply", request_type=CLASSIFY, request=CLASSIFY_REQUEST),
    Operation("timelineChunk", "receive", "classify",
              "A worker continues a streamed timeline with one chunk and replies with the decided segments.",
              reply_channel="classifyReply", request_type=TIMELINE_CHUNK, request=TIMELINE_CHUNK_REQUEST),
    Operation("enroll", "receive", "classify",
              "A worker adds a clip's feature statistics to the speaker profile the request carries.",
              reply_channel="classifyReply", request_type=ENROLL, request=ENROLL_REQUEST),
    Operation("publishResult", "send", "results",
              "A worker publishes every classify reply (but private ones) to the results exchange."),
    Operation("train", "receive", "train", "A trainer runs a training job, reporting progress to `reply_to`.",
              reply_channel="trainReply"),
    Operation("publishProgress", "send", "events", "A trainer publishes progress events."),
    Operation("modelActivated", "receive", "models", "A worker verifies and hot-swaps an activated model."),
    Operation("announceModel", "send", "models", "The trainer or `serq models activate|rollback` announces a model."),
)


def request_types() -> tuple[str, ...]:
    """The AMQP ``type`` of every request a worker takes, in catalogue order (``classify`` first)."""
    return tuple(op.request_type for op in OPERATIONS if op.request_type)


def requests() -> dict[str, Message]:
    """The message of every request type a worker takes (:func:`request_types`), by AMQP ``type``."""
    return {op.request_type: op.request for op in OPERATIONS if op.request_type and op.request is not None}


def messages() -> dict[str, Message]:
    """Every message of the contract by name (each once)."""
    return {m.name: m for channel in CHANNELS for m in channel.messages}


#: Routing keys on the results exchange (documented in the AsyncAPI document).
SILENT_KEY = "emotion.silent"  # a clip without speech


def result_key(label: str | None) -> str:
    """``"angry" -> "emotion.angry"``; ``None`` (a silent clip) -> ``"emotion.silent"``."""
    return SILENT_KEY if label is None else f"emotion.{label}"


def error_key(code: str) -> str:
    """``"too_long" -> "error.too_long"``."""
    return f"error.{code}"
