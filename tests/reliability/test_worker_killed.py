"""A worker killed with SIGKILL mid-stream: the broker redelivers what it held, nothing is lost."""

from __future__ import annotations

import re
from collections import Counter

import pika
import pytest

from serq.client import Client

from .conftest import record

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REQUESTS = 200
PREFETCH = 8


def test_kill_9_one_of_two_workers_mid_stream_loses_nothing(start_worker, amqp_url, prefix, short_clips):
    victim = start_worker({"SERQ_PREFETCH": str(PREFETCH)})
    survivor = start_worker({"SERQ_PREFETCH": str(PREFETCH)})
    items = [short_clips[i % len(short_clips)] for i in range(REQUESTS)]
    outcomes, killed_after, waiting = [], None, None
    probe = pika.BlockingConnection(pika.URLParameters(amqp_url)).channel()
    with Client(amqp_url, prefix) as client:
        for _, outcome in client.classify_many(items, max_in_flight=40, timeout=180):
            outcomes.append(outcome)
            if killed_after is None and sum(getattr(o, "worker", "") == "worker0" for o in outcomes) >= 10:
                # Ready messages behind both prefetch windows: the victim holds a full window unacked.
                waiting = probe.queue_declare(f"{prefix}.classify", passive=True).method.message_count
                victim.kill()  # SIGKILL: no drain, its unacked deliveries go back to the queue
                victim.wait()
                killed_after = len(outcomes)

    probe.connection.close()
    sent_by = {name: len(re.findall(r"\breply\b.*reply=ok", p.log_path.read_text()))
               for name, p in (("worker0", victim), ("worker1", survivor))}
    duplicates = sum(sent_by.values()) - REQUESTS  # answered by the victim, not acked before it died
    row = record("worker killed (kill -9 one of 2 workers mid-stream)", REQUESTS, outcomes,
                 "pytest tests/reliability/test_worker_killed.py", killed_after_replies=killed_after, waiting_at_kill=waiting,
                 duplicate_replies_dropped=max(duplicates, 0))
    assert victim.returncode == -9 and killed_after is not None and killed_after < REQUESTS - 40
    assert waiting and waiting > 0, "no backlog when the victim died: it may have held nothing"
    assert survivor.poll() is None, "the survivor died too"
    assert row["lost"] == 0 and not row["errors"], row
    assert len(outcomes) == REQUESTS and len({o.request_id for o in outcomes}) == REQUESTS  # one reply each
    by_worker = Counter(o.worker for o in outcomes)
    assert by_worker["worker0"] >= 10 and by_worker["worker1"] > REQUESTS / 2, by_worker
    # Only the victim's unacked deliveries come back, so at most a prefetch window is answered twice.
    assert 0 <= duplicates <= PREFETCH, sent_by
