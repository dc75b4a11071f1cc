"""Middleware of the consumer loop that knows only the contract: limits, the request check, the privacy
filter, the fan-out.

Metrics and logging need the service's registry and logger and live beside the services
(:mod:`serq.worker.services.middleware`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from pydantic import BaseModel, ValidationError

from serq.errors import InvalidRequest, TooLarge
from serq.schemas.contract import AUDIO_CONTENT_TYPES, CLASSIFY, PRIVATE_FIELDS, Message, is_public, requests
from serq.schemas.timeline import PCM_CONTENT_TYPE, TIMELINE_RATE
from serq.transport.consumer import Consumer, Delivery, Middleware, Outcome


class SizeLimit(Middleware):
    """Refuse a body over ``max_bytes`` before anything decodes it (``too_large``)."""

    def __init__(self, max_bytes: int, setting: str = "SERQ_MAX_BYTES"):
        self.max_bytes, self.setting = max_bytes, setting

    def before_process(self, consumer: Consumer, delivery: Delivery) -> None:
        if len(delivery.body) > self.max_bytes:
            raise TooLarge(f"{len(delivery.body)} bytes exceeds the limit of {self.max_bytes} bytes ({self.setting})")


def _media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``"Audio/X-Raw;Rate=16000"`` -> ``("audio/x-raw", {"rate": "16000"})``: lower case, parts stripped."""
    kind, *params = [part.strip().lower() for part in (value or "").split(";")]
    return kind, dict(p.split("=", 1) for p in params if "=" in p)


def _audio_file(kind: str, params: dict[str, str]) -> bool:
    return not kind or kind.startswith("audio/") or kind in AUDIO_CONTENT_TYPES  # absent is accepted


def _raw_pcm(kind: str, params: dict[str, str]) -> bool:
    # Parameters in any order and case; channels may be left out (mono).
    return kind == "application/octet-stream" or (
        kind == "audio/x-raw" and params.get("format") == "f32le" and params.get("rate") == str(TIMELINE_RATE)
        and params.get("channels", "1") == "1")


#: A request message's declared ``content_type`` -> what it accepts, and what a refusal tells the caller.
CONTENT_TYPES: dict[str, tuple[Callable[[str, dict[str, str]], bool], str]] = {
    "audio/*": (_audio_file, "send the audio file's bytes as audio/* or application/octet-stream"),
    PCM_CONTENT_TYPE: (_raw_pcm, f"a timeline chunk is raw PCM, {PCM_CONTENT_TYPE!r} (or application/octet-stream)"),
}


def header_text(value):
    """A header value as text when it arrived as bytes (AMQP long strings may), else unchanged."""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def check_request(request_type: str | None, content_type: str | None, headers: dict,
                  known: Mapping[str, Message] | None = None) -> BaseModel:
    """A request's ``type``, ``content_type`` and headers checked against its contract message
    (``known``: :func:`serq.schemas.contract.requests`); returns the headers as the message's model.

    Every refusal is :class:`InvalidRequest`, in one format per property: ``unknown request type
    '<t>'; known: ...``, ``content_type '<value>': <what the type needs>``, ``bad <type> headers:
    <header>: <reason>``.
    """
    known = requests() if known is None else known
    name = request_type or CLASSIFY  # absent means classify
    message = known.get(name)
    if message is None:
        raise InvalidRequest(f"unknown request type {name!r}; known: {', '.join(sorted(known))}")
    accepts, needs = CONTENT_TYPES[message.content_type]
    if not accepts(*_media_type(content_type)):
        raise InvalidRequest(f"content_type {content_type!r}: {needs}")
    try:
        return message.headers.model_validate({k: header_text(v) for k, v in headers.items()})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(f"bad {name} headers: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


class RequestCheck(Middleware):
    """Refuse a request whose ``type``, ``content_type`` or headers break the contract, before a handler
    sees it (:func:`check_request`); sets ``delivery.fields``, the headers as the message's model."""

    def __init__(self, known: Mapping[str, Message] | None = None):
        self.known = requests() if known is None else dict(known)

    def before_process(self, consumer: Consumer, delivery: Delivery) -> None:
        delivery.fields = check_request(delivery.type, delivery.props.content_type, delivery.headers, self.known)


def public_copy(payload: bytes) -> bytes:
    """A reply's JSON without the fields followers never see (:data:`PRIVATE_FIELDS`)."""
    data = json.loads(payload)
    for name in PRIVATE_FIELDS:
        data.pop(name, None)
    return json.dumps(data, separators=(",", ":")).encode()


class PrivacyFilter(Middleware):
    """Decide what followers get: classify replies only, never a private request's, never file names or profiles.

    Sets ``delivery.public`` for :class:`ResultsFanout` (which must come after it).
    """

    def after_process(self, consumer: Consumer, delivery: Delivery, outcome: Outcome) -> None:
        delivery.public = None
        if outcome.routing_key is None or not is_public(delivery.type, delivery.headers):
            return
        is_error = outcome.body.__class__.__name__ == "ErrorReply"
        delivery.public = public_copy(outcome.body.model_dump_json(exclude_none=is_error).encode())


class ResultsFanout(Middleware):
    """Publish ``delivery.public`` on ``exchange`` with the outcome's routing key, after the reply is confirmed.

    Best effort, on the consumer's side channel (no confirms): the one confirm a request
    waits for is its reply's.
    """

    def __init__(self, exchange: str):
        self.exchange = exchange

    def after_process(self, consumer: Consumer, delivery: Delivery, outcome: Outcome) -> None:
        if delivery.public is not None and consumer.side_channel is not None:
            consumer.publish(consumer.side_channel, self.exchange, outcome.routing_key, delivery.public,
                             type=outcome.type, correlation_id=delivery.correlation_id)
