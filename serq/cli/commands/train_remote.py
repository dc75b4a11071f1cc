"""`serq train` without ``--local``: send the job to a trainer over the broker.

Publishes a :class:`~serq.schemas.TrainRequest` to ``<p>.train`` (confirmed). With
``--wait`` it follows the job on a direct reply-to queue: a progress bar per stage
from the trainer's :class:`~serq.schemas.TrainProgress` events, then the result as
`serq train --local` prints it. It never hangs on an absent trainer: before
publishing it checks that someone consumes ``<p>.train``, and while waiting it
re-checks whenever the job has been silent for a while.
"""

from __future__ import annotations

import argparse
import sys
import time

from serq.errors import SerqError

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.

#: Seconds of silence after which the waiting client checks the trainer is still there.
QUIET_CHECK_S = 5.0
REPLY_TO = "amq.rabbitmq.reply-to"


class NoTrainer(SerqError):
    """Nobody consumes ``<p>.train``: no `serq trainer` is running for this prefix."""

    code = "no_trainer"


def _consumers(conn, queue: str) -> int:
    """Consumers of ``queue`` (passive declare, on a channel of its own: a 404 closes the channel)."""
    channel = conn.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.consumer_count
    finally:
        if channel.is_open:
            channel.close()


def run_remote(request, args: argparse.Namespace, settings) -> int:
    """Publish ``request``; with ``args.wait`` follow it to its result. Returns the exit code."""
    import pika

    from serq.cli.output import print_json, show_train_result
    from serq.transport.connection import connect
    from serq.transport.topology import declare_train

    if not args.data:  # the client's default corpus, by absolute path (same path on the trainer's side)
        request = request.model_copy(update={"dataset": str(settings.ravdess_dir.expanduser().resolve())})
    conn = connect(settings, "serq-train")
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        queue = declare_train(channel, settings)  # a job sent before any trainer starts waits, never vanishes
        trainers = _consumers(conn, queue)
        if args.wait and trainers == 0:
            raise NoTrainer(f"no trainer is running for prefix {settings.prefix!r} (nobody consumes {queue}); "
                            "start `serq trainer`, or send the job without --wait to queue it")
        waiter = _Waiter(args, request.job_id) if args.wait else None
        if waiter:
            channel.basic_consume(REPLY_TO, waiter.on_message, auto_ack=True)
        channel.basic_publish(
            "", queue, request.model_dump_json().encode(),
            pika.BasicProperties(content_type="application/json", type="serq.TrainRequest", delivery_mode=2,
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
        result = waiter.wait(conn, queue, args.timeout)
    finally:
        if conn.is_open:
            conn.close()
    return show_train_result(result, args.json, args.command)


class _Waiter:
    """Collects one job's events from the reply queue and draws its progress."""

    def __init__(self, args: argparse.Namespace, job_id: str):
        self.args, self.job_id = args, job_id
        self.result = None
        self.last_event = time.monotonic()
        self.heard = False
        self.printers: dict = {}

    def on_message(self, channel, method, props, body: bytes) -> None:
        from serq.schemas import TrainProgress, TrainResult

        if props.correlation_id != self.job_id:
            return
        self.last_event, self.heard = time.monotonic(), True
        if props.type == "serq.TrainResult":
            self.result = TrainResult.model_validate_json(body)
        elif props.type == "serq.TrainProgress" and not self.args.json:
            from serq.progress import progress_printer

            event = TrainProgress.model_validate_json(body)
            self.printers.setdefault(event.stage, progress_printer(event.stage))(event.done, event.total)

    def wait(self, conn, queue: str, timeout: float):
        from serq.client.errors import Timeout

        deadline = time.monotonic() + timeout
        told_busy = False
        while self.result is None:
            if time.monotonic() > deadline:
                raise Timeout(f"no result for job {self.job_id} within {timeout:.0f} s; it may still be running "
                              f"(follow {queue.rsplit('.', 1)[0]}.events, key train.{self.job_id}.#)")
            conn.process_data_events(time_limit=1)
            if self.result is None and time.monotonic() - self.last_event > QUIET_CHECK_S:
                self.last_event = time.monotonic()
                if _consumers(conn, queue) == 0:
                    raise NoTrainer(f"the trainer went away (nobody consumes {queue}); job {self.job_id} stays "
                                    "queued and runs when a trainer starts")
                if not self.heard and not told_busy and not self.args.json:
                    print(f"job {self.job_id} queued: the trainer is busy with another job", file=sys.stderr)
                    told_busy = True
        return self.result
