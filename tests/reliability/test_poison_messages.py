"""Messages that used to kill, freeze or starve a worker (issue 13.2/13.3), against a real worker.

Each poison message is sent between innocent requests, several times over, to a worker
with a prefetch window of 4, so that innocent requests share its window:

- a ``correlation_id`` or ``message_id`` that is not UTF-8 (the reply failed to serialise on the
  I/O thread and the process exited; four of them left ``serq_in_flight`` stuck at 4);
- a ``reply_to`` that is not UTF-8 (no reply can be addressed);
- an AMQP header table nested 600 deep (6 kB): pika's decoder raised ``RecursionError`` and
  dropped the connection at each delivery, with the innocent requests of the same window.

Every innocent request must be answered, every poison message answered ``invalid_request``
or dead-lettered to ``<p>.dead``, and the worker keep its PID. A queue deleted under the
worker (as docs/contract.md tells operators to do) must be declared and consumed again.
"""

from __future__ import annotations

import json
import sys
import time

import pika
import pytest

from helpers.broker import consumer_count, free_port

from .conftest import health, record
from .payloads import encode, tone

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REPLY_TO = "amq.rabbitmq.reply-to"
INNOCENT = 40
ROUNDS = 4  # each poison kind is sent this many times (a prefetch-4 window's worth)


def nested_headers(depth: int) -> dict:
    table: dict = {"x": 1}
    for _ in range(depth):
        table = {"a": table}
    return table


class Caller:
    """Raw pika, as a hostile client would use it: direct reply-to, replies kept by correlation id."""

    def __init__(self, url: str, queue: str):
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.ch = self.conn.channel()
        self.queue = queue
        self.replies: list[tuple[pika.BasicProperties, dict]] = []
        self.ch.basic_consume(REPLY_TO, lambda ch, m, p, b: self.replies.append((p, json.loads(b))), auto_ack=True)

    def send(self, body: bytes, **props) -> None:
        self.ch.basic_publish("", self.queue, body, pika.BasicProperties(**props))

    def pump_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.2)

    def close(self) -> None:
        self.conn.close()


def drain(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Every message now in ``queue`` (consumed, acked), decoded with the stack room the nested headers need."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
        ch = conn.channel()
        out = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            out.append((props, body))
        conn.close()
        return out
    finally:
        sys.setrecursionlimit(limit)


def test_poison_messages_cost_no_innocent_request(start_worker, amqp_url, prefix):
    proc = start_worker({"SERQ_PREFETCH": "4"})
    queue = f"{prefix}.classify"
    caller = Caller(amqp_url, queue)
    clip = encode(tone(1.0), 16_000)
    sent = {"innocent": 0, "bad correlation_id": 0, "bad message_id": 0, "bad reply_to": 0, "nested headers": 0}
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pika's encoder recurses too: the attacker's client needs the room
    try:
        for i in range(INNOCENT):
            caller.send(clip, reply_to=REPLY_TO, correlation_id=f"good-{i}", content_type="audio/wav")
            sent["innocent"] += 1
            if i % 10 == 0 and sent["nested headers"] < ROUNDS:
                k = sent["nested headers"]
                caller.send(clip, reply_to=REPLY_TO, correlation_id=b"\xff\xfe-" + str(k).encode(),
                            message_id=f"poison-cid-{k}")
                caller.send(clip, reply_to=REPLY_TO, correlation_id=f"poison-mid-{k}", message_id=b"\xc3\x28")
                caller.send(clip, reply_to=b"\xff" + str(k).encode(), correlation_id=f"poison-rt-{k}")
                caller.send(clip, reply_to=REPLY_TO, correlation_id=f"poison-deep-{k}", headers=nested_headers(600))
                for kind in ("bad correlation_id", "bad message_id", "bad reply_to", "nested headers"):
                    sent[kind] += 1
    finally:
        sys.setrecursionlimit(limit)

    def by_request_id():
        return {body.get("request_id"): (props, body) for props, body in caller.replies}

    caller.pump_until(lambda: sum(1 for p, b in caller.replies) >= INNOCENT + 2 * ROUNDS, timeout=240)
    replies = by_request_id()
    innocent = [replies.get(f"good-{i}") for i in range(INNOCENT)]
    bad_cid = [replies.get(f"poison-cid-{k}") for k in range(ROUNDS)]
    bad_mid = [replies.get(f"poison-mid-{k}") for k in range(ROUNDS)]

    # The unaddressable ones end in <p>.dead: wait until all of them are there (never sleep for it).
    dead: list = []
    deadline = time.monotonic() + 60
    while len(dead) < 2 * ROUNDS and time.monotonic() < deadline:
        dead += drain(amqp_url, f"{prefix}.dead")
        if len(dead) < 2 * ROUNDS:
            caller.conn.process_data_events(time_limit=0.2)
    dead_ids = sorted(repr(p.correlation_id) for p, _ in dead)
    caller.send(clip, reply_to=REPLY_TO, correlation_id="after", content_type="audio/wav")  # still serving
    caller.pump_until(lambda: "after" in by_request_id(), timeout=60)
    alive = proc.poll() is None
    caller.close()

    log = proc.log_path.read_text()
    outcomes = [("result" if r and "label" in r[1] else "lost") for r in innocent]
    outcomes += [(r[1]["error"]["code"] if r and "error" in r[1] else "lost") for r in bad_cid + bad_mid]
    outcomes += ["dead_lettered"] * len(dead)
    requests = sum(sent.values())
    row = record("poison properties (non-UTF-8 correlation_id/message_id/reply_to, headers nested 600 deep) "
                 f"among {INNOCENT} innocent requests, prefetch 4", requests,
                 outcomes + ["timeout"] * (requests - len(outcomes)),
                 "pytest tests/reliability/test_poison_messages.py -k poison",
                 innocent_answered=sum(o == "result" for o in outcomes[:INNOCENT]),
                 dead_lettered=len(dead), worker_restarts=0 if alive else 1,
                 reconnects=log.count("connection lost"))
    assert alive, "the worker died:\n" + log[-3000:]
    assert all(r is not None and "label" in r[1] for r in innocent), [i for i, r in enumerate(innocent) if r is None]
    for r in bad_cid + bad_mid:
        assert r is not None and r[1]["error"]["code"] == "invalid_request", r
        assert "not UTF-8" in r[1]["error"]["message"]
    assert all(r[0].correlation_id is None for r in bad_cid)  # the broken id is not echoed
    assert all(r[0].correlation_id == f"poison-mid-{k}" for k, r in enumerate(bad_mid))
    assert len(dead) == 2 * ROUNDS, dead_ids
    assert sum((p.correlation_id or "").startswith("poison-deep-") for p, _ in dead) == ROUNDS, dead_ids
    assert sum((p.correlation_id or "").startswith("poison-rt-") for p, _ in dead) == ROUNDS, dead_ids
    assert "connection lost" not in log, "a poison message dropped the worker's connection"
    assert "after" in by_request_id()
    assert row["lost"] == 0, row


def test_a_deleted_queue_is_declared_again_and_consumed(start_worker, amqp_url, prefix):
    port = free_port()
    proc = start_worker({"SERQ_METRICS_PORT": str(port)})
    queue = f"{prefix}.classify"
    assert health(port)[0] == 200
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    conn.channel().queue_delete(queue)
    conn.close()
    deadline = time.monotonic() + 60
    while consumer_count(amqp_url, queue) < 1:  # the worker declares it again and consumes
        assert time.monotonic() < deadline and proc.poll() is None, proc.log_path.read_text()[-3000:]
        time.sleep(0.1)
    caller = Caller(amqp_url, queue)
    clip = encode(tone(1.0), 16_000)
    for i in range(10):
        caller.send(clip, reply_to=REPLY_TO, correlation_id=f"after-delete-{i}", content_type="audio/wav")
    caller.pump_until(lambda: len(caller.replies) >= 10, timeout=120)
    caller.close()
    answered = [b for _, b in caller.replies if "label" in b]
    record("classify queue deleted under a worker", 10, ["result"] * len(answered) + ["timeout"] * (10 - len(answered)),
           "pytest tests/reliability/test_poison_messages.py -k deleted")
    assert len(answered) == 10
    assert proc.poll() is None
    assert health(port)[0] == 200
    assert "consumer_cancelled" in proc.log_path.read_text()


def test_followers_see_classify_results_only_without_file_names(start_worker, amqp_url, prefix):
    start_worker()
    queue = f"{prefix}.classify"
    caller = Caller(amqp_url, queue)
    follow = caller.ch.queue_declare("", exclusive=True).method.queue
    caller.ch.queue_bind(follow, f"{prefix}.results", "#")
    clip = encode(tone(1.0), 16_000)
    caller.send(clip, reply_to=REPLY_TO, correlation_id="named", content_type="audio/wav",
                headers={"filename": "call-jane-doe-ward-7.wav"})
    caller.send(clip, reply_to=REPLY_TO, correlation_id="private", content_type="audio/wav",
                headers={"x-serq-private": True})
    caller.send(b"garbage", reply_to=REPLY_TO, correlation_id="enroll-error", type="enroll")
    caller.send(b"garbage", reply_to=REPLY_TO, correlation_id="chunk-error", type="timeline.chunk",
                headers={"x-serq-stream": "call-jane-doe-ward-7"})
    caller.send(b"garbage", reply_to=REPLY_TO, correlation_id="classify-error", content_type="audio/wav")
    caller.send(clip, reply_to=REPLY_TO, correlation_id="marker", content_type="audio/wav")
    caller.pump_until(lambda: len(caller.replies) >= 6, timeout=120)
    # One worker, one compute thread, one side channel: the marker's copy comes last.
    seen: dict[str, tuple[str, dict]] = {}
    deadline = time.monotonic() + 60
    while "marker" not in seen and time.monotonic() < deadline:
        method, props, body = caller.ch.basic_get(follow, auto_ack=True)
        if method is None:
            caller.conn.process_data_events(time_limit=0.1)
            continue
        seen[props.correlation_id] = (method.routing_key, json.loads(body))
    direct = {b["request_id"]: b for _, b in caller.replies}
    caller.close()
    assert direct["named"]["file"] == "call-jane-doe-ward-7.wav"  # the caller gets its file name back
    assert set(seen) == {"named", "classify-error", "marker"}, sorted(seen)
    assert "file" not in seen["named"][1] and "label" in seen["named"][1]
    assert seen["classify-error"][0].startswith("error.")
    assert "jane" not in json.dumps(seen)
    record("followers on <p>.results: a named, a private, an enrolment error, a chunk error, a classify error, "
           "a marker", 6, [b.get("error", {}).get("code", "result") for b in direct.values()], "pytest tests/reliability/test_poison_messages.py -k followers",
           copies_to_followers=len(seen), file_names_leaked=sum("file" in b for _, b in seen.values()))


def test_undecodable_header_frames_cost_no_innocent_request(start_worker, amqp_url, prefix):
    """Only the frame pika cannot decode, 8 of them in a stream of 80 at prefetch 8: how many innocents die."""
    proc = start_worker({"SERQ_PREFETCH": "8", "SERQ_DELIVERY_LIMIT": "3"})
    caller = Caller(amqp_url, f"{prefix}.classify")
    clip = encode(tone(1.0), 16_000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        for i in range(80):
            caller.send(clip, reply_to=REPLY_TO, correlation_id=f"good-{i}", content_type="audio/wav")
            if i % 10 == 5:
                caller.send(clip, reply_to=REPLY_TO, correlation_id=f"deep-{i}", headers=nested_headers(600))
    finally:
        sys.setrecursionlimit(limit)
    good = lambda: {p.correlation_id for p, b in caller.replies if "label" in b}  # noqa: E731
    # Wait until every innocent is answered or has been dead-lettered (the two ways a request ends).
    dead: list = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        caller.pump_until(lambda: len(good()) >= 80, timeout=2)
        dead += drain(amqp_url, f"{prefix}.dead")
        ended = good() | {p.correlation_id for p, _ in dead}
        if len(ended) >= 88 or (proc.poll() is not None and len(good()) + len(dead) >= 88):
            break
    answered = good()
    caller.close()
    innocent_dead = sorted(p.correlation_id for p, _ in dead if (p.correlation_id or "").startswith("good-"))
    log = proc.log_path.read_text()
    record("8 header tables nested 600 deep among 80 innocent requests, prefetch 8, delivery limit 3", 88,
           ["result"] * len(answered) + ["dead_lettered"] * (len(dead) - len(innocent_dead))
           + ["timeout"] * (88 - len(answered) - (len(dead) - len(innocent_dead))),
           "pytest tests/reliability/test_poison_messages.py -k undecodable",
           innocent_lost=80 - len(answered), innocent_dead_lettered=len(innocent_dead),
           connection_drops=log.count("connection lost"))
    assert proc.poll() is None
    assert len(answered) == 80, f"{80 - len(answered)} innocent requests lost; dead-lettered: {innocent_dead}"
    assert "connection lost" not in log


def test_the_trainer_answers_or_dead_letters_poison_properties_and_stays_up(start_trainer, amqp_url, prefix,
                                                                          tmp_path):
    """The trainer runs on the same consumer loop: broken ids get a typed failure, the rest is dead-lettered."""
    (tmp_path / "data").mkdir()
    proc = start_trainer(env={"SERQ_DATA_ROOTS": str(tmp_path / "data")})
    caller = Caller(amqp_url, f"{prefix}.train")
    bad_job = json.dumps({"dataset": "none", "folds": 0}).encode()  # refused before any file is read
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        caller.send(bad_job, reply_to=REPLY_TO, correlation_id=b"\xff\xfe", message_id="trainer-cid")
        caller.send(bad_job, reply_to=REPLY_TO, correlation_id="trainer-mid", message_id=b"\xc3\x28")
        caller.send(bad_job, reply_to=b"\xff", correlation_id="trainer-rt")
        caller.send(bad_job, reply_to=REPLY_TO, correlation_id="trainer-deep", headers=nested_headers(600))
        caller.send(bad_job, reply_to=REPLY_TO, correlation_id="trainer-after")
    finally:
        sys.setrecursionlimit(limit)
    caller.pump_until(lambda: len(caller.replies) >= 3, timeout=120)
    results = {p.correlation_id: b for p, b in caller.replies}
    caller.close()
    dead: list = []
    deadline = time.monotonic() + 60
    while len(dead) < 2 and time.monotonic() < deadline:
        dead += drain(amqp_url, f"{prefix}.dead")
    record("poison properties sent to a trainer (non-UTF-8 ids and reply_to, headers nested 600 deep)", 5,
           [r["error"]["code"] for r in results.values()] + ["dead_lettered"] * len(dead)
           + ["timeout"] * (5 - len(results) - len(dead)),
           "pytest tests/reliability/test_poison_messages.py -k trainer")
    assert proc.poll() is None, proc.log_path.read_text()[-3000:]
    # The job id falls back to the message_id when the correlation_id is broken (job_id_of).
    assert sorted(results) == ["trainer-after", "trainer-cid", "trainer-mid"], results
    for name in ("trainer-cid", "trainer-mid"):
        assert results[name]["error"]["code"] == "invalid_request" and "not UTF-8" in results[name]["error"]["message"]
    assert not results["trainer-after"]["ok"] and "UTF-8" not in results["trainer-after"]["error"]["message"]
    assert sorted(repr(p.correlation_id) for p, _ in dead) == ["'trainer-deep'", "'trainer-rt'"]
    assert "broker_lost" not in proc.log_path.read_text()
