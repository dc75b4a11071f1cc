"""The client's messages on the wire, shared by :class:`~serq.client.Client` (pika) and
:class:`~serq.client.aio.AsyncClient` (aio-pika): one place for what a request carries and how
a reply is read, so the two clients cannot drift apart.

Pure functions and plain data only: no connection, no event loop, no file I/O except
:func:`read_clip` and :func:`request_for` (which the async client runs off the loop).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serq.errors import ClientError, ConnectionLost, ServiceError, Timeout
from serq.labels import EMOTIONS
from serq.schemas import ErrorReply
from serq.schemas.contract import PRIVATE_HEADER, error_key, parse_reply, result_key
from serq.settings import Settings, get_settings

#: RabbitMQ's direct reply-to pseudo-queue: no reply queue to declare or clean up.
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Content type by file suffix; anything else is sent as application/octet-stream.
CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}

Source = str | Path | bytes | bytearray | memoryview


def client_settings(url: str | None, prefix: str | None, settings: Settings | None) -> Settings:
    """The settings a client connects with: ``settings`` (else the environment's), ``url``/``prefix`` over them."""
    base = settings or get_settings()
    update = {k: v for k, v in (("amqp_url", url), ("prefix", prefix)) if v}
    return base.model_copy(update=update) if update else base


def is_bytes(source: Any) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def read_clip(source: Source, filename: str | None = None) -> tuple[bytes, str | None, str]:
    """``(bytes, filename, content_type)`` of a path or of bytes. Raises :class:`ClientError` ``not_found``."""
    if is_bytes(source):
        name = filename
        data = bytes(source)
    else:
        path = Path(source)
        name = filename or path.name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror or exc}", code="not_found") from None
    octet = "application/octet-stream"
    ctype = CONTENT_TYPES.get(Path(name).suffix.lower(), octet) if name else octet
    return data, name, ctype


@dataclass
class Request:
    """A request sent and not yet answered (kept for re-sending after a reconnect).

    ``reply`` is ``(amqp_type, body)`` of the first reply with this correlation id; later
    ones are duplicates (a re-sent request answered twice) and are dropped.
    """

    id: str
    body: bytes
    content_type: str
    filename: str | None
    deadline: float  # time.monotonic()
    timeout: float
    headers: dict = field(default_factory=dict)  # extra AMQP headers (e.g. x-serq-profile)
    type: str | None = None  # AMQP type of the request (None = classify)
    reply: tuple[str | None, bytes] | None = None
    sent_at: float = field(default_factory=time.monotonic)
    #: Whether the broker routed it to the request queue (a publish is returned while the queue does not
    #: exist: no worker has declared it yet; the client publishes it again until its deadline).
    routed: bool = False
    #: Whether the broker refused (nacked) a publish of it; the async client publishes it again until its deadline.
    refused: bool = False


def request_headers(headers: dict | None, private: bool = False) -> dict | None:
    """A request's extra AMQP headers: ``headers``, plus ``x-serq-private: true`` when ``private`` (no copy of
    the reply goes to followers on ``<prefix>.results``; docs/contract.md)."""
    return {**(headers or {}), PRIVATE_HEADER: True} if private else headers


def new_request(data: bytes, name: str | None, content_type: str, timeout: float, *,
                headers: dict | None = None, type: str | None = None) -> Request:
    """A request with a fresh correlation id and its deadline ``timeout`` seconds from now."""
    return Request(uuid.uuid4().hex, data, content_type, name, time.monotonic() + timeout, timeout,
                   headers=dict(headers or {}), type=type)


def request_for(source: Source, timeout: float, filename: str | None = None, *, headers: dict | None = None,
                type: str | None = None) -> Request:
    """The request for a clip (a path or bytes, :func:`read_clip`), its deadline ``timeout`` seconds after the read."""
    return new_request(*read_clip(source, filename), timeout, headers=headers, type=type)


def properties(request: Request, now: float | None = None) -> dict:
    """The AMQP properties of ``request``, as keyword arguments both pika and aio-pika take.

    ``expiration_ms`` is separate (pika wants a string of milliseconds, aio-pika seconds):
    nobody waits for the request after its deadline, so the broker may drop it then.
    """
    now = time.monotonic() if now is None else now
    headers = ({"filename": request.filename} if request.filename else {}) | request.headers
    return {
        "reply_to": DIRECT_REPLY_TO,
        "correlation_id": request.id,
        "message_id": request.id,  # how aio-pika matches a publish the broker returns (no request queue yet)
        "content_type": request.content_type,
        "headers": headers or None,
        "type": request.type,
        "expiration_ms": max(1, int((request.deadline - now) * 1000)),
    }


def accept_reply(pending: dict[str, Request], correlation_id: str | None, amqp_type: str | None,
                 body: bytes) -> Request | None:
    """Record a reply on its request; ``None`` (drop it) when late, unknown or a duplicate."""
    request = pending.get(correlation_id or "")
    if request is None or request.reply is not None:
        return None
    request.reply = (amqp_type, body)
    return request


def outcome(request: Request):
    """The reply's model (:class:`PredictionResult`, ...), or :class:`ServiceError` for an error reply."""
    amqp_type, body = request.reply
    try:
        reply = parse_reply(body, amqp_type)
    except ValueError as exc:
        raise ClientError(f"unreadable reply ({exc.__class__.__name__}) to {request.id}",
                          code="invalid_request") from None
    if isinstance(reply, ErrorReply):
        raise ServiceError(reply.error.message, code=reply.error.code, reply=reply)
    return reply


def timeout_error(request: Request, queue: str, where: str) -> Timeout:
    """The :class:`Timeout` of an unanswered ``request``: says what usually causes it."""
    return Timeout(f"no reply within {request.timeout:g} s: is a worker (`serq worker`) consuming {queue} on {where}?")


def unrouted_error(request: Request, queue: str, where: str) -> Timeout:
    """The :class:`Timeout` of a request the broker returned until its deadline: the queue does not exist."""
    return Timeout(f"no reply within {request.timeout:g} s: {queue} does not exist on {where}, so no worker "
                   f"(`serq worker`) has started for this prefix yet (clients do not create it; see docs/deploy.md)")


def refused_error(request: Request, queue: str, where: str) -> Timeout:
    """The :class:`Timeout` of a request the broker refused (nack) until its deadline."""
    return Timeout(f"the broker refused the request until its deadline ({request.timeout:g} s): "
                   f"is {queue} available on {where}?")


#: How often a request the broker returned (no request queue yet) is published again, in seconds.
REROUTE_S = 0.25


def lost_error(reason: object) -> ConnectionLost:
    return ConnectionLost(f"lost the connection to RabbitMQ and could not reconnect: {reason}")


def subscription_keys(emotions: Iterable[str] | None, *, errors: bool = False) -> list[str]:
    """Routing keys on ``<prefix>.results`` for ``emotions`` (labels and/or ``"silent"``; ``None`` = all).

    Raises :class:`ValueError` naming unknown emotions.
    """
    if emotions is None:
        keys = ["emotion.*"]
    else:
        wanted = [e.strip().lower() for e in emotions]
        unknown = sorted(set(wanted) - set(EMOTIONS) - {"silent"})
        if unknown:
            raise ValueError(f"unknown emotion(s) {', '.join(unknown)}; valid: {', '.join(EMOTIONS)}, silent")
        keys = [result_key(None if e == "silent" else e) for e in dict.fromkeys(wanted)]
    if errors:
        keys.append(error_key("*"))
    return keys

