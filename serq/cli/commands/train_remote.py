"""`serq train` without ``--local``: send the job to a trainer over the broker.

Publishes a :class:`~serq.schemas.TrainRequest` to ``<p>.train`` (confirmed). With
``--wait`` it follows the job on a direct reply-to queue: a progress bar per stage
from the trainer's :class:`~serq.schemas.TrainProgress` events, then the result as
`serq train --local` prints it. It never hangs on an absent trainer: before
publishing it checks that someone consumes ``<p>.train``, and while waiting it
re-checks whenever the job has been silent for a while. A lost connection is
re-established (any node of ``SERQ_AMQP_URL``, with the transport's backoff) and the job
followed on ``<p>.events`` from then on.
"""

from __future__ import annotations

import argparse
import sys
import time

from serq.errors import BrokerUnavailable, ConnectionLost, SerqError, Timeout

# Only the standard library and serq's light core (already loaded by `serq`) at the top: `serq --help`
# imports every command module, so each command imports what it runs (pydantic, the broker, the engine)
# when it runs.

#: Seconds of silence after which the waiting client checks the trainer is still there.
QUIET_CHECK_S = 5.0
REPLY_TO = "amq.rabbitmq.reply-to"


class NoTrainer(SerqError):
    """Nobody consumes ``<p>.train``: no `serq trainer` is running for this prefix."""

    code = "no_trainer"


def run_remote(request, args: argparse.Namespace, settings) -> int:
    """Publish ``request``; with ``args.wait`` follow it to its result. Returns the exit code."""
    from functools import partial

    import pika

    from serq.cli.output import print_json, show_train_result
    from serq.schemas.contract import type_name
    from serq.transport.connection import close_quietly, connect
    from serq.transport.topology import attempt, consumer_count, declare_train, missing, queue_exists

    if not args.data:  # the client's default corpus, by absolute path (same path on the trainer's side)
        request = request.model_copy(update={"dataset": str(settings.ravdess_dir.expanduser().resolve())})
    conn = connect(settings, "serq-train")
    waiter = None
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        queue = settings.name("train")  # the trainer's to declare: a client account only publishes to it
        # a development broker's one account may declare it, so the job waits for a trainer that starts later
        if not queue_exists(conn, queue) and not attempt(conn, partial(declare_train, settings=settings),
                                                         refused=(403,)):
            raise missing(settings, "train", settings.redacted_amqp_url)  # no trainer has ever started: no_trainer
        trainers = consumer_count(conn, queue)
        if args.wait and trainers == 0:
            raise NoTrainer(f"no trainer is running for prefix {settings.prefix!r} (nobody consumes {queue}); "
                            "start `serq trainer`, or send the job without --wait to queue it")
        waiter = _Waiter(args, request.job_id, settings) if args.wait else None
        if waiter:
            channel.basic_consume(REPLY_TO, waiter.on_message, auto_ack=True)
        channel.basic_publish(
            "", queue, request.model_dump_json().encode(),
            pika.BasicProperties(content_type="application/json", type=type_name(request), delivery_mode=2,
                                 correlation_id=request.job_id, message_id=request.job_id,
                                 reply_to=REPLY_TO if waiter else None),
            mandatory=True,
        )
        if not waiter:
            if args.json:
                print_json({"job_id": request.job_id, "queue": queue, "trainers": trainers})
            else:
                print(f"job {request.job_id} sent to {queue}"
                      + ("" if trainers else " (no trainer is running: it waits in the queue)"))
                print(f"follow it on exchange {settings.name('events')} with key train.{request.job_id}.#")
            return 0
        waiter.conn = conn
        result = waiter.wait(queue, args.timeout)
    finally:
        close_quietly(waiter.conn if waiter else conn)
    return show_train_result(result, args.json, args.command)


class _Waiter:
    """Collects one job's events from the reply queue and draws its progress."""

    def __init__(self, args: argparse.Namespace, job_id: str, settings):
        self.args, self.job_id, self.settings = args, job_id, settings
        self.conn = None
        self.result = None
        self.last_event = time.monotonic()
        self.heard = False
        self.printers: dict = {}

    def on_message(self, channel, method, props, body: bytes) -> None:
        from serq.schemas import TrainProgress, TrainResult, type_name

        if props.correlation_id != self.job_id:
            return
        self.last_event, self.heard = time.monotonic(), True
        if props.type == type_name(TrainResult):
            self.result = TrainResult.model_validate_json(body)
        elif props.type == type_name(TrainProgress) and not self.args.json:
            from serq.progress import progress_printer

            event = TrainProgress.model_validate_json(body)
            self.printers.setdefault(event.stage, progress_printer(event.stage))(event.done, event.total)

    def _follow_again(self, deadline: float) -> None:
        """After a lost connection: connect again and follow the job on ``<p>.events`` (its reply-to died)."""
        from serq.transport.connection import close_quietly, connect_retrying

        close_quietly(self.conn)
        try:
            self.conn = connect_retrying(self.settings, "serq-train", deadline=deadline)
        except BrokerUnavailable as exc:
            raise ConnectionLost(f"lost the connection while following job {self.job_id}: {exc}") from None
        channel = self.conn.channel()
        mine = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        channel.queue_bind(mine, self.settings.name("events"), f"train.{self.job_id}.#")
        channel.basic_consume(mine, self.on_message, auto_ack=True)
        print(f"reconnected; following job {self.job_id} on {self.settings.name('events')}", file=sys.stderr)

    def wait(self, queue: str, timeout: float):
        from serq.transport.connection import CONNECTION_ERRORS
        from serq.transport.topology import consumer_count

        deadline = time.monotonic() + timeout
        told_busy = False
        while self.result is None:
            if time.monotonic() > deadline:
                raise Timeout(f"no result for job {self.job_id} within {timeout:.0f} s; it may still be running "
                              f"(follow {queue.rsplit('.', 1)[0]}.events, key train.{self.job_id}.#)")
            try:
                self.conn.process_data_events(time_limit=1)
                quiet = self.result is None and time.monotonic() - self.last_event > QUIET_CHECK_S
                trainers = consumer_count(self.conn, queue) if quiet else None
            except CONNECTION_ERRORS:
                self._follow_again(deadline)
                continue
            if quiet:
                self.last_event = time.monotonic()
                if trainers == 0:
                    raise NoTrainer(f"the trainer went away (nobody consumes {queue}); job {self.job_id} stays "
                                    "queued and runs when a trainer starts")
                if not self.heard and not told_busy and not self.args.json:
                    print(f"job {self.job_id} queued: the trainer is busy with another job", file=sys.stderr)
                    told_busy = True
        return self.result
