"""`AsyncClient`: the asyncio twin of :class:`serq.client.Client`, on aio-pika.

::

    from serq.client.aio import AsyncClient

    async with AsyncClient() as client:                     # SERQ_AMQP_URL, SERQ_PREFIX
        result = await client.classify("call.wav", timeout=10)
        async for path, outcome in client.classify_many(paths, max_in_flight=8):
            ...

Same messages as the sync client (:mod:`serq.client.wire` builds and reads them), same
typed errors, same guarantees: publisher confirms, requests kept until answered, reconnect
with backoff and re-send of what is unanswered (at-least-once), a second reply to one
correlation id dropped. Nothing here blocks the event loop: files are read in a thread,
and every wait is an ``await``. One client may be shared by any number of tasks of one
event loop (not by several loops or threads).

Needs the ``async`` extra (``pip install 'serq[async]'``: aio-pika, aiormq, pamqp, yarl).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from functools import partial

import aio_pika

from serq.client.wire import (
    DIRECT_REPLY_TO,
    REROUTE_S,
    Request,
    Source,
    accept_reply,
    client_settings,
    is_bytes,
    lost_error,
    outcome,
    properties,
    refused_error,
    request_for,
    request_headers,
    subscription_keys,
    timeout_error,
    unrouted_error,
)
from serq.errors import BrokerUnavailable, ClientError, ConnectionLost
from serq.schemas import PredictionResult
from serq.schemas.contract import parse_reply
from serq.settings import Settings
from serq.transport.aio import CONNECTION_ERRORS, close_quietly, connect, reconnect
from serq.transport.nodes import redacted_nodes
from serq.transport.topology import ensure_exchange_async

logger = logging.getLogger("serq.client")


class AsyncClient:
    """A connection to a serq deployment for asyncio programs.

    ``AsyncClient(url=None, prefix=None)`` defaults to SERQ_AMQP_URL/SERQ_PREFIX, as
    :class:`~serq.client.Client` does. Connects in ``async with`` (or :meth:`connect`, or at the
    first request); raises :class:`~serq.client.BrokerUnavailable` when no node answers.
    """

    def __init__(self, url: str | None = None, prefix: str | None = None, *, timeout: float | None = None,
                 settings: Settings | None = None):
        self.settings = client_settings(url, prefix, settings)
        self.timeout = timeout or self.settings.request_timeout
        self._queue = self.settings.name("classify")
        self._where = redacted_nodes(self.settings.amqp_url)
        self._pending: dict[str, Request] = {}
        self._waiters: dict[str, asyncio.Future] = {}
        self._sent_on: dict[str, int] = {}  # request id -> the connection generation it was last published on
        self._generation = 0
        self._conn = None
        self._channel = None
        self._connected = asyncio.Event()
        self._open_lock = asyncio.Lock()
        self._reconnector: asyncio.Task | None = None
        self._last_error: BaseException | None = None
        self._closing = False

    # --- connection ----------------------------------------------------------------------------

    async def connect(self) -> "AsyncClient":
        """Open the connection now (idempotent). Raises :class:`BrokerUnavailable`."""
        async with self._open_lock:
            if self._conn is None and self._reconnector is None:
                await self._open()
        return self

    async def _open(self) -> None:
        conn = await connect(self.settings, f"serq-client {self.settings.prefix} (asyncio)")
        try:
            # <p>.classify is the workers' to declare: a publish returned while it is missing raises PublishError
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
            await replies.consume(self._on_reply, no_ack=True)
        except BaseException:
            await close_quietly(conn)
            raise
        self._conn, self._channel = conn, channel
        self._generation += 1
        conn.close_callbacks.add(self._on_connection_closed)
        self._connected.set()

    def _on_connection_closed(self, sender, exc: BaseException | None = None) -> None:
        if sender is self._conn and not self._closing:
            self._lost(exc or "the connection closed")

    def _lost(self, reason: object) -> None:
        """The connection is gone: reconnect in the background (which re-sends what is unanswered)."""
        if self._closing:
            return
        self._connected.clear()
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            logger.warning("lost the connection to RabbitMQ (%s); reconnecting", reason.__class__.__name__
                           if isinstance(reason, BaseException) else reason)
            asyncio.ensure_future(close_quietly(conn))
        if self._reconnector is None or self._reconnector.done():
            self._reconnector = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        def note(exc: BaseException) -> None:
            self._last_error = exc  # what a request that gives up is told

        if not await reconnect(self._open, self.settings, lambda: self._closing, note):
            return
        self._reconnector = None
        generation = self._generation
        unsent = [r for r in self._pending.values() if r.reply is None and self._sent_on.get(r.id) != generation]
        logger.info("reconnected; re-sending %d unanswered request(s)", len(unsent))
        for request in unsent:
            if request.id in self._pending and self._sent_on.get(request.id) != generation:
                try:
                    await self._publish(request)
                except CONNECTION_ERRORS as exc:
                    self._lost(exc)
                    return

    async def close(self) -> None:
        """Close the connection; requests still waiting fail with :class:`ConnectionLost`."""
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost("the client was closed"))
        conn, self._conn, self._channel = self._conn, None, None
        self._connected.clear()
        await close_quietly(conn)

    async def __aenter__(self) -> "AsyncClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- requests ------------------------------------------------------------------------------

    async def _on_reply(self, message) -> None:
        request = accept_reply(self._pending, message.correlation_id, message.type, message.body)
        if request is None:
            logger.debug("dropped a duplicate or late reply %s", message.correlation_id)
            return
        waiter = self._waiters.get(request.id)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _publish(self, request: Request) -> None:
        """Publish ``request`` (confirmed); one the broker returns (no ``<p>.classify``: no worker has
        declared it yet) leaves ``request.routed`` false."""
        props = properties(request)
        ttl_s = props.pop("expiration_ms") / 1000  # aio-pika takes seconds
        self._sent_on[request.id] = self._generation
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(request.body, expiration=ttl_s, **props), routing_key=self._queue, mandatory=True)
            request.routed = True
        except aio_pika.exceptions.PublishError:  # returned (a subclass of DeliveryError: caught first)
            request.routed = False
        except aio_pika.exceptions.DeliveryError:
            # Nacked: a quorum queue refuses what it cannot take yet (no leader: just declared, or
            # its node died). Published again like a returned request; the deadline bounds it.
            logger.info("the broker refused request %s (nack): publishing it again", request.id)
            request.refused = True
            request.routed = False

    async def _publish_until_routed(self, request: Request) -> None:
        """Publish ``request``, and again every REROUTE_S while the broker returns it (the caller bounds the time)."""
        await self._publish(request)
        while not request.routed:
            await asyncio.sleep(REROUTE_S)
            if self._connected.is_set() and not request.routed:  # else the reconnect under way sends it
                await self._publish(request)

    async def _request(self, source: Source, timeout: float, filename: str | None, headers: dict | None,
                       type: str | None) -> Request:
        # A path is read in a thread: a file on a slow disk must not stall the loop.
        make = partial(request_for, source, timeout, filename, headers=headers, type=type)
        return make() if is_bytes(source) else await asyncio.to_thread(make)

    async def _round_trip(self, request: Request):
        if self._closing:
            raise ConnectionLost("the client was closed")
        if self._conn is None and self._reconnector is None:
            await self.connect()
        waiter = asyncio.get_running_loop().create_future()
        self._pending[request.id], self._waiters[request.id] = request, waiter
        try:
            if self._connected.is_set():  # else the reconnect under way sends it
                try:
                    await asyncio.wait_for(self._publish_until_routed(request),
                                           max(0.001, request.deadline - time.monotonic()))
                except TimeoutError:
                    error = timeout_error if request.routed else (
                        refused_error if request.refused else unrouted_error)
                    raise error(request, self._queue, self._where) from None
                except CONNECTION_ERRORS as exc:
                    self._lost(exc)
            try:
                await asyncio.wait_for(waiter, max(0.001, request.deadline - time.monotonic()))
            except TimeoutError:
                if not self._connected.is_set():
                    raise lost_error(self._last_error or "no connection") from None
                raise timeout_error(request, self._queue, self._where) from None
            return outcome(request)
        finally:
            self._pending.pop(request.id, None)
            self._waiters.pop(request.id, None)
            self._sent_on.pop(request.id, None)

    async def classify(self, source: Source, *, timeout: float | None = None, filename: str | None = None,
                       headers: dict | None = None, private: bool = False) -> PredictionResult:
        """Classify one clip (a path or the file's bytes) through the broker.

        ``headers``: extra AMQP headers, e.g. ``x-serq-profile`` (see :mod:`serq.client.profiles`).
        ``private``: no copy of the reply goes to followers on ``<prefix>.results`` (header ``x-serq-private``).
        Raises :class:`~serq.client.ServiceError` (``.code``: ``too_long``, ``unsupported_format``...),
        :class:`~serq.client.Timeout`, :class:`~serq.client.ConnectionLost`, or
        :class:`~serq.client.ClientError` ``not_found``.
        """
        return await self.call(source, timeout=timeout, filename=filename, headers=request_headers(headers, private))

    async def call(self, source: Source, *, type: str | None = None, headers: dict | None = None,
                   timeout: float | None = None, filename: str | None = None):
        """One request of AMQP ``type`` (``None`` = classify, ``"enroll"``...) -> its parsed reply model."""
        request = await self._request(source, timeout or self.timeout, filename, headers, type)
        return await self._round_trip(request)

    def classify_many(self, items: Iterable[Source] | AsyncIterable[Source], *, max_in_flight: int = 16,
                      timeout: float | None = None) -> AsyncIterator[tuple[Source, PredictionResult | ClientError]]:
        """Classify many clips concurrently, at most ``max_in_flight`` awaiting replies at a time.

        An async iterator of ``(item, outcome)`` in input order; ``outcome`` is a result or
        the :class:`ClientError` that item got (:class:`ServiceError`, :class:`Timeout`,
        ``not_found``): one bad clip does not stop the rest. :class:`ConnectionLost` and
        :class:`BrokerUnavailable` are raised. ``items`` may be an iterable or an async iterable.
        """
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        return self._classify_many(items, max_in_flight, timeout or self.timeout)

    async def _classify_many(self, items, max_in_flight: int, timeout: float):
        window: deque[tuple[Source, asyncio.Task]] = deque()
        try:
            async for item in _aiter(items):
                window.append((item, asyncio.ensure_future(self._settle(item, timeout))))
                while len(window) >= max_in_flight:
                    first, task = window.popleft()
                    yield first, await task
            while window:
                first, task = window.popleft()
                yield first, await task
        finally:
            for _, task in window:
                task.cancel()

    async def _settle(self, item: Source, timeout: float) -> PredictionResult | ClientError:
        try:
            return await self.classify(item, timeout=timeout)
        except (ConnectionLost, BrokerUnavailable):
            raise
        except ClientError as exc:
            return exc

    # --- following results ---------------------------------------------------------------------

    async def subscribe(self, emotions: Iterable[str] | None, callback: Callable, *,
                        errors: bool = False) -> "AsyncSubscription":
        """Call ``callback(result, routing_key)`` (a function or a coroutine function) for every result
        of ``emotions`` on ``<prefix>.results``; ``None`` for all, ``errors=True`` adds error replies.

        Runs on its own connection until ``await subscription.close()``; returns once bound.
        """
        subscription = AsyncSubscription(self.settings, subscription_keys(emotions, errors=errors), callback)
        await subscription.start()
        return subscription


async def _aiter(items):
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncSubscription:
    """A running :meth:`AsyncClient.subscribe`: an exclusive queue bound to the results exchange.

    An exception in the callback is logged and does not stop the subscription. Reconnects
    with backoff (the queue is exclusive: results published while disconnected are missed).
    """

    def __init__(self, settings: Settings, keys: list[str], callback: Callable):
        self.settings, self.keys, self.callback = settings, keys, callback
        self._conn = None
        self._closing = False
        self._reconnector: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect and bind; raises :class:`BrokerUnavailable` on the first attempt's failure."""
        conn = await connect(self.settings, f"serq-subscriber {self.settings.prefix} (asyncio)")
        try:
            exchange = await ensure_exchange_async(conn, self.settings, "results")  # NotDeclared before any worker
            channel = await conn.channel()
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            for key in self.keys:
                await queue.bind(exchange, routing_key=key)
            await queue.consume(self._on_message, no_ack=True)
        except BaseException:
            await close_quietly(conn)
            raise
        self._conn = conn
        conn.close_callbacks.add(self._on_closed)

    def _on_closed(self, sender, exc: BaseException | None = None) -> None:
        if sender is self._conn and not self._closing:
            logger.warning("subscription lost its connection (%s); reconnecting", exc.__class__.__name__)
            self._conn = None
            self._reconnector = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        await reconnect(self.start, self.settings, lambda: self._closing)

    async def _on_message(self, message) -> None:
        try:
            result = self.callback(parse_reply(message.body, message.type), message.routing_key)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("subscription callback failed on %s", message.routing_key)

    async def close(self) -> None:
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
        conn, self._conn = self._conn, None
        await close_quietly(conn)

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


__all__ = ["AsyncClient", "AsyncSubscription"]
