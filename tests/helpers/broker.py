"""Raw-pika callers the broker tests share: a classify caller, a trainer tap, a stand-in worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from pathlib import Path

import pika
import pytest

from serq.schemas import ErrorInfo, ErrorReply, TrainProgress, TrainResult, type_name
from serq.settings import Settings
from serq.transport.topology import consumer_count as topology_consumer_count
from serq.transport.topology import declare_classify, declare_models, declare_train


def free_port(consecutive: int = 1) -> int:
    """A free port below the kernel's ephemeral range, for a process the test starts (a worker's metrics);
    with ``consecutive`` > 1, the first of that many free ports in a row (`serq worker --processes N`).

    A bind-0 port lies inside that range: in the seconds before the process binds it, any
    connection made on the host can take it as its source port, and the process then finds
    it taken (a worker serves on without /metrics, and the test's scrape fails).
    """
    return _unlisted_port(range(consecutive))


def consumer_count(url: str, queue: str) -> int:
    """Consumers of ``queue`` now; 0 while the broker or the queue is not there (yet)."""
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except pika.exceptions.AMQPError:
        return 0
    try:
        return topology_consumer_count(conn, queue)
    finally:
        if conn.is_open:
            conn.close()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def restartable_port_pair() -> int:
    """A free port p, with p + 20000 free too, both below the kernel's ephemeral range.

    For a node the test stops and starts again: while its listener is down, the clients'
    reconnect attempts take ephemeral source ports, and one of them can land on the node's
    port (a TCP self-connect to the very port it dials), so the restart fails with
    ``eaddrinuse``. A port outside that range is never handed out as a source port.
    (p + 20000 is RabbitMQ's default distribution port for an AMQP port p.)
    """
    return _unlisted_port((0, 20000))


def _unlisted_port(offsets) -> int:
    """A port p below the ephemeral range with p + each of ``offsets`` free and below it too."""
    high = min(_ephemeral_low(), 65536) - max(offsets)
    if high <= 10000:
        raise RuntimeError(f"the ephemeral port range starts at {_ephemeral_low()}: no room for a test port")
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, high)
        try:
            for candidate in (port + offset for offset in offsets):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


def idle_tolerant(url: str) -> pika.URLParameters:
    """Connection parameters for a test's own collector connection, with AMQP heartbeats off.

    A blocking connection only answers heartbeats while the test pumps it; a test that waits
    minutes on a subprocess (a CLI training run on a busy machine) would otherwise have it
    closed by the broker after two missed heartbeats, and lose what it was collecting.
    """
    params = pika.URLParameters(url)
    params.heartbeat = 0
    return params


class Rpc:
    """Minimal raw-pika caller: direct reply-to, one reply per correlation id."""

    def __init__(self, url: str, queue: str):
        self.conn = pika.BlockingConnection(idle_tolerant(url))
        self.ch = self.conn.channel()
        self.queue = queue
        self.replies: dict[str, tuple] = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", self._on_reply, auto_ack=True)

    def _on_reply(self, ch, method, props, body):
        self.replies[props.correlation_id] = (props, json.loads(body))

    def call(self, body: bytes, timeout: float = 60, **props) -> tuple:
        cid = uuid.uuid4().hex
        props.setdefault("reply_to", "amq.rabbitmq.reply-to")
        self.ch.basic_publish("", self.queue, body, pika.BasicProperties(correlation_id=cid, **props))
        deadline = time.monotonic() + timeout
        while cid not in self.replies:
            assert time.monotonic() < deadline, "no reply"
            self.conn.process_data_events(time_limit=0.1)
        return self.replies.pop(cid)


class Tap:
    """Sends jobs and collects what comes back: the reply queue, ``<p>.events`` and ``<p>.models``."""

    def __init__(self, amqp_url: str, prefix: str):
        self.settings = Settings(amqp_url=amqp_url, prefix=prefix)
        self.conn = pika.BlockingConnection(idle_tolerant(amqp_url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.queue = declare_train(self.ch, self.settings)
        self.got: dict[str, list[tuple[str, pika.BasicProperties, bytes]]] = {"reply": [], "events": [], "models": []}
        self.reply_to = self._tap("reply", None, None)
        self._tap("events", self.settings.name("events"), "train.#")
        self._tap("models", declare_models(self.ch, self.settings), "")

    def _tap(self, kind: str, exchange: str | None, key: str | None) -> str:
        queue = self.ch.queue_declare("", exclusive=True).method.queue
        if exchange:
            self.ch.queue_bind(queue, exchange, routing_key=key)
        self.ch.basic_consume(queue, lambda ch, m, p, b: self.got[kind].append((m.routing_key, p, b)), auto_ack=True)
        return queue

    def send(self, body: dict | bytes, correlation_id: str | None = None) -> str:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        cid = correlation_id or (body.get("job_id") if isinstance(body, dict) else None) or os.urandom(6).hex()
        self.ch.basic_publish("", self.queue, data, pika.BasicProperties(
            reply_to=self.reply_to, correlation_id=cid, content_type="application/json"))
        return cid

    def result(self, correlation_id: str, timeout: float = 300) -> TrainResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, props, body in self.got["reply"]:
                if props.correlation_id == correlation_id and props.type == type_name(TrainResult):
                    return TrainResult.model_validate_json(body)
            self.conn.process_data_events(time_limit=0.5)
        pytest.fail(f"no TrainResult for {correlation_id} within {timeout} s")

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.2)

    def pump_until(self, condition, timeout: float, what: str):
        """Pump until ``condition()`` is truthy (its value is returned); fails naming ``what`` at ``timeout``."""
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
            self.conn.process_data_events(time_limit=0.2)
        return value

    def queued(self) -> int:
        """Jobs ready in the train queue (a requeue reaches a quorum queue's count a moment after the nack)."""
        return self.ch.queue_declare(self.queue, passive=True).method.message_count

    def progress(self, correlation_id: str, kind: str = "reply") -> list[TrainProgress]:
        return [TrainProgress.model_validate_json(b) for _, p, b in self.got[kind]
                if p.correlation_id == correlation_id and p.type == type_name(TrainProgress)]

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


class EchoWorker:
    """A stand-in worker (plain pika) that answers each request with an error echoing its body, ``copies`` times."""

    def __init__(self, url: str, queue: str, copies: int = 1, skip_first: int = 0):
        self.url, self.queue, self.copies, self.skip = url, queue, copies, skip_first
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._ready.wait(60), "the echo worker did not start consuming within 60 s"

    def _run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        ch = conn.channel()
        # declared as a worker declares it (clients never do)
        declare_classify(ch, Settings(amqp_url=self.url, prefix=self.queue.rsplit(".", 1)[0]))
        ch.basic_consume(self.queue, self._on_request)
        self._ready.set()
        while not self._stop.is_set():
            conn.process_data_events(time_limit=0.1)
        conn.close()

    def _on_request(self, ch, method, props, body) -> None:
        self.seen.append(props.correlation_id)
        if len(self.seen) > self.skip:
            error = ErrorInfo(code="bad_audio", message=body.decode())
            reply = ErrorReply(error=error, request_id=props.correlation_id)
            for _ in range(self.copies):
                ch.basic_publish("", props.reply_to, reply.model_dump_json().encode(), pika.BasicProperties(
                    correlation_id=props.correlation_id, type=type_name(ErrorReply), content_type="application/json"))
        ch.basic_ack(method.delivery_tag)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


@contextlib.asynccontextmanager
async def echo_worker(url: str, queue: str, **options):
    """An :class:`EchoWorker` on ``queue`` for an async test, started and stopped off its event loop."""
    worker = await asyncio.to_thread(EchoWorker, url, queue, **options)
    try:
        yield worker
    finally:
        await asyncio.to_thread(worker.stop)
