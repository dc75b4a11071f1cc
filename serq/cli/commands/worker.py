"""`serq worker`: serve classify requests from RabbitMQ until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

# Only the standard library at the top: `serq --help` imports every command module, so each command
# imports what it runs (pydantic, the broker, the engine) when it runs.


def register(sub) -> None:
    p = sub.add_parser("worker", help="consume classify requests from RabbitMQ (SERQ_AMQP_URL, SERQ_PREFIX)",
                       description="Serve <prefix>.classify with the active model (else the shipped default), "
                                   "hot-swapping models announced on <prefix>.models. One compute thread per "
                                   "process: run more processes (or --processes N) for more throughput. "
                                   "SIGTERM/SIGINT: stop consuming, finish and ack in-flight requests, exit 0.")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="run N worker processes (default 1); each gets its own metrics port from SERQ_METRICS_PORT up")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serq.settings import get_settings

    settings = get_settings()
    if args.processes > 1:
        return _supervise(args.processes, settings)
    from serq.worker.services.worker import main

    return main(settings)


def _supervise(n: int, settings) -> int:
    """Start ``n`` single-process workers and forward SIGTERM/SIGINT to them; exit when all have."""
    children = []
    for i in range(n):
        env = dict(os.environ)
        if settings.metrics_port:
            env["SERQ_METRICS_PORT"] = str(settings.metrics_port + i)
        if settings.worker_id:
            env["SERQ_WORKER_ID"] = f"{settings.worker_id}-{i}"
        children.append(subprocess.Popen([sys.executable, "-m", "serq", "worker"], env=env))

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)
