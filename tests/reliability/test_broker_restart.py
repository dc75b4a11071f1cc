"""The broker restarts (``rabbitmqctl stop_app`` / ``start_app``) while requests flow: everyone reconnects.

Runs against a PRIVATE RabbitMQ node started for this test on free ports (never the
shared broker other tests use); skipped when ``rabbitmq-server`` is not installed.

The client's stream is paced and open-ended: it keeps sending until the broker is
back and ``AFTER_RESTART`` more requests have gone out, so the restart always lands
mid-stream however slowly ``rabbitmqctl`` runs on the machine (a fixed-length burst
could finish before ``stop_app`` took effect).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from serq.client import Client
from serq.settings import Settings

from .conftest import record

pytestmark = [pytest.mark.slow]

BEFORE_RESTART = 30  # answers to see before the broker is stopped
AFTER_RESTART = 60  # requests sent once start_app has returned
PACE_S = 0.03  # between two sends: the stream lasts as long as the restart does
MAX_REQUESTS = 5000  # a runaway guard: a restart that never returns ends the stream
DOWN_S = 3.0  # how long the broker stays down


def test_broker_restart_mid_stream_every_request_answered(private_broker, start_worker, prefix, short_clips):
    fast = {"SERQ_AMQP_URL": private_broker.url, "SERQ_RECONNECT_MAX_S": "2", "SERQ_PREFETCH": "4"}
    workers = [start_worker(fast), start_worker(fast)]
    restarted = threading.Event()
    sent: list[int] = []  # request numbers handed to the client, in order
    sent_at = {}  # phase -> number of requests sent when it began
    outcomes: list = []
    failure: list[BaseException] = []

    def paced_items() -> Iterator[bytes]:
        n = 0
        while n < MAX_REQUESTS:
            if restarted.is_set():
                sent_at.setdefault("restarted", n)
                if n >= sent_at["restarted"] + AFTER_RESTART:
                    return
            sent.append(n)
            yield short_clips[n % len(short_clips)]
            n += 1
            time.sleep(PACE_S)

    def stream() -> None:
        settings = Settings(amqp_url=private_broker.url, prefix=prefix, reconnect_max_s=2.0)
        try:
            with Client(settings=settings) as client:
                for _, outcome in client.classify_many(paced_items(), max_in_flight=20, timeout=240):
                    outcomes.append(outcome)
        except BaseException as exc:  # ConnectionLost would end the stream: the test reports it
            failure.append(exc)

    thread = threading.Thread(target=stream, name="client-stream")
    thread.start()
    deadline = time.monotonic() + 120
    while len(outcomes) < BEFORE_RESTART:
        assert time.monotonic() < deadline and thread.is_alive(), f"the stream stalled before the restart: {failure}"
        time.sleep(0.05)
    answered_before = len(outcomes)
    private_broker.ctl("stop_app")
    sent_at["stopped"] = len(sent)
    time.sleep(DOWN_S)
    private_broker.ctl("start_app")
    restarted.set()
    thread.join(300)
    # The stream may end on whichever worker reconnected first while the other is
    # still in its back-off loop: give every worker time to come back.
    logs = _logs_once_reconnected(workers, timeout=60)

    requests = len(sent)
    row = record(f"broker restart (stop_app, {DOWN_S:g} s down, start_app) under 2 workers", requests,
                 outcomes + ["connection_lost"] * (requests - len(outcomes)),
                 "pytest tests/reliability/test_broker_restart.py",
                 answered_before_restart=answered_before,
                 sent_while_down=sent_at.get("restarted", requests) - sent_at["stopped"],
                 worker_reconnects=sum(log.count("consuming") - 1 for log in logs))
    assert not thread.is_alive(), "the client never finished"
    assert not failure, failure
    assert row["lost"] == 0 and not row["errors"], row
    assert len({o.request_id for o in outcomes}) == requests
    assert requests >= sent_at["stopped"] + AFTER_RESTART, "the stream ended before the broker came back"
    for worker, log in zip(workers, logs):
        assert worker.poll() is None and log.count("consuming") >= 2, "a worker did not reconnect:\n" + log[-2000:]
    served_after = {o.worker for o in outcomes[sent_at["restarted"]:]}
    assert served_after, "nothing answered after the restart"


def _logs_once_reconnected(workers, timeout: float) -> list[str]:
    """Every worker's log, read once each has logged ``consuming`` twice (or at ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [w.log_path.read_text() for w in workers]
        if all(log.count("consuming") >= 2 for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.2)
