"""The sustained-load run of bench/broker.py counts what it claims: every request answered or lost.

Its "0 lost" figure feeds docs/deploy.md's capacity model, so it must be able to say otherwise:
with no worker consuming, every request is reported lost; with a real worker, every one is
answered, once, and the latencies and sizes are filled in. Small and bounded (tens of requests).
"""

from __future__ import annotations

import os

import pytest

from bench.broker import broker_pid, cpu_seconds, open_loop
from conftest import ravdess_clip
from serq.settings import Settings
from serq.transport.connection import connect
from serq.transport.topology import declare_classify

pytestmark = [pytest.mark.broker, pytest.mark.corpus]


@pytest.fixture
def clips(ravdess_dir) -> list[bytes]:
    return [ravdess_clip(actor, 3).read_bytes() for actor in (1, 2)]


def test_requests_nobody_answers_are_counted_lost(amqp_url, prefix, clips):
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    conn = connect(settings, "test-bench")
    try:
        declare_classify(conn.channel(), settings)  # the queue exists, no worker consumes it
    finally:
        conn.close()
    out = open_loop(settings, prefix, clips, rate=20, seconds=0.5, drain_s=1.0)
    assert out["sent"] == 10 and out["answered"] == 0 and out["lost"] == 10
    assert out["p50_ms"] is None


def test_a_worker_answers_every_request_once(amqp_url, prefix, clips, start_worker):
    start_worker()
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    out = open_loop(settings, prefix, clips, rate=20, seconds=1.0, drain_s=60.0)
    assert (out["sent"], out["answered"], out["lost"], out["errors"], out["duplicates"]) == (20, 20, 0, 0, 0)
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"]
    assert out["request_body_bytes_mean"] == round(sum(len(c) for c in clips) / len(clips))
    assert out["reply_body_bytes_mean"] > 0 and out["worker_compute_ms_mean"] > 0


def test_the_broker_process_is_found_by_its_listening_port(amqp_url):
    pid = broker_pid(amqp_url)
    if pid is None:
        pytest.skip(f"the broker at {amqp_url} is not a local process this user can see")
    assert cpu_seconds(pid) is not None
    assert broker_pid("amqp://guest:guest@192.0.2.1:5672/%2F") is None  # not local: not guessed
    assert cpu_seconds(os.getpid()) > 0
