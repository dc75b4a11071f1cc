"""What every handler shares: its context and its reply.

A handler is ``handler(body: bytes, props: pika.BasicProperties, ctx: Context) -> Reply``.
It runs on the worker's compute thread and sees only requests whose ``type``, ``content_type``
and headers the consumer loop has checked against the contract
(:class:`serq.transport.middleware.RequestCheck`; ``ctx.fields`` holds the headers as the
message's model). It raises :class:`serq.errors.SerqError` for anything else wrong with the
request (the body, a header's content: a stream state, a profile; the service turns it into an
error reply), and returns the reply model with its AMQP ``type`` and results routing key.
The registry by message type is :mod:`serq.worker.handlers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import BaseModel

from serq.schemas import ErrorReply, PredictionResult
from serq.schemas.contract import error_key, result_key, type_name

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
    """What a handler may use besides the message: settings, the model of this request, who we are.

    ``headers``: the request's AMQP headers as they came; ``fields``: the same, checked, as the
    contract's model of the request's type (``ClassifyHeaders``, ``EnrollHeaders``, ``TimelineChunkHeaders``).
    """

    settings: "Settings"
    model: "LoadedModel"
    worker: str
    request_id: str
    fields: BaseModel
    headers: dict = field(default_factory=dict)
    #: The speaker-normalised model the worker serves (announced, else the registry's or the shipped one).
    speaker_model: "LoadedModel | None" = None


Handler = Callable[[bytes, "pika.BasicProperties", Context], Reply]


def text(value) -> str:
    """A header value as text (AMQP long strings may arrive as bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
