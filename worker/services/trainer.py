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
from dataclasses import dataclass
from functools import partial

import pika
import pika.exceptions
from pydantic import ValidationError

from serq.errors import BrokerUnavailable, InvalidRequest, JobCancelled, SerqError
from serq.progress import eta
from serq.schemas import ModelActivated, TrainProgress, TrainRequest, TrainResult
from serq.schemas.contract import type_name
from serq.schemas.training import request_error
from serq.settings import Settings
from serq.models.registry import Registry
from serq.models.signing import Signer
from serq.transport.announce import publish_event
from serq.transport.connection import CONNECTION_ERRORS, Backoff, connect
from serq.transport.topology import declare_models, declare_train
from serq.worker.services.logging import log

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
        if candidate and _valid_id(candidate):
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


@dataclass
class _Job:
    request: TrainRequest | None  # None when the request did not validate
    channel: object  # the BlockingChannel the delivery came on: acks go back on it or not at all
    delivery_tag: int
    reply_to: str | None
    correlation_id: str


class Trainer:
    """Consume ``<p>.train`` and run jobs until :meth:`stop` (SIGTERM/SIGINT in :func:`main`)."""

    def __init__(self, settings: Settings, *, n_jobs: int = -1):
        self.settings = settings
        self.n_jobs = n_jobs
        self.name = f"serq-trainer-{socket.gethostname()}-{os.getpid()}"
        self._conn: pika.BlockingConnection | None = None
        self._channel = None
        self._consumer_tag: str | None = None
        self._thread: threading.Thread | None = None
        self._in_flight: _Job | None = None  # delivered, not yet answered and acked
        self._stopping = False
        self._cancel = threading.Event()  # set by stop(): the running job stops at its next step
        self._results: OrderedDict[str, tuple[TrainResult, ModelActivated | None]] = OrderedDict()
        self.signer = Signer.from_settings(settings)  # a bad SERQ_SIGNING_KEY stops the trainer at start

    # -- lifecycle

    def run(self) -> None:
        """Serve until stopped; reconnect with backoff when the broker goes away."""
        import serq.worker.training.job  # noqa: F401  (scikit-learn, librosa: seconds the first job should not pay)

        if self.signer is None:
            log(logger, "no SERQ_SIGNING_KEY: models are registered and announced unsigned, and workers refuse them",
                level=logging.WARNING)
        backoff = Backoff(cap=self.settings.reconnect_max_s)
        while not self._stopping:
            try:
                self._conn = connect(self.settings, self.name)
                backoff.reset()
                self._serve(self._conn)
            except (BrokerUnavailable, pika.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
                log(logger, "broker_lost", level=logging.WARNING, error=f"{exc.__class__.__name__}: {exc}",
                    url=self.settings.redacted_amqp_url)
                if not self._stopping:
                    backoff.sleep()
            finally:
                self._close()
        self._join()
        log(logger, "stopped")

    def stop(self) -> None:
        """Stop taking jobs; the job in progress stops at its next step (file or fold) and goes back to
        the queue unanswered (another trainer, or this one restarted, runs it again), then :meth:`run` returns.

        Safe to call from a signal handler or another thread.
        """
        self._stopping = True
        self._cancel.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.add_callback_threadsafe(self._drain)
            except Exception:  # the connection is already gone: run() sees _stopping
                pass

    def _serve(self, conn: pika.BlockingConnection) -> None:
        channel = self._channel = conn.channel()
        channel.confirm_delivery()
        queue = declare_train(channel, self.settings)
        declare_models(channel, self.settings)
        # A job that outlived the previous connection finishes first; its redelivery
        # is then answered from memory instead of training again.
        while self._busy():
            conn.process_data_events(time_limit=1)
        if self._stopping:
            return
        channel.basic_qos(prefetch_count=1)
        self._consumer_tag = channel.basic_consume(queue, self._on_message)
        log(logger, "consuming", queue=queue, url=self.settings.redacted_amqp_url)
        channel.start_consuming()  # returns once the consumer is cancelled (stop(), or the broker: queue deleted)
        if not self._stopping:  # the broker cancelled it: say so, then run() reconnects and redeclares
            log(logger, "consumer_cancelled", level=logging.WARNING, queue=queue)
        while self._in_flight is not None and channel.is_open:  # draining: answer the running job
            conn.process_data_events(time_limit=1)

    def _drain(self) -> None:
        """On the I/O thread: cancel the consumer; stop at once if idle, else after the running job."""
        channel = self._channel
        if channel is None or not channel.is_open:
            return
        if self._consumer_tag is not None:
            channel.basic_cancel(self._consumer_tag)
            self._consumer_tag = None
        if self._in_flight is None:
            channel.stop_consuming()

    def _busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _join(self) -> None:
        if self._busy():
            self._thread.join()

    def _close(self) -> None:
        conn, self._conn, self._channel, self._consumer_tag = self._conn, None, None, None
        self._in_flight = None  # its delivery died with the connection; the broker redelivers it
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                pass

    # -- messages (I/O thread)

    def _on_message(self, channel, method, props: pika.BasicProperties, body: bytes) -> None:
        started = time.monotonic()
        try:
            request = parse_request(body)
        except SerqError as exc:
            job_id = job_id_of(body, props)
            log(logger, "job_refused", level=logging.WARNING, job_id=job_id, code=exc.code, error=str(exc))
            job = _Job(None, channel, method.delivery_tag, props.reply_to, props.correlation_id or job_id)
            self._complete(job, failure(job_id, exc, time.monotonic() - started), None)
            return
        job = self._in_flight = _Job(request, channel, method.delivery_tag, props.reply_to,
                                     props.correlation_id or request.job_id)
        if method.redelivered and request.job_id in self._results:
            log(logger, "job_redelivered", job_id=request.job_id)
            self._complete(job, *self._results[request.job_id])
            return
        log(logger, "job_started", job_id=request.job_id, kind=request.kind,
            dataset=[s.dataset for s in request.data_sources], activate=request.activate)
        self._thread = threading.Thread(target=self._train, args=(job,), name=f"train-{request.job_id}", daemon=True)
        self._thread.start()

    def _publish(self, channel, exchange: str, key: str, model, *, correlation_id: str, persistent: bool) -> None:
        channel.basic_publish(
            exchange, key, model.model_dump_json().encode(),
            pika.BasicProperties(content_type="application/json", type=type_name(model),
                                 correlation_id=correlation_id, delivery_mode=2 if persistent else 1,
                                 app_id="serq-trainer"),
        )

    def _progress(self, job: _Job, event: TrainProgress) -> None:
        channel = job.channel
        if not channel.is_open:
            return
        if job.reply_to:
            self._publish(channel, "", job.reply_to, event, correlation_id=job.correlation_id, persistent=False)
        self._publish(channel, self.settings.name("events"), f"train.{event.job_id}.{event.stage}", event,
                      correlation_id=job.correlation_id, persistent=False)

    def _complete(self, job: _Job, result: TrainResult, activated: ModelActivated | None) -> None:
        """Publish (confirmed) the activation, the result to reply_to and events; then ack."""
        channel = job.channel
        if not channel.is_open:  # the delivery died with its connection; the broker redelivers it
            return
        if activated is not None:  # first, so workers start loading while the client reads the result
            publish_event(activated, settings=self.settings, channel=channel)
        if job.reply_to:
            self._publish(channel, "", job.reply_to, result, correlation_id=job.correlation_id, persistent=True)
        outcome = "done" if result.ok else "failed"
        self._publish(channel, self.settings.name("events"), f"train.{result.job_id}.{outcome}", result,
                      correlation_id=job.correlation_id, persistent=True)
        channel.basic_ack(job.delivery_tag)
        if self._in_flight is job:
            self._in_flight = None
        log(logger, "job_answered", job_id=result.job_id, ok=result.ok, version=result.version,
            activated=result.activated, code=result.error.code if result.error else None,
            seconds=round(result.duration_s, 1))
        if self._stopping:
            self._drain()

    # -- the job (its own thread)

    def _train(self, job: _Job) -> None:
        from serq.worker.training.job import run_training

        request = job.request
        started = time.monotonic()
        report = ProgressThrottle(request.job_id, lambda event: self._on_io(self._progress, job, event))
        try:
            result = run_training(request, self.settings, report=report, roots=self.settings.data_root_paths,
                                  n_jobs=self.n_jobs, cancel=self._cancel)
            # Plain or speaker-normalised, an activated model is announced with its artifact: workers
            # put it in the matching slot (the plain model, or the profile path's).
            activated = self._event(result.version) if result.activated else None
        except JobCancelled:  # stop(): not a failure, so not answered; the broker gives the job to the next trainer
            log(logger, "job_cancelled", level=logging.WARNING, job_id=request.job_id,
                seconds=round(time.monotonic() - started, 1))
            self._on_io(self._requeue, job)
            return
        except SerqError as exc:  # run_training types its own failures; this is reading the new artifact back
            result, activated = failure(request.job_id, exc, time.monotonic() - started), None
        except Exception as exc:  # a bug must not kill the service nor loop the job: answer and ack it
            log(logger, "job_crashed", level=logging.ERROR, job_id=request.job_id, exc_info=True)
            crash = SerqError(f"training failed unexpectedly: {exc.__class__.__name__}: {exc}")
            result = failure(request.job_id, crash, time.monotonic() - started)
            activated = None
        self._remember(request.job_id, result, activated)
        self._on_io(self._complete, job, result, activated)

    def _requeue(self, job: _Job) -> None:
        """On the I/O thread: hand a cancelled job back to the queue, then finish stopping."""
        if job.channel.is_open:
            job.channel.basic_nack(job.delivery_tag, requeue=True)
        if self._in_flight is job:
            self._in_flight = None
        if self._stopping:
            self._drain()

    def _event(self, version: str) -> ModelActivated:
        return Registry(self.settings.model_dir).announcement(version, "trained", self.signer)

    def _on_io(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the connection's I/O thread; dropped if the connection is gone."""
        conn = self._conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(partial(fn, *args))
        except Exception:  # closed: progress is lost, the result is remembered for the redelivery
            pass

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
