"""A worker killed with SIGKILL mid-stream: the broker redelivers what it held, nothing is lost.

Deterministic on a loaded machine: the victim is frozen (SIGSTOP) before it is killed, and
killed only once the broker says it holds unacked deliveries; if it holds none at that
moment (it had just acked its window), it is thawed and the stream goes on until it does.
No sleep decides whether there was something to lose.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter

import pytest

from serq.client import Client

from .conftest import record

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REQUESTS = 200


def _unacked_of(connection_name: str) -> int | None:
    """Deliveries the broker has outstanding on the channels of the connection called ``connection_name``
    (rabbitmqctl); ``None`` if it cannot say."""
    conns = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                           capture_output=True, text=True, timeout=120)
    pids = [line.split("\t")[0] for line in conns.stdout.splitlines() if f'"{connection_name}"' in line]
    if conns.returncode or len(pids) != 1:
        return None
    chans = subprocess.run(["rabbitmqctl", "-q", "list_channels", "connection", "messages_unacknowledged"],
                           capture_output=True, text=True, timeout=120)
    if chans.returncode:
        return None
    return sum(int(line.split("\t")[1]) for line in chans.stdout.splitlines() if line.split("\t")[0] == pids[0])


def test_kill_9_one_of_two_workers_mid_stream_loses_nothing(start_worker, amqp_url, prefix, short_clips):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is needed to see what the victim holds when it dies")
    victim = start_worker({"SERQ_PREFETCH": "8"})
    survivor = start_worker({"SERQ_PREFETCH": "8"})
    victim_connection = f"serq-worker {prefix} worker0"
    items = [short_clips[i % len(short_clips)] for i in range(REQUESTS)]
    outcomes, killed_after, held, attempts = [], None, None, 0
    with Client(amqp_url, prefix) as client:
        for _, outcome in client.classify_many(items, max_in_flight=40, timeout=180):
            outcomes.append(outcome)
            if killed_after is None and sum(getattr(o, "worker", "") == "worker0" for o in outcomes) >= 10 \
                    and len(outcomes) < REQUESTS - 40:
                attempts += 1
                victim.send_signal(signal.SIGSTOP)  # frozen: it can neither ack nor answer from now on
                held = _unacked_of(victim_connection)
                if held is None:
                    victim.send_signal(signal.SIGCONT)
                    pytest.skip("rabbitmqctl cannot list the victim's channels here")
                if held > 0:
                    victim.kill()  # SIGKILL: no drain, its unacked deliveries go back to the queue
                    victim.wait()
                    killed_after = len(outcomes)
                else:
                    victim.send_signal(signal.SIGCONT)  # nothing to lose right now: let the stream go on
        duplicates = client.duplicates_dropped  # answered by the victim, not acked before it died
    row = record("worker killed (kill -9 one of 2 workers mid-stream)", REQUESTS, outcomes,
                 "pytest tests/reliability/test_worker_killed.py", killed_after_replies=killed_after,
                 held_unacked_at_kill=held, duplicate_replies_dropped=duplicates)
    assert killed_after is not None, f"the victim never held a delivery in {attempts} looks"
    assert victim.returncode == -9 and held > 0
    assert survivor.poll() is None, "the survivor died too"
    assert row["lost"] == 0 and not row["errors"], row
    assert len(outcomes) == REQUESTS and len({o.request_id for o in outcomes}) == REQUESTS  # one reply each
    by_worker = Counter(o.worker for o in outcomes)
    assert by_worker["worker0"] >= 10 and by_worker["worker1"] > REQUESTS / 2, by_worker
    # A reply sent twice can only be one the victim published and had not acked: one of those it held.
    assert duplicates <= held, (duplicates, held)
