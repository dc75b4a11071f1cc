"""The AMQP worker: consume ``<prefix>.classify``, reply, publish results, hot-swap models.

Threads and their jobs:

- the **I/O thread** (the caller of :meth:`Worker.run`) owns the pika connection:
  it receives deliveries, publishes replies with publisher confirms and acks.
  It never classifies, so heartbeats keep flowing however long a clip takes;
- one **compute thread** runs the handlers (concurrency = worker processes);
  it hands each reply back with ``connection.add_callback_threadsafe``;
- one **model thread** verifies and loads a model announced on ``<prefix>.models``,
  beside the serving one, then swaps the reference between two requests.

The broker side (one reconnect loop over the nodes of ``SERQ_AMQP_URL``, envelope
checks, reply-then-ack, re-declaring a deleted queue) is :mod:`serq.transport`'s consumer
loop; what is particular to serving is its middleware here: size limit, metrics, the
request check (type, content type and headers against the contract, so a handler only sees
requests the contract allows), the privacy filter and the results fan-out, logging. A per-request time limit
(``SERQ_TIME_LIMIT_S``) interrupts a compute that runs too long, and ``/healthz`` turns 503
when not consuming or when a request has been in flight longer than that.

A model is accepted only when signed by a key in ``SERQ_TRUSTED_KEYS`` (the shipped
ones: by their pinned sha256), checked before its artifact is decoded; a trained
model older than the one served, or an announcement no newer than the last one
accepted (a replay), is refused. A refusal is logged and counted
(``serq_model_refused_total``); the worker keeps serving what it had.

A request is acked only after its reply is confirmed by the broker, so a worker
that dies mid-request loses nothing: the broker redelivers it (and after
``SERQ_DELIVERY_LIMIT`` deliveries dead-letters it, so a clip that kills workers
cannot loop). A request without ``reply_to`` is answered on ``<p>.results`` only and
acked; one whose reply cannot be addressed at all (``reply_to`` not UTF-8, properties that
cannot be decoded) is dead-lettered at once; everything else wrong with a request gets a
typed error reply.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from functools import partial

import numpy as np
import soundfile as sf
from pydantic import ValidationError
from threadpoolctl import threadpool_limits

from serq.errors import ModelError, NotDeclared, SerqError, TimeLimitExceeded
from serq.models.registry import (
    MAX_METADATA_BYTES,
    Registry,
    load_artifact,
    load_default,
    load_speaker_model,
    speaker_version,
)
from serq.models.signing import BACKWARD_REASONS, Trust, as_utc, check_event_signature, kind
from serq.schemas import ErrorInfo, ErrorReply, ModelActivated
from serq.schemas.contract import CLASSIFY
from serq.settings import Settings
from serq.transport.connection import serve_forever
from serq.transport.consumer import Consumer, Delivery
from serq.transport.middleware import PrivacyFilter, RequestCheck, ResultsFanout, SizeLimit
from serq.transport.topology import declare_classify, ensure_exchange
from serq.worker.engine.inference import classify
from serq.worker.engine.model import LoadedModel
from serq.worker.engine.sealing import warn_if_unshared
from serq.worker.handlers import Context, Reply, handler_for, known_types
from serq.worker.services.logging import log, setup
from serq.worker.services.metrics import Metrics, serve
from serq.worker.services.middleware import LogMiddleware, MetricsMiddleware
from serq.worker.services.timelimit import TimeLimit

logger = logging.getLogger("serq.worker")


class ModelHolder:
    """The serving model. A request takes :attr:`current` once and keeps it; :meth:`swap` replaces it for the next."""

    def __init__(self, model: LoadedModel):
        self._model = model
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel:
        return self._model  # one reference read: atomic

    def swap(self, model: LoadedModel) -> LoadedModel:
        with self._lock:
            old, self._model = self._model, model
        return old


#: How far the announcer's clock may be off: an announcement up to this much older than the
#: worker's start is still accepted, none further ahead than this in the future.
CLOCK_SKEW = timedelta(seconds=60)


def base64_length(n: int) -> int:
    return 4 * ((n + 2) // 3)


def max_event_bytes(max_model_bytes: int) -> int:
    """Largest ``ModelActivated`` body read at all: the base64 artifact plus room for its metadata."""
    return base64_length(max_model_bytes) + 2 * MAX_METADATA_BYTES


def verify_event(event: ModelActivated, trust: Trust, max_bytes: int) -> LoadedModel:
    """Verify an activation event and load its artifact; :class:`ModelError` if anything disagrees.

    Order matters: the sizes and the signature are checked before the artifact is even
    base64-decoded, and its sha256 before skops reads it, so an untrusted event costs
    no more memory than its own bytes.
    """
    meta = event.metadata
    if meta.normalisation == "speaker" and meta.speaker_prior is None:
        raise ModelError(f"model {event.version} expects speaker profiles but carries no speaker prior")
    if (event.version, event.sha256, event.feature_version) != (meta.version, meta.sha256, meta.feature_version):
        raise ModelError(
            f"model {event.version}: the event's version/sha256/feature version disagree with its metadata"
        )
    if len(event.artifact_b64) > base64_length(max_bytes):
        raise ModelError(f"model {event.version}: artifact over {max_bytes} bytes (SERQ_MAX_MODEL_BYTES)")
    check_event_signature(event, trust)
    try:
        data = base64.b64decode(event.artifact_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ModelError(f"model {event.version}: artifact is not valid base64") from None
    return load_artifact(data, meta)  # checks the sha256, the feature layout and the types inside


def check_order(event: ModelActivated, serving: LoadedModel | None, floor: datetime, now: datetime) -> None:
    """Refuse a replayed announcement, one from the future, and a trained model older than the one served.

    ``floor``: the time of the last announcement accepted for this slot (at start: the
    worker's start less :data:`CLOCK_SKEW`). Only an operator's signed ``rollback`` or
    ``activate`` may go back to an older version.
    """
    if event.announced_at is not None:
        announced = as_utc(event.announced_at)
        if announced <= floor:
            raise ModelError(f"model {event.version}: announced at {announced.isoformat()}, not after the "
                             f"last accepted ({floor.isoformat()}): a replayed or stale announcement")
        if announced > now + CLOCK_SKEW:
            raise ModelError(f"model {event.version}: announced in the future ({announced.isoformat()})")
    if (serving is not None and as_utc(event.metadata.created) < as_utc(serving.meta.created)
            and event.reason not in BACKWARD_REASONS):
        raise ModelError(f"model {event.version} is older than the served {serving.version} and the announcement "
                         f"is no rollback (reason {event.reason!r})")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Worker:
    """One worker process's service loop. ``run()`` blocks until :meth:`stop` (SIGTERM/SIGINT)."""

    def __init__(self, settings: Settings, model: LoadedModel | None = None, metrics: Metrics | None = None):
        self.settings = settings
        self.registry = Registry(settings.model_dir)
        self.metrics = metrics or Metrics()
        self.trust = Trust.from_settings(settings)
        # Announcements must be newer than this, per slot (plain/speaker): a replay is not.
        started = datetime.now(timezone.utc)
        self._floor = {"plain": started - CLOCK_SKEW, "speaker": started - CLOCK_SKEW}
        self.holder = ModelHolder(model or self._initial_model())
        # The profile path's model: the registry's SPEAKER_ACTIVE (or the shipped one) verified at
        # start, replaced by an announced one (or the registry's after a reconnect).
        self.speaker_model: LoadedModel | None = self._initial_speaker_model()
        self.metrics.set_model(self.holder.current.version)
        self.worker_id = settings.worker_id or default_worker_id()
        self._compute = ThreadPoolExecutor(1, thread_name_prefix="serq-compute")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="serq-model")
        self._stopping = threading.Event()
        self._sessions = 0
        self.time_limit = TimeLimit(settings.time_limit_s)
        self.consumer = Consumer(
            partial(declare_classify, settings=settings), self._dispatch, prefetch=settings.prefetch,
            worker=self.worker_id, app_id="serq-worker", log=partial(log, logger),
            middleware=[
                SizeLimit(settings.max_bytes),  # before any decoding
                MetricsMiddleware(self.metrics, known_types(), CLASSIFY),
                RequestCheck(),  # type, content type, headers: handlers see only requests the contract allows
                PrivacyFilter(),  # decides what followers see; the fan-out publishes it
                ResultsFanout(settings.name("results")),
                LogMiddleware(logger),
            ])
        self.metrics.probe = lambda: (self.consumer.consuming, self.consumer.oldest_age())
        self.metrics.time_limit_s = settings.time_limit_s

    def _disk_trust(self) -> Trust | None:
        """What a model read from the registry at start must be signed by: ``None`` (the registry as it
        is) when no key is configured, since then nothing can be verified and nothing more is accepted."""
        return self.trust if self.trust.can_verify or self.trust.allow_unsigned else None

    def _initial_model(self) -> LoadedModel:
        """The registry's active model; a broken or unsigned one (tampered, truncated, other features) must
        not keep the service down: the shipped default serves instead, with an ERROR log and
        ``serq_model_refused_total``."""
        try:
            return self.registry.load_active(self._disk_trust(), self.settings.max_model_bytes)
        except ModelError as exc:
            self.metrics.refused.inc()
            log(logger, "active model refused; serving the shipped default", level=logging.ERROR,
                refused=self.registry.active_version() or "?", reason=str(exc))
            return load_default()

    def _initial_speaker_model(self) -> LoadedModel | None:
        return load_speaker_model(self.settings.model_dir, self._disk_trust())

    def _announce_policy(self) -> None:
        """Say at start-up which announcements this worker will accept."""
        if self.trust.allow_unsigned:
            log(logger, "SERQ_ALLOW_UNSIGNED_MODELS=true: unsigned models are accepted (development only)",
                level=logging.WARNING, trusted_keys=sorted(self.trust.keys))
        elif not self.trust.can_verify:
            log(logger, "no trusted keys (SERQ_TRUSTED_KEYS): serving the model it started with; every model "
                "announcement will be refused", level=logging.WARNING, model_version=self.holder.current.version)
        else:
            log(logger, "accepting models signed by", trusted_keys=sorted(self.trust.keys))

    # --- lifecycle -------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        """Stop consuming, finish and ack what is in flight, then return from :meth:`run`."""
        if self._stopping.is_set():
            return
        log(logger, "stopping", worker=self.worker_id, in_flight=len(self.consumer.in_flight))
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def warm_up(self) -> None:
        """Classify a synthetic clip once, so the first real request does not pay for lazy imports and JIT."""
        t = np.arange(16_000, dtype=np.float32) / 16_000
        buf = io.BytesIO()
        sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)), 16_000, format="WAV")
        started = time.monotonic()
        classify(buf.getvalue(), self.holder.current, self.settings)
        log(logger, "warmed up", ms=round((time.monotonic() - started) * 1000, 1))

    def run(self) -> int:
        """Serve until stopped, reconnecting with backoff; returns the exit code (0)."""
        # A clip's matrix products are small: BLAS threads would only spin against the other
        # workers on the machine (serq scales by processes, `--scale worker=N`), halving throughput.
        threadpool_limits(limits=1)
        self._announce_policy()
        warn_if_unshared(self.settings)  # timeline stream states: say so if they cannot hop between workers
        server = serve(self.metrics, self.settings.metrics_port) if self.settings.metrics_port else None
        log(logger, "starting", worker=self.worker_id, broker=self.settings.redacted_amqp_url,
            queue=self.settings.name("classify"), prefetch=self.settings.prefetch,
            model_version=self.holder.current.version, time_limit_s=self.settings.time_limit_s,
            metrics_port=server.server_address[1] if server else 0)
        try:
            serve_forever(self.settings, f"serq-worker {self.settings.prefix} {self.worker_id}", self._session,
                          stop=self._stopping, on_lost=self._on_lost)
        finally:
            self._compute.shutdown(wait=True, cancel_futures=True)
            self._loader.shutdown(wait=False, cancel_futures=True)
            self.time_limit.close()
            if server:
                server.shutdown()
        log(logger, "stopped", worker=self.worker_id)
        return 0

    def _on_lost(self, exc: BaseException) -> None:
        log(logger, "connection lost", level=logging.WARNING, reason=exc.__class__.__name__,
            in_flight=len(self.consumer.in_flight))
        self.consumer.detach()  # unacked deliveries of a lost channel come back from the broker
        self.metrics.set_connected(False)
        self.metrics.in_flight.set(0)

    def _session(self, conn, ready) -> None:
        """One connection's life: declare, consume, serve until stopped and drained (or the link drops)."""
        if self._sessions:
            self.metrics.reconnects.inc()
            self._loader.submit(self._sync_registry)
        self._sessions += 1
        queue = self.consumer.attach(conn)
        exchange = self._follow_models(conn)
        self.metrics.set_connected(True)
        ready()
        log(logger, "consuming", queue=queue, models=exchange or "not yet declared")
        try:
            self.consumer.serve(self._stopping.is_set)  # once stopping: finish and ack what is in flight
        finally:
            self.metrics.set_connected(False)
        self.consumer.detach()

    def _follow_models(self, conn, retry_s: float = 10.0) -> str | None:
        """Bind an exclusive queue of this worker to ``<p>.models`` (announcements); returns its name.

        The exchange is the trainer's (and the operator's): a worker only finds it (its account may not
        create or delete it; the broker's definitions create it at boot). Missing, it is looked for again
        every ``retry_s`` on this connection, and once found the registry is read for what was missed.
        """
        try:
            exchange = ensure_exchange(conn, self.settings, "models")
        except NotDeclared as exc:
            log(logger, "not following model announcements yet", level=logging.WARNING, reason=str(exc),
                retry_s=retry_s)
            conn.call_later(retry_s, lambda: self._follow_models_late(conn, retry_s))
            return None
        events = conn.channel()
        mine = events.queue_declare("", exclusive=True, auto_delete=True).method.queue
        events.queue_bind(mine, exchange)
        events.basic_consume(mine, self._on_model_event, auto_ack=True)
        return exchange

    def _follow_models_late(self, conn, retry_s: float) -> None:
        if conn.is_open and not self._stopping.is_set() and self._follow_models(conn, retry_s):
            log(logger, "following model announcements", models=self.settings.name("models"))
            self._loader.submit(self._sync_registry)

    # --- requests ----------------------------------------------------------------------------

    def _dispatch(self, delivery: Delivery) -> None:
        """I/O thread: hand the request to the compute thread."""
        self._compute.submit(self._work, delivery)

    def _work(self, delivery: Delivery) -> None:
        """Compute thread: run the handler (within the time limit), then hand the reply to the I/O thread.

        Whatever happens here, exactly one reply goes back, so no delivery stays in flight.
        """
        try:
            reply = self.time_limit.call(self._handle, delivery)
        except TimeLimitExceeded as exc:
            self.metrics.time_limited.inc()
            log(logger, "time limit exceeded", level=logging.ERROR, request_id=delivery.request_id,
                limit_s=self.settings.time_limit_s)
            reply = self._error(delivery, exc.to_dict())
        except BaseException as exc:  # noqa: BLE001 - a bug: answer it, never leave the delivery in flight
            log(logger, "internal error", level=logging.ERROR, exc_info=exc, request_id=delivery.request_id)
            reply = self._error(delivery, {"code": "internal", "message": f"internal error ({exc.__class__.__name__})"})
        if not self.consumer.complete_threadsafe(delivery, reply):
            log(logger, "reply dropped: connection lost; the request will be redelivered", level=logging.WARNING,
                request_id=delivery.request_id)

    def _error(self, delivery: Delivery, error: dict) -> Reply:
        return Reply.of(ErrorReply(error=ErrorInfo(**error), request_id=delivery.request_id, worker=self.worker_id))

    def _handle(self, delivery: Delivery) -> Reply:
        """The reply to one request; every failure becomes a typed error reply."""
        try:
            handler = handler_for(delivery.type)
            ctx = Context(settings=self.settings, model=self.holder.current, worker=self.worker_id,
                          request_id=delivery.request_id, fields=delivery.fields, headers=dict(delivery.headers),
                          speaker_model=self.speaker_model)
            return handler(delivery.body, delivery.props, ctx)
        except TimeLimitExceeded:
            raise  # answered by _work, outside the time limit's reach
        except SerqError as exc:
            return self._error(delivery, exc.to_dict())
        except Exception as exc:  # a bug: answer, log the traceback, keep serving
            log(logger, "internal error", level=logging.ERROR, exc_info=exc, request_id=delivery.request_id)
            return self._error(delivery, {"code": "internal",
                                          "message": f"internal error ({exc.__class__.__name__}); see the worker log"})

    # --- models ------------------------------------------------------------------------------

    def _on_model_event(self, ch, method, props, body: bytes) -> None:
        """I/O thread: verify and load on the model thread (seconds of work must not block I/O)."""
        self._loader.submit(self._activate, body)

    def _activate(self, body: bytes) -> None:
        try:
            self._verify_and_install(body)
        except Exception as exc:  # a bug the event revealed: refuse it, never lose the model thread silently
            log(logger, "internal error while verifying a model event", level=logging.ERROR, exc_info=exc)
            self._refuse("?", f"internal error ({exc.__class__.__name__})")

    def _verify_and_install(self, body: bytes) -> None:
        limit = max_event_bytes(self.settings.max_model_bytes)
        if len(body) > limit:  # before parsing: an event this big is refused unread
            self._refuse("?", f"event of {len(body)} bytes exceeds {limit} (SERQ_MAX_MODEL_BYTES)")
            return
        try:
            event = ModelActivated.model_validate_json(body)
        except ValidationError as exc:
            self._refuse("?", f"not a ModelActivated event ({exc.error_count()} validation errors)")
            return
        slot = kind(event.metadata)
        serving = self.speaker_model if slot == "speaker" else self.holder.current
        if serving is not None and (event.version, event.sha256) == (serving.version, serving.meta.sha256):
            log(logger, "model already serving", model_version=event.version)
            return
        try:
            check_order(event, serving, self._floor[slot], datetime.now(timezone.utc))
            model = verify_event(event, self.trust, self.settings.max_model_bytes)
        except ModelError as exc:
            self._refuse(event.version, str(exc))
            return
        if event.announced_at is not None:
            self._floor[slot] = as_utc(event.announced_at)
        self._install(model, event.reason or "activated")

    def _install(self, model: LoadedModel, reason: str) -> None:
        if model.meta.normalisation == "speaker":  # the profile path's model; the plain one stays
            old, self.speaker_model = self.speaker_model, model  # one reference write: atomic for readers
            self.metrics.swaps.inc()
            log(logger, "speaker model swapped", model_version=model.version,
                previous=old.version if old else "none", reason=reason)
            return
        old = self.holder.swap(model)
        self.metrics.set_model(model.version)
        self.metrics.swaps.inc()
        log(logger, "model swapped", model_version=model.version, previous=old.version, reason=reason)

    def _refuse(self, version: str, reason: str) -> None:
        self.metrics.refused.inc()
        log(logger, "model refused; serving the current one", level=logging.ERROR, refused=version,
            model_version=self.holder.current.version, reason=reason)

    def _sync_registry(self) -> None:
        """After a reconnect: catch up with an activation missed while away (shared registry only).

        What the registry points at must be signed by a trusted key, like an announcement.
        """
        version = None
        try:
            version = self.registry.active_version()
            if version and version != self.holder.current.version:
                self._install(self.registry.load(version, self.trust, self.settings.max_model_bytes),
                              "registry (missed while disconnected)")
            version = speaker_version(self.registry)
            if version and (self.speaker_model is None or version != self.speaker_model.version):
                self._install(self.registry.load(version, self.trust, self.settings.max_model_bytes),
                              "registry (missed while disconnected)")
        except ModelError as exc:
            self._refuse(version or "?", str(exc))


def main(settings: Settings) -> int:
    """``serq worker``: configure logging, load the active model, serve until SIGTERM/SIGINT."""
    setup(settings.log_level, settings.log_json)
    worker = Worker(settings)
    worker.install_signal_handlers()
    worker.warm_up()
    return worker.run()
