"""`serq trainer`: run training jobs from RabbitMQ until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("trainer", help="consume training jobs from RabbitMQ (SERQ_AMQP_URL, SERQ_PREFIX)",
                       description="Run the jobs sent to <prefix>.train one at a time, reading datasets only "
                                   "inside SERQ_DATA_ROOTS; progress goes to the job's reply_to and to "
                                   "<prefix>.events, activations to <prefix>.models. SIGTERM/SIGINT: finish, "
                                   "answer and ack the running job, then exit 0 (a second signal exits at once "
                                   "and the job returns to the queue).")
    p.add_argument("--jobs", type=int, default=-1, metavar="N",
                   help="processes for feature extraction (default -1: every core)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.settings import get_settings
    from serq.worker.services.logging import setup
    from serq.worker.services.trainer import main

    settings = get_settings()
    setup(settings.log_level, settings.log_json)
    return main(settings, n_jobs=args.jobs)
