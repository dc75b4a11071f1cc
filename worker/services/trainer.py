"""The trainer service (`serq trainer`): training jobs over the broker, one at a time.

Broker:     consumes ``<p>.train`` (durable quorum queue, declared by :mod:`serq.transport.topology`)
            with prefetch 1 and manual acks; every publish waits for the broker's confirm.
Message:    body = JSON :class:`~serq.schemas.TrainRequest`; ``reply_to`` (optional) receives the
            job's :class:`~serq.schemas.TrainProgress` events and its :class:`~serq.schemas.TrainResult`
            (AMQP ``type`` = ``serq.TrainProgress`` / ``serq.TrainResult``, ``correlation_id`` kept).
Events:     topic ``<p>.events``: ``train.<job_id>.<stage>`` for progress, ``train.<job_id>.done`` or
            ``.failed`` for the result; fanout ``<p>.models``: ``ModelActivated`` after an activation.
Worker:     :func:`serq.worker.training.job.run_training` runs in a job thread, so pika's I/O thread keeps
            the heartbeats going through minutes of training; every AMQP call happens on the I/O
            thread (``add_callback_threadsafe``). The job is acked only after its result is
            published and confirmed; an invalid request gets a typed failure and is acked at once.
Transport:  the connection, reconnect loop and consumer loop are :mod:`serq.transport`'s (the
            worker's too): every property is validated, a broker-cancelled consumer declares again,
            metrics (``serq_requests_total{type="serq.TrainRequest"}``...) on ``SERQ_TRAINER_METRICS_PORT``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import pika
from pydantic import ValidationError

from serq.errors import InvalidRequest, JobCancelled, SerqError
from serq.models.registry import Registry
from serq.models.signing import Signer
from serq.progress import eta
from serq.schemas import ModelActivated, TrainProgress, TrainRequest, TrainResult
from serq.schemas.contract import type_name
from serq.schemas.training import request_error
from serq.settings import Settings
from serq.transport.announce import publish_event
from serq.transport.connection import serve_forever
from serq.transport.consumer import Answer, Consumer, Delivery, Middleware
from serq.transport.topology import declare_models, declare_train
from serq.worker.services.logging import log
from serq.worker.services.metrics import Metrics, serve
from serq.worker.services.middleware import MetricsMiddleware

logger = logging.getLogger("serq.trainer")

#: Seconds between two progress events of one stage (stage changes and the last step always go out).
PROGRESS_INTERVAL_S = 0.5
#: Results kept by job id, so a job redelivered after a lost connection is answered without retraining.
RESULT_MEMORY = 32


# --------------------------------------------------------------------------- requests


def parse_request(body: bytes) -> TrainRequest:
    """A validated :class:`TrainRequest`, or a :class:`SerqError` with a stable code.

    Codes: ``invalid_request`` (not JSON, not an object, unknown or missing fields),
    ``unknown_emotion``, ``bad_hyperparameter``.
    """
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." killed the trainer
        raise InvalidRequest(f"a training request must be a JSON object ({exc})") from None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"a training request must be a JSON object, not {type(raw).__name__}")
    try:
        return TrainRequest.model_validate(raw)
    except ValidationError as exc:
        raise request_error(exc) from None


def job_id_of(body: bytes, props: pika.BasicProperties) -> str:
    """The job id a failure is reported under, even when the request did not validate."""
    try:
        value = json.loads(body).get("job_id")
    except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
        value = None
    if isinstance(value, str) and _valid_id(value):
        return value
    for candidate in (props.correlation_id, props.message_id):
        if isinstance(candidate, str) and _valid_id(candidate):  # bytes when not UTF-8
            return candidate
    return "invalid"


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "_-" for c in value)


def failure(job_id: str, exc: SerqError, duration_s: float = 0.0) -> TrainResult:
    return TrainResult(job_id=job_id, ok=False, error=exc.to_dict(), duration_s=duration_s)


# --------------------------------------------------------------------------- progress


class ProgressThrottle:
    """``report(stage, done, total)`` -> :class:`TrainProgress` events, a few per second at most.

    The first event of a stage and its last step (``done == total``) always go out;
    in between, at most one per ``interval`` seconds. ``eta_s`` is extrapolated
    from the stage's own start (:func:`serq.progress.eta`).
    """

    def __init__(self, job_id: str, emit: Callable[[TrainProgress], None], *, interval: float = PROGRESS_INTERVAL_S):
        self.job_id, self.emit, self.interval = job_id, emit, interval
        self._stage: str | None = None
        self._started = 0.0
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._started = stage, now
        elif done < total and now - self._last < self.interval:
            return
        self._last = now
        left = eta(self._started, done, total)
        self.emit(TrainProgress(job_id=self.job_id, stage=stage, done=done, total=total,
                                eta_s=None if left is None else round(left, 1)))


# --------------------------------------------------------------------------- the service


#: The AMQP ``type`` of a training job (also its metrics label).
TRAIN_TYPE = type_name(TrainRequest)


class EventsFanout(Middleware):
    """The job's result on ``<p>.events`` as ``train.<job_id>.done`` or ``.failed`` (confirmed, before the ack)."""

    def __init__(self, exchange: str):
        self.exchange = exchange

    def after_process(self, consumer: Consumer, delivery: Delivery, outcome) -> None:
        result = outcome.body
        key = f"train.{result.job_id}.{'done' if result.ok else 'failed'}"
        consumer.publish(consumer.channel, self.exchange, key, result.model_dump_json().encode(), type=outcome.type,
                         correlation_id=delivery.correlation_id, persistent=True)


class Trainer:
    """Consume ``<p>.train`` and run jobs until :meth:`stop` (SIGTERM/SIGINT in :func:`main`)."""

    def __init__(self, settings: Settings, *, n_jobs: int = -1, metrics: Metrics | None = None):
        self.settings = settings
        self.n_jobs = n_jobs
        self.name = f"serq-trainer-{socket.gethostname()}-{os.getpid()}"
        self.metrics = metrics or Metrics()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cancel = threading.Event()  # set by stop(): the running job stops at its next step
        self._results: OrderedDict[str, tuple[TrainResult, ModelActivated | None]] = OrderedDict()
        self.consumer = Consumer(
            self._declare, self._process, prefetch=1, worker=self.name, app_id="serq-trainer",
            log=partial(log, logger), require_reply_to=False, on_error=self._refusal,
            middleware=[MetricsMiddleware(self.metrics, {TRAIN_TYPE}, TRAIN_TYPE),
                        EventsFanout(settings.name("events"))])
        self.metrics.probe = lambda: (self.consumer.consuming, self.consumer.oldest_age())
        self.signer = Signer.from_settings(settings)  # a bad SERQ_SIGNING_KEY stops the trainer at start

    @property
    def _stopping(self) -> bool:
        return self._stop.is_set()

    # -- lifecycle

    def run(self) -> None:
        """Serve until stopped; reconnect with backoff when the broker goes away."""
        import serq.worker.training.job  # noqa: F401  (scikit-learn, librosa: seconds the first job should not pay)

        if self.signer is None:
            log(logger, "no SERQ_SIGNING_KEY: models are registered and announced unsigned, and workers refuse them",
                level=logging.WARNING)
        port = self.settings.trainer_metrics_port
        server = serve(self.metrics, port, service="trainer") if port else None
        try:
            serve_forever(self.settings, self.name, self._session, stop=self._stop, on_lost=self._on_lost)
        finally:
            if server:
                server.shutdown()
        self._join()
        log(logger, "stopped")

    def stop(self) -> None:
        """Stop taking jobs; the job in progress stops at its next step (file or fold) and goes back to
        the queue unanswered (another trainer, or this one restarted, runs it again), then :meth:`run` returns.

        Safe to call from a signal handler or another thread.
        """
        self._stop.set()
        self._cancel.set()

    def _declare(self, channel) -> str:
        declare_models(channel, self.settings)
        return declare_train(channel, self.settings)

    def _on_lost(self, exc: BaseException) -> None:
        log(logger, "broker_lost", level=logging.WARNING, error=exc.__class__.__name__,
            url=self.settings.redacted_amqp_url)
        self.consumer.detach()  # its delivery died with the connection; the broker redelivers it
        self.metrics.set_connected(False)

    def _session(self, conn: pika.BlockingConnection, ready) -> None:
        # A job that outlived the previous connection finishes first; its redelivery
        # is then answered from memory instead of training again.
        while self._busy() and not self._stopping:
            conn.process_data_events(time_limit=1)
        if self._stopping:
            return
        queue = self.consumer.attach(conn)
        self.metrics.set_connected(True)
        ready()
        log(logger, "consuming", queue=queue, url=self.settings.redacted_amqp_url)
        try:
            # Draining once stopped: the running job stops (stop() cancels it) and is requeued, nothing new starts.
            self.consumer.serve(self._stop.is_set)
        finally:
            self.metrics.set_connected(False)
        self.consumer.detach()

    def _busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _join(self) -> None:
        if self._busy():
            self._thread.join()

    # -- messages (I/O thread)

    def _refusal(self, delivery: Delivery, exc: SerqError):
        """The answer to a delivery refused before it was parsed (an envelope the contract forbids)."""
        job_id = job_id_of(delivery.body, delivery.props)
        delivery.correlation_id = delivery.correlation_id or job_id
        log(logger, "job_refused", level=logging.WARNING, job_id=job_id, code=exc.code, error=str(exc))
        return Answer.of(failure(job_id, exc, delivery.age), persistent=True)

    def _process(self, delivery: Delivery) -> None:
        try:
            request = parse_request(delivery.body)
        except SerqError as exc:
            self._answer(delivery, self._refusal(delivery, exc).body, None)
            return
        delivery.correlation_id = delivery.correlation_id or request.job_id
        if delivery.redelivered and request.job_id in self._results:
            log(logger, "job_redelivered", job_id=request.job_id)
            self._answer(delivery, *self._results[request.job_id])
            return
        log(logger, "job_started", job_id=request.job_id, kind=request.kind,
            dataset=[s.dataset for s in request.data_sources], activate=request.activate)
        self._thread = threading.Thread(target=self._train, args=(delivery, request), name=f"train-{request.job_id}",
                                        daemon=True)
        self._thread.start()

    def _progress(self, delivery: Delivery, event: TrainProgress) -> None:
        channel = delivery.channel
        if not channel.is_open or channel is not self.consumer.channel:
            return
        body = event.model_dump_json().encode()
        if delivery.reply_to:
            self.consumer.publish(channel, "", delivery.reply_to, body, type=type_name(event),
                                  correlation_id=delivery.correlation_id)
        self.consumer.publish(channel, self.settings.name("events"), f"train.{event.job_id}.{event.stage}", body,
                              type=type_name(event), correlation_id=delivery.correlation_id)

    def _answer(self, delivery: Delivery, result: TrainResult, activated: ModelActivated | None) -> None:
        """Publish (confirmed) the activation, then the result to reply_to and events; then ack."""
        channel = delivery.channel
        if not channel.is_open or self.consumer.in_flight.get(delivery.tag) is not delivery:
            return  # the delivery died with its connection; the broker redelivers it
        if activated is not None:  # first, so workers start loading while the client reads the result
            publish_event(activated, settings=self.settings, channel=channel)
        if self.consumer.complete(delivery, Answer.of(result, persistent=True)):
            log(logger, "job_answered", job_id=result.job_id, ok=result.ok, version=result.version,
                activated=result.activated, code=result.error.code if result.error else None,
                seconds=round(result.duration_s, 1))

    # -- the job (its own thread)

    def _train(self, delivery: Delivery, request: TrainRequest) -> None:
        from serq.worker.training.job import run_training

        started = time.monotonic()
        report = ProgressThrottle(request.job_id,
                                  lambda event: self.consumer.threadsafe(self._progress, delivery, event))
        try:
            result = run_training(request, self.settings, report=report, roots=self.settings.data_root_paths,
                                  n_jobs=self.n_jobs, cancel=self._cancel)
            # Plain or speaker-normalised, an activated model is announced with its artifact: workers
            # put it in the matching slot (the plain model, or the profile path's).
            activated = self._event(result.version) if result.activated else None
        except JobCancelled:  # stop(): not a failure, so not answered; the broker gives the job to the next trainer
            log(logger, "job_cancelled", level=logging.WARNING, job_id=request.job_id,
                seconds=round(time.monotonic() - started, 1))
            self.consumer.threadsafe(self._requeue, delivery)
            return
        except SerqError as exc:  # run_training types its own failures; this is reading the new artifact back
            result, activated = failure(request.job_id, exc, time.monotonic() - started), None
        except Exception as exc:  # a bug must not kill the service nor loop the job: answer and ack it
            log(logger, "job_crashed", level=logging.ERROR, job_id=request.job_id, exc_info=True)
            crash = SerqError(f"training failed unexpectedly: {exc.__class__.__name__}: {exc}")
            result = failure(request.job_id, crash, time.monotonic() - started)
            activated = None
        self._remember(request.job_id, result, activated)
        # Dropped if the connection is gone: the result is remembered for the redelivery.
        self.consumer.threadsafe(self._answer, delivery, result, activated)

    def _requeue(self, delivery: Delivery) -> None:
        """On the I/O thread: hand a cancelled job back to the queue (the session then finishes stopping)."""
        if self.consumer.in_flight.get(delivery.tag) is delivery and delivery.channel.is_open:
            self.consumer.requeue(delivery)

    def _event(self, version: str) -> ModelActivated:
        return Registry(self.settings.model_dir).announcement(version, "trained", self.signer)

    def _remember(self, job_id: str, result: TrainResult, activated: ModelActivated | None) -> None:
        self._results[job_id] = (result, activated)
        while len(self._results) > RESULT_MEMORY:
            self._results.popitem(last=False)


def main(settings: Settings, *, n_jobs: int = -1) -> int:
    """Run a trainer in this process until SIGTERM/SIGINT (a second signal exits at once)."""
    trainer = Trainer(settings, n_jobs=n_jobs)

    def on_signal(signum, frame):
        if trainer._stopping:
            log(logger, "aborted", level=logging.WARNING, signal=signum)
            os._exit(1)  # the unacked job goes back to the queue
        log(logger, "stopping", signal=signum)
        trainer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    trainer.run()
    return 0
