"""Several workers and their life cycle: fair dispatch, SIGTERM drains in-flight work, reconnect."""

from __future__ import annotations

import io
import re
import signal
import time
from collections import Counter

import numpy as np
import pika
import pytest
import soundfile as sf

from serq.client import Client

from conftest import close_broker_connections, ravdess_clip
from helpers.broker import Rpc

pytestmark = [pytest.mark.broker, pytest.mark.corpus]


@pytest.fixture(scope="module")
def long_clip(ravdess_dir) -> bytes:
    """About 20 s of real speech (RAVDESS actor 4), as FLAC: a few hundred ms of work per request."""
    parts = [sf.read(ravdess_clip(4, e, intensity=1 if e == 1 else 2))[0] for e in range(1, 7)]
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts), 16_000, format="FLAC")
    return buf.getvalue()


def test_two_workers_share_the_load_fairly(start_worker, amqp_url, prefix, ravdess_dir):
    start_worker({"SERQ_PREFETCH": "1"})
    start_worker({"SERQ_PREFETCH": "1"})
    clips = [ravdess_clip(5, e, intensity=1 if e == 1 else 2, statement=s) for e in range(1, 9) for s in (1, 2)]
    with Client(amqp_url, prefix) as client:
        outcomes = list(client.classify_many(clips, max_in_flight=8, timeout=120))
    assert all(not isinstance(o, Exception) for _, o in outcomes), outcomes
    by_worker = Counter(o.worker for _, o in outcomes)
    assert set(by_worker) == {"worker0", "worker1"}
    assert min(by_worker.values()) >= 5, by_worker  # 16 requests: neither worker idles


def test_sigterm_finishes_and_acks_in_flight_work_then_exits_0(start_worker, amqp_url, prefix, long_clip):
    proc = start_worker({"SERQ_PREFETCH": "4"})
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    sent = []
    for i in range(8):
        cid = f"req-{i}"
        rpc.ch.basic_publish("", f"{prefix}.classify", long_clip, pika.BasicProperties(
            correlation_id=cid, reply_to="amq.rabbitmq.reply-to", content_type="audio/flac"))
        sent.append(cid)
    while not rpc.replies:  # the first reply: the worker is busy, with more delivered behind it
        rpc.conn.process_data_events(time_limit=0.05)
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        rpc.conn.process_data_events(time_limit=0.1)
    assert proc.returncode == 0, proc.log_path.read_text()[-2000:]
    log = proc.log_path.read_text()
    after_stop = log[log.index("stopping"):]
    assert re.search(r"\breply\b.*reply=ok", after_stop), "nothing was finished after SIGTERM:\n" + log[-2000:]

    def accounted() -> int:  # replies seen + requests back in the queue
        rpc.conn.process_data_events(time_limit=0.1)
        return len(rpc.replies) + rpc.ch.queue_declare(f"{prefix}.classify", passive=True).method.message_count

    # The last replies and the requeues (Raft commands of a quorum queue) land a moment after the exit: polled.
    deadline = time.monotonic() + 60
    while accounted() != 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    answered = set(rpc.replies)
    waiting = rpc.ch.queue_declare(f"{prefix}.classify", passive=True).method.message_count
    assert 2 <= len(answered) < 8 and len(answered) + waiting == 8  # in-flight ones finished, the rest kept

    start_worker()  # the rest is served by the next worker, nothing lost
    deadline = time.monotonic() + 120
    while len(rpc.replies) < 8 and time.monotonic() < deadline:
        rpc.conn.process_data_events(time_limit=0.1)
    assert set(rpc.replies) == set(sent)
    rpc.conn.close()


def test_worker_and_client_reconnect_after_the_connection_is_cut(start_worker, amqp_url, prefix, ravdess_dir):
    proc = start_worker()
    with Client(amqp_url, prefix) as client:
        before = client.classify(ravdess_clip(6, 2), timeout=60)
        assert close_broker_connections(f"serq-worker {prefix} ") == 1
        assert close_broker_connections(f"serq-client {prefix}") == 1
        after = client.classify(ravdess_clip(6, 3), timeout=60)  # the client reconnects and re-sends
    assert before.worker == after.worker == "worker0"
    log = proc.log_path.read_text()
    assert "connection lost" in log and log.count("consuming") == 2, log[-2000:]
