"""Hostile input through the real broker: every malformed request gets a typed answer, the services stay up.

The classify corpus (``payloads.corpus``, 70+ requests) goes to one worker twice; every
reply must carry an allowed outcome, never ``internal``; the worker keeps its PID, answers
a valid clip afterwards, and its resident memory stays bounded (the second pass must
not grow it). Malformed training requests go to a real trainer the same way.
"""

from __future__ import annotations

import json
import time

import pika
import pytest

from serq.schemas import TrainResult
from serq.schemas.contract import type_name

from .conftest import assert_typed, record, rss_kib
from .payloads import TYPED, corpus, encode, tone
from helpers.broker import Rpc, Tap

pytestmark = [pytest.mark.broker, pytest.mark.slow]

MAX_BYTES = 8_000_000  # above the FLAC bomb's size, so the decoded-size limit is what refuses it
#: Resident memory a worker may gain over a whole pass of the corpus (decoding buffers, lazy imports), KiB.
RSS_FIRST_PASS_KIB = 300 * 1024
#: ... and over a second pass of the same corpus: a leak would show here.
RSS_SECOND_PASS_KIB = 60 * 1024


def send_all(rpc: Rpc, queue: str, cases, tag: str, timeout: float = 300) -> dict[str, dict]:
    """Publish every case (pipelined), then wait for each reply; ``{case name: reply JSON}``."""
    cids = {}
    for i, case in enumerate(cases):
        cid = f"{tag}-{i}"
        cids[cid] = case.name
        rpc.ch.basic_publish("", queue, case.body, pika.BasicProperties(
            correlation_id=cid, reply_to="amq.rabbitmq.reply-to", **case.props))
    deadline = time.monotonic() + timeout
    while not set(cids) <= set(rpc.replies) and time.monotonic() < deadline:
        rpc.conn.process_data_events(time_limit=0.2)
    return {name: rpc.replies.pop(cid, (None, None))[1] for cid, name in cids.items()}


def outcome(reply: dict | None) -> str:
    if reply is None:
        return "lost"
    return reply["error"]["code"] if "error" in reply else "result"


def test_hostile_classify_requests_get_typed_answers_and_the_worker_stays_up(start_worker, amqp_url, prefix):
    proc = start_worker({"SERQ_MAX_BYTES": str(MAX_BYTES)})
    queue = f"{prefix}.classify"
    rpc = Rpc(amqp_url, queue)
    good = encode(tone(1.0), 16_000)
    _, first = rpc.call(good, content_type="audio/wav")
    assert "label" in first
    cases = corpus(MAX_BYTES)
    assert len(cases) >= 50 and len({c.name for c in cases}) == len(cases)

    rss = [rss_kib(proc.pid)]
    passes = []
    for n in range(2):
        passes.append(send_all(rpc, queue, cases, f"pass{n}"))
        rss.append(rss_kib(proc.pid))

    # No reply_to: nobody to answer, so it is acked (not requeued) and shows on the results exchange.
    follow = rpc.ch.queue_declare("", exclusive=True).method.queue
    rpc.ch.queue_bind(follow, f"{prefix}.results", "error.#")
    rpc.ch.basic_publish("", queue, good, pika.BasicProperties(correlation_id="no-reply-to", content_type="audio/wav"))
    seen = None
    deadline = time.monotonic() + 60
    while seen is None and time.monotonic() < deadline:
        method, _, body = rpc.ch.basic_get(follow, auto_ack=True)
        if method and json.loads(body).get("request_id") == "no-reply-to":
            seen = method.routing_key
        elif not method:
            time.sleep(0.1)

    _, last = rpc.call(good, content_type="audio/wav")  # still serving
    outcomes = [outcome(r) for replies in passes for r in replies.values()] + ([seen.split(".", 1)[1]] if seen else [])
    row = record("hostile classify requests (corpus x 2 + no reply_to)", 2 * len(cases) + 1, outcomes,
                 "pytest tests/reliability/test_hostile_input.py -k classify",
                 rss_growth_mib=f"{(rss[1] - rss[0]) / 1024:.0f} then {(rss[2] - rss[1]) / 1024:.0f}")
    rpc.conn.close()

    wrong = []
    for replies in passes:
        for case in cases:
            reply, got = replies[case.name], outcome(replies[case.name])
            if got == "lost" or got == "internal" or (case.expect != TYPED and got not in case.expect):
                wrong.append((case.name, got, sorted(case.expect), reply))
            elif case.words and case.words not in reply["error"]["message"]:
                wrong.append((case.name, got, case.words, reply["error"]["message"]))
            elif got != "result":
                assert_typed(got)
    assert not wrong, "\n".join(map(str, wrong))
    assert seen == "error.invalid_request", "the request without reply_to was not answered on the results exchange"
    assert row["lost"] == 0
    assert proc.poll() is None and last["worker"] == "worker0" and "label" in last
    assert rss[1] - rss[0] < RSS_FIRST_PASS_KIB, f"RSS grew {rss[1] - rss[0]} KiB over the corpus"
    assert rss[2] - rss[1] < RSS_SECOND_PASS_KIB, f"RSS grew {rss[2] - rss[1]} KiB over the same corpus again"
    assert rpc_queue_empty(amqp_url, queue)


def rpc_queue_empty(url: str, queue: str) -> bool:
    """Nothing left behind: every hostile request was acked, none requeued."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count == 0
    finally:
        conn.close()


def training_cases(outside: str) -> dict[str, tuple[bytes, str]]:
    """Malformed training requests and the code each must get (dataset paths relative to the data root)."""
    def job(dataset, **fields) -> bytes:
        return json.dumps({"dataset": dataset, "folds": 2, "activate": "never"} | fields).encode()

    return {
        "not JSON": (b"{oops", "invalid_request"),
        "empty body": (b"", "invalid_request"),
        "JSON null": (b"null", "invalid_request"),
        "nested 100 000 deep": (b"[" * 100_000, "invalid_request"),
        "a 1 MB emotion string": (job("d", emotions="a" * 1_000_000), "invalid_request"),
        "job_id with a path": (job("d", job_id="../../etc"), "invalid_request"),
        "folds 1e308": (job("d", folds=1e308), "invalid_request"),
        "unknown field": (job("d", pickle="cos\nsystem\n"), "invalid_request"),
        "dataset ../": (job(f"../{outside}"), "dataset_error"),
        "dataset absolute": (job("/etc"), "dataset_error"),
        "dataset ~": (job("~"), "dataset_error"),
        "dataset ~nosuchuser": (job("~nosuchuser/x"), "dataset_error"),
        "dataset through a symlink": (job("escape"), "dataset_error"),
        "dataset root itself, holding the symlink": (job("."), "dataset_error"),
        "dataset with a NUL byte": (job("a\0b"), "dataset_error"),
        "dataset name of 5000 chars": (job("x" * 5000), "dataset_error"),
        "dataset path 3000 levels deep": (job("a/" * 3000), "dataset_error"),
    }


def test_hostile_training_requests_get_typed_failures_and_the_trainer_stays_up(
        amqp_url, prefix, start_trainer, tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    root.mkdir()
    (outside / "Actor_01").mkdir(parents=True)
    clip = outside / "Actor_01" / "03-01-05-01-01-01-01.wav"
    clip.write_bytes(encode(tone(1.0), 16_000))
    (root / "escape").symlink_to(outside, target_is_directory=True)
    proc = start_trainer(env={"SERQ_DATA_ROOTS": str(root)})
    tap = Tap(amqp_url, prefix)
    cases = training_cases(outside.name)
    cids = {f"hostile-{i}": name for i, name in enumerate(cases)}
    for cid, name in cids.items():
        tap.send(cases[name][0], correlation_id=cid)
    got: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(got) < len(cases) and time.monotonic() < deadline and proc.poll() is None:
        tap.pump(0.2)
        for _, props, body in tap.got["reply"]:
            if props.type == type_name(TrainResult) and props.correlation_id in cids:
                error = json.loads(body).get("error")
                got[cids[props.correlation_id]] = error["code"] if error else "result"
    alive = proc.poll() is None
    tap.close()
    record("hostile training requests", len(cases), list(got.values()) + ["timeout"] * (len(cases) - len(got)),
           "pytest tests/reliability/test_hostile_input.py -k training")
    assert alive, "the trainer died:\n" + proc.log_path.read_text()[-3000:]
    wrong = {name: (got.get(name, "lost"), code) for name, (_, code) in cases.items() if got.get(name) != code}
    assert not wrong, wrong
    assert proc.log_path.read_text().count("job_crashed") == 0
    assert not (tmp_path / "models" / "versions").exists()  # nothing trained, nothing registered
