"""Middleware of the consumer loop that needs a service's metrics and logger (the rest is in serq.transport)."""

from __future__ import annotations

import logging
from collections.abc import Collection

from serq.schemas import ErrorReply
from serq.transport.consumer import Consumer, Delivery, Middleware, Outcome
from serq.worker.services.logging import log
from serq.worker.services.metrics import Metrics


class MetricsMiddleware(Middleware):
    """``serq_requests_total``, ``serq_request_seconds``, ``serq_errors_total``, ``serq_in_flight``,
    ``serq_dead_lettered_total``, labelled by request type (one of ``known``: a label is never client-chosen)."""

    def __init__(self, metrics: Metrics, known: Collection[str], default: str):
        self.metrics, self.known, self.default = metrics, known, default

    def _kind(self, delivery: Delivery) -> str:
        kind = delivery.type or self.default
        return kind if kind in self.known else "unknown"

    def before_process(self, consumer: Consumer, delivery: Delivery) -> None:
        self.metrics.in_flight.set(len(consumer.in_flight))

    def after_ack(self, consumer: Consumer, delivery: Delivery, outcome: Outcome) -> None:
        kind = self._kind(delivery)
        self.metrics.requests.labels(kind).inc()
        self.metrics.latency.labels(kind).observe(delivery.age)
        error = getattr(outcome.body, "error", None)
        if error is not None:
            self.metrics.errors.labels(error.code).inc()
        self.metrics.in_flight.set(len(consumer.in_flight))

    def after_dead_letter(self, consumer: Consumer, delivery: Delivery, reason: str) -> None:
        self.metrics.dead_lettered.inc()
        self.metrics.in_flight.set(len(consumer.in_flight))


class LogMiddleware(Middleware):
    """One line per settled request: ``reply`` or ``error reply`` with its id, type, key, ms and delivery."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def after_ack(self, consumer: Consumer, delivery: Delivery, outcome: Outcome) -> None:
        fields = {"request_id": delivery.request_id, "type": outcome.type, "key": outcome.routing_key,
                  "ms": round(delivery.age * 1000, 1), "reply": delivery.delivered,
                  "published": delivery.public is not None}
        error = getattr(outcome.body, "error", None)
        if isinstance(outcome.body, ErrorReply) or error is not None:
            code = getattr(error, "code", None)
            level = logging.WARNING if delivery.delivered != "ok" else logging.INFO
            log(self.logger, "error reply", level=level, code=code, message=getattr(error, "message", None), **fields)
        else:
            log(self.logger, "reply", model_version=getattr(outcome.body, "model_version", None), **fields)
