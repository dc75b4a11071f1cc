"""Middleware of the consumer loop that knows only the contract: limits, the privacy filter, the fan-out.

Metrics and logging need the service's registry and logger and live beside the services
(:mod:`serq.worker.services.middleware`).
"""

from __future__ import annotations

import json

from serq.errors import TooLarge
from serq.schemas.contract import PRIVATE_FIELDS, is_public
from serq.transport.consumer import Consumer, Delivery, Middleware, Outcome


class SizeLimit(Middleware):
    """Refuse a body over ``max_bytes`` before anything decodes it (``too_large``)."""

    def __init__(self, max_bytes: int, setting: str = "SERQ_MAX_BYTES"):
        self.max_bytes, self.setting = max_bytes, setting

    def before_process(self, consumer: Consumer, delivery: Delivery) -> None:
        if len(delivery.body) > self.max_bytes:
            raise TooLarge(f"{len(delivery.body)} bytes exceeds the limit of {self.max_bytes} bytes ({self.setting})")


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
