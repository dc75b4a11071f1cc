"""What every handler shares: its context, its reply, and the checks of a request's properties.

A handler is ``handler(body: bytes, props: pika.BasicProperties, ctx: Context) -> Reply``.
It runs on the worker's compute thread, raises :class:`serq.errors.SerqError`
for anything wrong with the request (the service turns it into an error reply),
and returns the reply model with its AMQP ``type`` and results routing key.
The registry by message type is :mod:`serq.worker.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ValidationError

from serq.errors import InvalidRequest
from serq.schemas import ErrorReply, PredictionResult
from serq.schemas.contract import AUDIO_CONTENT_TYPES, error_key, result_key, type_name

if TYPE_CHECKING:
    import pika

    from serq.settings import Settings
    from serq.worker.engine.model import LoadedModel

Headers = TypeVar("Headers", bound=BaseModel)


@dataclass(frozen=True)
class Reply:
    """A handler's answer: the JSON body, its AMQP ``type`` and its key on ``<prefix>.results``.

    ``routing_key`` ``None`` means the reply is not published to the results exchange.
    """

    body: BaseModel
    type: str
    routing_key: str | None

    @classmethod
    def of(cls, body: BaseModel) -> "Reply":
        """A reply whose type is the model's schema name; results and errors get their routing keys."""
        if isinstance(body, PredictionResult):
            key = result_key(body.label)
        elif isinstance(body, ErrorReply):
            key = error_key(body.error.code)
        else:
            key = None
        return cls(body=body, type=type_name(body), routing_key=key)


@dataclass(frozen=True)
class Context:
    """What a handler may use besides the message: settings, the model of this request, who we are."""

    settings: "Settings"
    model: "LoadedModel"
    worker: str
    request_id: str
    headers: dict = field(default_factory=dict)
    #: The speaker-normalised model the worker serves (announced, else the registry's or the shipped one).
    speaker_model: "LoadedModel | None" = None


Handler = Callable[[bytes, "pika.BasicProperties", Context], Reply]


def text(value) -> str:
    """A header value as text (AMQP long strings may arrive as bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def parse_headers(model: type[Headers], headers: dict, request_type: str) -> Headers:
    """The request's headers as ``model``; :class:`InvalidRequest` naming the first bad header otherwise."""
    try:
        return model.model_validate({k: text(v) if isinstance(v, (bytes, bytearray)) else v
                                     for k, v in headers.items()})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(f"bad {request_type} headers: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def require_audio(props: "pika.BasicProperties") -> None:
    """Refuse a body that says it is not audio (absent ``content_type`` is accepted)."""
    ctype = (props.content_type or "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("audio/") or ctype in AUDIO_CONTENT_TYPES):
        raise InvalidRequest(f"content_type {ctype!r}: send the audio file's bytes as audio/* or application/octet-stream")
