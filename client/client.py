"""`Client`: classify clips through RabbitMQ, follow results, with light dependencies (pika, pydantic).

Requests go to ``<prefix>.classify`` with direct reply-to (``amq.rabbitmq.reply-to``):
no reply queue to declare or clean up. Every request is published with publisher
confirms and kept until its reply arrives; when the connection drops, the client
reconnects and re-sends what is unanswered (at-least-once), and drops a second
reply to the same correlation id.

Thread safety: one :class:`Client` may be shared by threads; its calls are
serialised by a lock (one connection, pika is not thread-safe). For throughput use
:meth:`Client.classify_many` (pipelined) or one client per thread.
:meth:`Client.subscribe` runs on its own connection and thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import pika
import pika.exceptions

from serq.client.errors import (
    BrokerUnavailable,
    ClientError,
    ConnectionLost,
    ServiceError,
    Timeout,
)
from serq.client.wire import (
    DIRECT_REPLY_TO,
    REROUTE_S,
    Request,
    Source,
    accept_reply,
    client_settings,
    outcome,
    properties,
    refused_error,
    request_for,
    request_headers,
    subscription_keys,
    timeout_error,
    unrouted_error,
)
from serq.schemas import ErrorReply, PredictionResult
from serq.schemas.contract import parse_reply
from serq.settings import Settings
from serq.transport.connection import (
    CONNECTION_ERRORS,
    Backoff,
    close_quietly,
    connect,
    connect_retrying,
    serve_forever,
)
from serq.transport.topology import ensure_exchange

logger = logging.getLogger("serq.client")

#: What :meth:`Client.classify` returns: the same model `serq predict --json` prints.
ClassifyResult = PredictionResult


class Client:
    """A connection to a serq deployment. ``Client(url=None, prefix=None)`` defaults to SERQ_AMQP_URL/SERQ_PREFIX.

    Raises :class:`BrokerUnavailable` when the broker cannot be reached. Use as a
    context manager, or call :meth:`close`.
    """

    def __init__(self, url: str | None = None, prefix: str | None = None, *, timeout: float | None = None,
                 settings: Settings | None = None):
        self.settings = client_settings(url, prefix, settings)
        self.timeout = timeout or self.settings.request_timeout
        self._queue = self.settings.name("classify")
        self._lock = threading.RLock()
        self._pending: dict[str, Request] = {}
        self._conn: pika.BlockingConnection | None = None
        self._ch = None
        #: Replies dropped because their request was already answered (at-least-once delivery) or abandoned.
        self.duplicates_dropped = 0
        self._connect()

    # --- connection ----------------------------------------------------------------------------

    def _connect(self, conn: pika.BlockingConnection | None = None) -> None:
        conn = conn or connect(self.settings, f"serq-client {self.settings.prefix}")
        try:
            ch = conn.channel()
            ch.confirm_delivery()  # <p>.classify is the workers' to declare: a client only publishes to it
            ch.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        except BaseException:
            conn.close()
            raise
        self._conn, self._ch = conn, ch

    def _reconnect(self, deadline: float) -> None:
        """Reconnect with backoff until ``deadline``, then re-send every unanswered request."""
        self._drop_connection()
        try:
            self._connect(connect_retrying(self.settings, f"serq-client {self.settings.prefix}", deadline=deadline))
        except BrokerUnavailable as exc:
            raise ConnectionLost(f"lost the connection to RabbitMQ and could not reconnect: {exc}") from None
        logger.info("reconnected; re-sending %d unanswered request(s)", len(self._pending))
        for pending in list(self._pending.values()):
            if pending.reply is None:
                self._publish(pending)

    def _drop_connection(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        close_quietly(conn)

    def close(self) -> None:
        """Close the connection; unanswered requests are abandoned (their replies are dropped)."""
        with self._lock:
            self._pending.clear()
            self._drop_connection()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------------

    def _on_reply(self, ch, method, props, body: bytes) -> None:
        if accept_reply(self._pending, props.correlation_id, props.type, body) is None:
            logger.debug("dropped a duplicate or late reply %s", props.correlation_id)
            self.duplicates_dropped += 1

    def _publish(self, pending: Request) -> None:
        """Publish ``pending`` (confirmed); a publish the broker refuses (nack) is made again after a backoff.

        A quorum queue nacks what it cannot take while it has no leader: for the seconds after
        the node leading it died, until the others elect one. :class:`Timeout` at the deadline.
        A publish the broker returns (no ``<p>.classify``: no worker has declared it yet) leaves
        ``pending.routed`` false; :meth:`_wait` publishes it again until its deadline.
        """
        backoff = Backoff(self.settings.reconnect_max_s, base=0.1)
        while True:
            props = properties(pending)
            ttl_ms = props.pop("expiration_ms")
            try:
                self._ch.basic_publish("", self._queue, pending.body,
                                       pika.BasicProperties(**props, expiration=str(ttl_ms)), mandatory=True)
                pending.routed = True
                return
            except pika.exceptions.UnroutableError:
                pending.routed = False
                return
            except pika.exceptions.NackError:
                logger.info("the broker refused request %s (nack): publishing it again", pending.id)
                if not backoff.sleep(pending.deadline):
                    raise refused_error(pending, self._queue, self.settings.redacted_amqp_url) from None

    def _send(self, source: Source, timeout: float, filename: str | None = None, *, headers: dict | None = None,
              type: str | None = None) -> Request:
        pending = request_for(source, timeout, filename, headers=headers, type=type)
        self._pending[pending.id] = pending
        try:
            self._publish(pending)
        except CONNECTION_ERRORS:
            self._reconnect(pending.deadline)  # re-sends it
        return pending

    def _wait(self, pending: Request) -> None:
        """Pump the connection until ``pending`` has its reply; :class:`Timeout` at its deadline."""
        while pending.reply is None:
            left = pending.deadline - time.monotonic()
            if left <= 0:
                error = timeout_error if pending.routed else unrouted_error
                raise error(pending, self._queue, self.settings.redacted_amqp_url)
            try:
                self._reroute()
                self._conn.process_data_events(time_limit=min(left, 0.5 if pending.routed else REROUTE_S))
            except CONNECTION_ERRORS:
                self._reconnect(pending.deadline)

    def _reroute(self) -> None:
        """Publish again every request the broker returned (all of them: they wait for the same queue)."""
        now = time.monotonic()
        for request in list(self._pending.values()):
            if not request.routed and request.reply is None and request.deadline > now:
                try:
                    self._publish(request)
                except Timeout:  # refused until its deadline: its own _wait says so
                    pass

    def _outcome(self, pending: Request) -> PredictionResult:
        """The reply as a result, or :class:`ServiceError` for an error reply."""
        self._pending.pop(pending.id, None)
        return outcome(pending)

    def classify(self, source: Source, *, timeout: float | None = None, filename: str | None = None,
                 headers: dict | None = None, private: bool = False) -> ClassifyResult:
        """Classify one clip (a path or the file's bytes) through the broker.

        ``headers``: extra AMQP headers, e.g. ``x-serq-profile`` (see :mod:`serq.client.profiles`).
        ``private``: no copy of the reply goes to followers on ``<prefix>.results`` (header ``x-serq-private``).
        Raises :class:`ServiceError` (``.code``: ``too_long``, ``unsupported_format``...),
        :class:`Timeout`, :class:`ConnectionLost`, or :class:`ClientError` ``not_found``.
        """
        return self.call(source, timeout=timeout, filename=filename, headers=request_headers(headers, private))

    def call(self, source: Source, *, type: str | None = None, headers: dict | None = None,
             timeout: float | None = None, filename: str | None = None):
        """One request of AMQP ``type`` (``None`` = classify, ``"enroll"``...) -> its parsed reply model.

        Same errors as :meth:`classify`.
        """
        with self._lock:
            pending = self._send(source, timeout or self.timeout, filename, headers=headers, type=type)
            try:
                self._wait(pending)
                return self._outcome(pending)
            finally:
                self._pending.pop(pending.id, None)

    def classify_many(self, items: Iterable[Source], *, max_in_flight: int = 16,
                      timeout: float | None = None) -> Iterator[tuple[Source, PredictionResult | ClientError]]:
        """Classify many clips pipelined, at most ``max_in_flight`` awaiting replies at a time.

        Yields ``(item, outcome)`` in input order; ``outcome`` is a result or the
        :class:`ClientError` that item got (:class:`ServiceError`, :class:`Timeout`,
        ``not_found``): one bad clip does not stop the rest. :class:`ConnectionLost`
        is raised. The client's lock is held while the generator runs.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        timeout = timeout or self.timeout
        with self._lock:
            window: deque[tuple[Source, Request | ClientError]] = deque()
            try:
                for item in items:
                    try:
                        window.append((item, self._send(item, timeout)))
                    except ClientError as exc:
                        if isinstance(exc, ConnectionLost):
                            raise
                        window.append((item, exc))
                    while len(window) >= max_in_flight:
                        yield self._settle(*window.popleft())
                while window:
                    yield self._settle(*window.popleft())
            finally:
                for _, entry in window:
                    if isinstance(entry, Request):
                        self._pending.pop(entry.id, None)

    def _settle(self, item: Source, entry: Request | ClientError) -> tuple[Source, PredictionResult | ClientError]:
        if isinstance(entry, ClientError):
            return item, entry
        try:
            self._wait(entry)
            return item, self._outcome(entry)
        except (ServiceError, Timeout) as exc:
            return item, exc
        finally:
            self._pending.pop(entry.id, None)

    # --- following results ---------------------------------------------------------------------

    def subscribe(self, emotions: Iterable[str] | None, callback: Callable[[PredictionResult | ErrorReply, str], None],
                  *, errors: bool = False) -> "Subscription":
        """Call ``callback(result, routing_key)`` for every result of ``emotions`` on ``<prefix>.results``.

        ``emotions``: labels (and/or ``"silent"``), ``None`` for all; ``errors=True``
        adds error replies. Runs on its own connection and thread until
        ``.close()``; returns once the binding is in place.
        """
        return Subscription(self.settings, subscription_keys(emotions, errors=errors), callback)


class Subscription:
    """A running :meth:`Client.subscribe`: an exclusive queue bound to the results exchange.

    The callback runs on the subscription's thread; an exception in it is logged
    and does not stop the subscription. Reconnects with backoff. ``close()`` stops it.
    """

    def __init__(self, settings: Settings, keys: list[str], callback: Callable):
        self.settings, self.keys, self.callback = settings, keys, callback
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._name = f"serq-subscriber {settings.prefix}"
        first = connect(settings, self._name)  # the first attempt fails loudly in subscribe()
        try:
            ensure_exchange(first, settings, "results")  # as loudly: NotDeclared (no_worker) before any worker
        except BaseException:
            close_quietly(first)
            raise
        self._thread = threading.Thread(target=self._run, args=(first,), name="serq-subscription", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self, first: pika.BlockingConnection) -> None:
        try:
            serve_forever(self.settings, self._name, self._session, stop=self._stop, first=first)
        finally:
            self._ready.set()

    def _session(self, conn: pika.BlockingConnection, ready) -> None:
        exchange = ensure_exchange(conn, self.settings, "results")
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for key in self.keys:
            ch.queue_bind(queue, exchange, routing_key=key)
        ch.basic_consume(queue, self._on_message, auto_ack=True)
        ready()
        self._ready.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.2)

    def _on_message(self, ch, method, props, body: bytes) -> None:
        try:
            self.callback(parse_reply(body, props.type), method.routing_key)
        except Exception:
            logger.exception("subscription callback failed on %s", method.routing_key)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
