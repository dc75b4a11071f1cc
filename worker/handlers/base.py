"""What a worker does with a request, chosen by the request's AMQP ``type`` property.

A handler is ``handler(body: bytes, props: pika.BasicProperties, ctx: Context) -> Reply``.
It runs on the worker's compute thread, raises :class:`serq.errors.SerqError`
for anything wrong with the request (the service turns it into an error reply),
and returns the reply model with its AMQP ``type`` and results routing key.

Adding a message type is one line at the bottom of this module, for instance::

    register("timeline.chunk", "serq.worker.engine.timeline:handle_chunk")

(a ``"module:function"`` string is imported on first use, so handler modules
can import this one without a cycle).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from serq.errors import InvalidRequest
from serq.schemas import ErrorReply, PredictionResult
from serq.schemas.contract import (
    AUDIO_CONTENT_TYPES,
    CLASSIFY,
    ClassifyHeaders,
    error_key,
    result_key,
    type_name,
)

if TYPE_CHECKING:
    import pika

    from serq.settings import Settings
    from serq.worker.engine.model import LoadedModel


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

_HANDLERS: dict[str, Handler | str] = {}


def register(type_name: str, handler: Handler | str) -> Handler | str:
    """Route requests whose AMQP ``type`` is ``type_name`` to ``handler`` (or ``"module:function"``)."""
    _HANDLERS[type_name] = handler
    return handler


def handler_for(type_name: str | None) -> Handler:
    """The handler for a request's ``type`` (absent = ``classify``); :class:`InvalidRequest` if unknown."""
    name = type_name or CLASSIFY
    handler = _HANDLERS.get(name)
    if handler is None:
        raise InvalidRequest(f"unknown request type {name!r}; known: {', '.join(sorted(_HANDLERS))}")
    if isinstance(handler, str):
        module, _, attr = handler.partition(":")
        handler = _HANDLERS[name] = getattr(importlib.import_module(module), attr)
    return handler


def known_types() -> list[str]:
    return sorted(_HANDLERS)


def require_audio(props: "pika.BasicProperties") -> None:
    """Refuse a body that says it is not audio (absent ``content_type`` is accepted)."""
    ctype = (props.content_type or "").split(";")[0].strip().lower()
    if ctype and not (ctype.startswith("audio/") or ctype in AUDIO_CONTENT_TYPES):
        raise InvalidRequest(f"content_type {ctype!r}: send the audio file's bytes as audio/* or application/octet-stream")


def request_headers(ctx: Context) -> ClassifyHeaders:
    try:
        return ClassifyHeaders.model_validate(ctx.headers)
    except ValidationError as exc:
        raise InvalidRequest(f"bad headers: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None


def classify_handler(body: bytes, props: "pika.BasicProperties", ctx: Context) -> Reply:
    """``classify``: the audio bytes -> :class:`PredictionResult` (same path as ``serq predict``)."""
    from serq.worker.engine.inference import classify
    from serq.worker.handlers.enroll import (
        profile_args,  # issue 8: the x-serq-profile header
    )

    require_audio(props)
    headers = request_headers(ctx)
    result = classify(body, ctx.model, ctx.settings, file=headers.filename, **profile_args(ctx))
    return Reply.of(result.model_copy(update={"request_id": ctx.request_id, "worker": ctx.worker}))


register(CLASSIFY, classify_handler)
register("timeline.chunk", "serq.worker.handlers.timeline:handle_chunk")  # issue 9: streamed timelines
register("enroll", "serq.worker.handlers.enroll:handle_enroll")  # issue 8: speaker profiles
