"""The broker restarts (``rabbitmqctl stop_app`` / ``start_app``) while requests flow: everyone reconnects.

Runs against a PRIVATE RabbitMQ node started for this test on free ports (never the
shared broker other tests use); skipped when ``rabbitmq-server`` is not installed.
"""

from __future__ import annotations

import threading
import time

import pytest

from serq.client import Client
from serq.settings import Settings

from .conftest import record

pytestmark = [pytest.mark.slow]

REQUESTS = 150
DOWN_S = 3.0  # how long the broker stays down


def test_broker_restart_mid_stream_every_request_answered(private_broker, start_worker, prefix, short_clips):
    fast = {"SERQ_AMQP_URL": private_broker.url, "SERQ_RECONNECT_MAX_S": "2", "SERQ_PREFETCH": "4"}
    workers = [start_worker(fast), start_worker(fast)]
    items = [short_clips[i % len(short_clips)] for i in range(REQUESTS)]
    outcomes: list = []
    failure: list[BaseException] = []

    def stream() -> None:
        settings = Settings(amqp_url=private_broker.url, prefix=prefix, reconnect_max_s=2.0)
        try:
            with Client(settings=settings) as client:
                for _, outcome in client.classify_many(items, max_in_flight=20, timeout=240):
                    outcomes.append(outcome)
        except BaseException as exc:  # ConnectionLost would end the stream: the test reports it
            failure.append(exc)

    thread = threading.Thread(target=stream, name="client-stream")
    thread.start()
    deadline = time.monotonic() + 120
    while len(outcomes) < 30:
        assert time.monotonic() < deadline and thread.is_alive(), f"the stream stalled before the restart: {failure}"
        time.sleep(0.05)
    answered_before = len(outcomes)
    private_broker.ctl("stop_app")
    time.sleep(DOWN_S)
    private_broker.ctl("start_app")
    thread.join(300)

    logs = [w.log_path.read_text() for w in workers]
    row = record(f"broker restart (stop_app, {DOWN_S:g} s down, start_app) under 2 workers", REQUESTS,
                 outcomes + ["connection_lost"] * (REQUESTS - len(outcomes)),
                 "pytest tests/reliability/test_broker_restart.py",
                 answered_before_restart=answered_before,
                 worker_reconnects=sum(log.count("consuming") - 1 for log in logs))
    assert not thread.is_alive(), "the client never finished"
    assert not failure, failure
    assert row["lost"] == 0 and not row["errors"], row
    assert len({o.request_id for o in outcomes}) == REQUESTS
    assert answered_before < REQUESTS, "the restart came after the stream ended"
    for worker, log in zip(workers, logs):
        assert worker.poll() is None and log.count("consuming") >= 2, "a worker did not reconnect:\n" + log[-2000:]
    served_after = {o.worker for o in outcomes[answered_before + 25:]}
    assert served_after, "nothing answered after the restart"
