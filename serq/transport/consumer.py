"""One consumer loop with middleware hooks, used by the worker and the trainer.

The loop owns what every serq consumer must get right, once:

- every property of a delivery is validated before anything depends on it
  (:func:`envelope`); a message pika could not decode, or whose ``reply_to`` is not
  an address, is dead-lettered at once (``nack`` without requeue -> ``<p>.dead``);
- the reply is published with confirms, then the delivery is acked; any exception
  in reply or ack is caught, logged and the delivery settled (``nack`` to the DLX),
  never left in flight;
- a consumer the broker cancels (its queue was deleted) re-declares the queue and
  consumes again;
- what is in flight, and since when, is known (``/healthz`` and time limits read it).

What differs between services is middleware (dramatiq's idea): size limits, metrics,
logging, the results fan-out and the privacy filter are :class:`Middleware` with four
hooks, not code inside the handlers.

Threads: everything here runs on the connection's I/O thread, except
:meth:`Consumer.complete_threadsafe`, which a compute or job thread calls to hand its
reply back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Protocol

import pika
import pika.exceptions
from pydantic import BaseModel

from serq.errors import InvalidRequest, SerqError
from serq.schemas import ErrorInfo, ErrorReply
from serq.schemas.contract import error_key, type_name
from serq.transport.connection import CONNECTION_ERRORS, UNDECODABLE

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

logger = logging.getLogger("serq.transport")

#: Properties a delivery may carry as text; pika hands over ``bytes`` when one is not UTF-8.
_TEXT_PROPERTIES = ("content_type", "content_encoding", "correlation_id", "reply_to", "expiration",
                    "message_id", "type", "user_id", "app_id", "cluster_id")


class Outcome(Protocol):
    """What a handler answers: a JSON body, its AMQP ``type`` and its key on ``<p>.results`` (or ``None``).

    ``serq.worker.handlers.base.Reply`` is one; the trainer builds :class:`Answer`.
    """

    body: BaseModel
    type: str
    routing_key: str | None


@dataclass(frozen=True)
class Answer:
    """A plain :class:`Outcome` (``persistent``: delivery mode 2, for replies worth surviving a broker restart)."""

    body: BaseModel
    type: str
    routing_key: str | None = None
    persistent: bool = False

    @classmethod
    def of(cls, body: BaseModel, routing_key: str | None = None, persistent: bool = False) -> "Answer":
        return cls(body, type_name(body), routing_key, persistent)


@dataclass
class Delivery:
    """One delivery with its validated envelope. ``problem``: what is wrong with the envelope, answered as such."""

    channel: "BlockingChannel"
    tag: int
    redelivered: bool
    body: bytes
    props: pika.BasicProperties
    request_id: str
    correlation_id: str | None
    reply_to: str | None
    type: str | None
    headers: dict
    started: float = field(default_factory=time.monotonic)
    problem: SerqError | None = None
    #: Why no reply can be addressed (dead-lettered at once), else ``None``.
    unanswerable: str | None = None
    #: The headers as the contract's model of the request's type (set by ``RequestCheck``), else ``None``.
    fields: BaseModel | None = None
    #: What followers get on ``<p>.results`` (set by the privacy filter; ``None`` = nothing).
    public: bytes | None = None
    #: The outcome's reply was delivered to ``reply_to`` ("ok"), or why not.
    delivered: str = ""

    @property
    def age(self) -> float:
        return time.monotonic() - self.started


def envelope(channel, method, props: pika.BasicProperties, body: bytes) -> Delivery:
    """A :class:`Delivery` whose every property has been checked, never an exception.

    - pika could not decode the properties, or ``reply_to`` is not UTF-8: ``unanswerable``;
    - any other text property that is not UTF-8, or headers that are not a table: ``problem``
      (``invalid_request``), answered to ``reply_to`` without the broken id.
    """
    undecodable = getattr(props, UNDECODABLE, None)
    bad = [name for name in _TEXT_PROPERTIES if getattr(props, name, None) is not None
           and not isinstance(getattr(props, name), str)]
    text = {name: (None if name in bad else getattr(props, name, None)) for name in _TEXT_PROPERTIES}
    headers = props.headers if isinstance(props.headers, dict) else {}
    request_id = text["correlation_id"] or text["message_id"] or uuid.uuid4().hex
    delivery = Delivery(channel=channel, tag=method.delivery_tag, redelivered=bool(method.redelivered), body=body,
                        props=props, request_id=request_id, correlation_id=text["correlation_id"],
                        reply_to=text["reply_to"], type=text["type"], headers=headers)
    if undecodable:
        delivery.unanswerable = undecodable
    elif "reply_to" in bad:
        delivery.unanswerable = "reply_to is not UTF-8: no reply can be addressed"
    elif bad:
        delivery.problem = InvalidRequest(f"{', '.join(bad)} not UTF-8: every AMQP property must be UTF-8 text")
    elif props.headers is not None and not isinstance(props.headers, dict):
        delivery.problem = InvalidRequest("headers must be an AMQP table")
    return delivery


def error_answer(delivery: Delivery, exc: SerqError, worker: str) -> "Outcome":
    """The typed error reply to ``delivery`` (``Reply.of`` semantics: results key ``error.<code>``)."""
    body = ErrorReply(error=ErrorInfo(**exc.to_dict()), request_id=delivery.request_id, worker=worker)
    return Answer(body, type_name(body), error_key(exc.code))


class Middleware:
    """Hooks around each delivery (all on the I/O thread; the defaults do nothing).

    - ``before_process(consumer, delivery)``: before the service processes it; raise a
      :class:`SerqError` to answer it with that error instead;
    - ``after_process(consumer, delivery, outcome)``: the reply is confirmed, the delivery
      not yet acked (the results fan-out runs here);
    - ``after_ack(consumer, delivery, outcome)``: settled (metrics, logging);
    - ``after_dead_letter(consumer, delivery, reason)``: nacked to the DLX instead.
    """

    def before_process(self, consumer: "Consumer", delivery: Delivery) -> None:
        pass

    def after_process(self, consumer: "Consumer", delivery: Delivery, outcome: "Outcome") -> None:
        pass

    def after_ack(self, consumer: "Consumer", delivery: Delivery, outcome: "Outcome") -> None:
        pass

    def after_dead_letter(self, consumer: "Consumer", delivery: Delivery, reason: str) -> None:
        pass


class Consumer:
    """Consume one queue on one connection at a time, through ``middleware``, handing work to ``process``.

    ``declare(channel) -> queue name`` declares the queue (again after a broker cancel);
    ``process(delivery)`` starts the work and must end, from any thread, in
    :meth:`complete_threadsafe` (or :meth:`complete` on the I/O thread) exactly once.
    """

    def __init__(self, declare: Callable[["BlockingChannel"], str], process: Callable[[Delivery], None], *,
                 middleware: Iterable[Middleware] = (), prefetch: int = 1, worker: str = "",
                 app_id: str = "serq", log: Callable[..., None] | None = None, require_reply_to: bool = True,
                 on_error: Callable[[Delivery, SerqError], "Outcome"] | None = None):
        self.declare, self.process = declare, process
        self.require_reply_to = require_reply_to
        #: The answer to a delivery refused before processing (default: an ErrorReply).
        self.on_error = on_error or (lambda delivery, exc: error_answer(delivery, exc, self.worker))
        self.middleware = list(middleware)
        self.prefetch, self.worker, self.app_id = prefetch, worker, app_id
        self.log = log or (lambda event, level=logging.INFO, **fields: logger.log(level, "%s %s", event, fields))
        self.conn: pika.BlockingConnection | None = None
        self.channel: "BlockingChannel | None" = None
        #: A channel without confirms for best-effort publishes (the results fan-out).
        self.side_channel: "BlockingChannel | None" = None
        self.queue: str | None = None
        self.in_flight: dict[int, Delivery] = {}
        self._tag: str | None = None
        self._cancelled_by_broker = False
        self.consuming = False

    # --- lifecycle (I/O thread) -------------------------------------------------------------

    def attach(self, conn: pika.BlockingConnection) -> str:
        """Open the channels on ``conn``, declare and start consuming; returns the queue's name."""
        self.conn, self.in_flight = conn, {}  # deliveries of a lost channel come back from the broker
        ch = self.channel = conn.channel()
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=self.prefetch)
        ch.add_on_cancel_callback(self._on_broker_cancel)
        self.side_channel = conn.channel()
        self._consume()
        return self.queue

    def _consume(self) -> None:
        self.queue = self.declare(self.channel)
        self._tag = self.channel.basic_consume(self.queue, self._on_message)
        self._cancelled_by_broker, self.consuming = False, True

    def _on_broker_cancel(self, _frame) -> None:
        self._cancelled_by_broker, self.consuming = True, False

    def pump(self, seconds: float = 0.2) -> None:
        """Process I/O for up to ``seconds``; a consumer the broker cancelled is declared and consumed again."""
        self.conn.process_data_events(time_limit=seconds)
        if self._cancelled_by_broker and self._tag is not None:
            self.log("consumer_cancelled", level=logging.WARNING, queue=self.queue, in_flight=len(self.in_flight),
                     reason="cancelled by the broker (queue deleted?); declaring it again")
            self._consume()
            self.log("consuming", queue=self.queue)

    def serve(self, stopping: Callable[[], bool], seconds: float = 0.2) -> None:
        """Pump (``seconds`` at a time) until ``stopping()``; then stop taking deliveries and pump on
        until those in flight are settled. A lost connection propagates."""
        cancelled = False
        while True:
            self.pump(seconds)
            if stopping() and not cancelled:
                self.cancel()  # no new deliveries; undispatched ones go back to the queue
                cancelled = True
            if cancelled and not self.in_flight:
                return

    def cancel(self) -> None:
        """Stop taking deliveries (undispatched ones go back to the queue); in-flight ones still complete."""
        if self._tag is not None and self.channel is not None and self.channel.is_open:
            self.channel.basic_cancel(self._tag)
        self._tag, self.consuming = None, False

    def detach(self) -> None:
        """The connection is gone: forget its deliveries (the broker redelivers them)."""
        self.conn = self.channel = self.side_channel = None
        self.in_flight, self._tag, self.consuming = {}, None, False

    def oldest_age(self) -> float:
        """Seconds the oldest delivery in flight has waited (0 when none)."""
        return max((d.age for d in list(self.in_flight.values())), default=0.0)

    # --- deliveries (I/O thread) ------------------------------------------------------------

    def _on_message(self, channel, method, props, body: bytes) -> None:
        delivery = envelope(channel, method, props, body)
        if self.require_reply_to and delivery.problem is None and not delivery.reply_to:
            delivery.problem = InvalidRequest("no reply_to: nowhere to send the reply")  # followers still see it
        if delivery.unanswerable:
            self.dead_letter(delivery, delivery.unanswerable)
            return
        self.in_flight[delivery.tag] = delivery
        try:
            if delivery.problem is not None:
                raise delivery.problem
            for m in self.middleware:
                m.before_process(self, delivery)
        except SerqError as exc:
            self.complete(delivery, self.on_error(delivery, exc))
            return
        except CONNECTION_ERRORS:
            raise  # the session ends; the broker redelivers
        except Exception as exc:  # a middleware bug: settle the delivery, keep consuming
            self.log("middleware failed", level=logging.ERROR, exc_info=exc, request_id=delivery.request_id)
            self.dead_letter(delivery, f"middleware failed: {exc.__class__.__name__}")
            return
        try:
            self.process(delivery)
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            self.log("could not start processing", level=logging.ERROR, exc_info=exc, request_id=delivery.request_id)
            self.dead_letter(delivery, f"processing failed to start: {exc.__class__.__name__}")

    def complete_threadsafe(self, delivery: Delivery, outcome: "Outcome") -> bool:
        """From another thread: reply and ack on the I/O thread. ``False`` if the connection is gone
        (the broker redelivers the request)."""
        conn = self.conn
        if conn is None or delivery.channel is not self.channel:
            return False
        try:
            conn.add_callback_threadsafe(partial(self.complete, delivery, outcome))
            return True
        except CONNECTION_ERRORS:
            return False

    def threadsafe(self, fn: Callable, *args) -> bool:
        """Run ``fn(*args)`` on the I/O thread (progress events...); ``False`` if the connection is gone."""
        conn = self.conn
        if conn is None:
            return False
        try:
            conn.add_callback_threadsafe(partial(fn, *args))
            return True
        except CONNECTION_ERRORS:
            return False

    def publish(self, channel, exchange: str, key: str, body: bytes, *, type: str | None,
                correlation_id: str | None, persistent: bool = False, mandatory: bool = False) -> None:
        channel.basic_publish(exchange, key, body, pika.BasicProperties(
            content_type="application/json", correlation_id=correlation_id, type=type, app_id=self.app_id,
            delivery_mode=2 if persistent else None), mandatory=mandatory)

    def complete(self, delivery: Delivery, outcome: "Outcome") -> bool:
        """I/O thread: publish the reply (confirmed), run ``after_process``, ack, run ``after_ack``.

        A reply the broker refuses (nack) is requeued, to be answered again; any other failure
        is logged and the delivery dead-lettered. A lost connection propagates (redelivery).
        Returns ``True`` once the delivery is acked.
        """
        ch = delivery.channel
        if not ch.is_open or self.in_flight.get(delivery.tag) is not delivery:
            return False  # of a lost channel, or settled already: the broker redelivers / nothing to do
        try:
            is_error = isinstance(outcome.body, ErrorReply)
            payload = outcome.body.model_dump_json(exclude_none=is_error).encode()
            delivery.delivered = "no reply_to"
            if delivery.reply_to:
                # Not mandatory: RabbitMQ returns direct reply-to messages as unroutable even when it
                # delivers them. A caller that left misses its reply; a reconnecting client re-sends.
                self.publish(ch, "", delivery.reply_to, payload, type=outcome.type,
                             correlation_id=delivery.correlation_id, persistent=getattr(outcome, "persistent", False))
                delivery.delivered = "ok"
            for m in self.middleware:
                m.after_process(self, delivery, outcome)
            ch.basic_ack(delivery.tag)
        except pika.exceptions.NackError:
            self.log("reply refused by the broker; requeued", level=logging.WARNING, request_id=delivery.request_id)
            self._settle(delivery, requeue=True)
            return False
        except CONNECTION_ERRORS:
            raise
        except Exception as exc:
            self.log("reply failed; dead-lettering the request", level=logging.ERROR, exc_info=exc,
                     request_id=delivery.request_id)
            self.dead_letter(delivery, f"reply failed: {exc.__class__.__name__}")
            return False
        self.in_flight.pop(delivery.tag, None)
        for m in self.middleware:
            try:
                m.after_ack(self, delivery, outcome)
            except Exception as exc:  # a metrics or log bug must not stop the loop
                self.log("after_ack middleware failed", level=logging.ERROR, exc_info=exc)
        return True

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Nack ``delivery`` without requeue: the queue's DLX (``<p>.dead``) keeps it for inspection."""
        self.log("dead-lettered", level=logging.WARNING, reason=reason, request_id=delivery.request_id)
        self._settle(delivery, requeue=False)
        for m in self.middleware:
            try:
                m.after_dead_letter(self, delivery, reason)
            except Exception as exc:
                self.log("after_dead_letter middleware failed", level=logging.ERROR, exc_info=exc)

    def requeue(self, delivery: Delivery) -> None:
        """Hand ``delivery`` back to the queue unanswered (a job cancelled by a stopping service)."""
        self._settle(delivery, requeue=True)

    def _settle(self, delivery: Delivery, *, requeue: bool) -> None:
        self.in_flight.pop(delivery.tag, None)
        if delivery.channel.is_open:
            delivery.channel.basic_nack(delivery.tag, requeue=requeue)
