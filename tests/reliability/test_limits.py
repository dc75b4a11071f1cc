"""Limits per clip and per worker, configurable, enforced before the expensive work.

- bytes (SERQ_MAX_BYTES): checked on the body before any handler or decoder runs;
- seconds (SERQ_MAX_SECONDS): judged from the header before samples are read;
- requests in flight per worker (SERQ_PREFETCH): the broker never hands a worker more.
Each is shown to be the check that refused, by a request that would pass every later step.
"""

from __future__ import annotations

import threading
import time
import urllib.request

import pika
import pytest

from .conftest import health, record
from .payloads import encode, ten_minute_flac, tone, with_total_samples
from helpers.broker import Rpc, free_port

pytestmark = pytest.mark.broker

MAX_BYTES = 100_000
MAX_SECONDS = 2.0


def test_clip_limits_refuse_before_decoding(start_worker, amqp_url, prefix):
    start_worker({"SERQ_MAX_BYTES": str(MAX_BYTES), "SERQ_MAX_SECONDS": str(MAX_SECONDS)})
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    audio = {"content_type": "audio/wav"}
    ok = encode(tone(1.0), 16_000)  # 32 KB, 1 s: passes every limit
    cases = {
        # Valid audio one byte over the limit: decoding would give a result, so the size check answered.
        "valid WAV over SERQ_MAX_BYTES": (encode(tone(1.0), 16_000) + b"\0" * (MAX_BYTES - len(ok) + 1), {},
                                          "too_large", "SERQ_MAX_BYTES"),
        # Garbage over the limit: a decoder would say unsupported_format.
        "garbage over SERQ_MAX_BYTES": (b"\x01" * (MAX_BYTES + 1), {}, "too_large", "SERQ_MAX_BYTES"),
        # Every request type gets the same check, before its handler.
        "enroll over SERQ_MAX_BYTES": (b"\x01" * (MAX_BYTES + 1), {"type": "enroll"}, "too_large", "SERQ_MAX_BYTES"),
        "timeline.chunk over SERQ_MAX_BYTES": (b"\x01" * (MAX_BYTES + 1), {"type": "timeline.chunk"}, "too_large",
                                               "SERQ_MAX_BYTES"),
        # A FLAC header that declares 120 s before 1 s of samples: reading would find 1 s, so the header answered.
    # (WAV cannot lie like this: libsndfile trusts the file's size over its data length.)
        "header declares 120 s": (with_total_samples(encode(tone(1.0), 16_000, "FLAC"), 120 * 16_000), {},
                                  "too_long", "120.0 s exceeds the limit of 2 s"),
        "3 s of real audio": (encode(tone(3.0, 8_000), 8_000), {}, "too_long", "SERQ_MAX_SECONDS"),
    }
    codes = []
    for name, (body, props, code, words) in cases.items():
        _, reply = rpc.call(body, **(audio | props))
        got = reply.get("error", {}).get("code", "result")
        codes.append(got)
        assert got == code and words in reply["error"]["message"], (name, reply)
    _, fine = rpc.call(ok, **audio)
    assert "label" in fine
    record("clip limits (bytes, seconds) on hostile sizes", len(cases) + 1, codes + ["result"],
           "pytest tests/reliability/test_limits.py")
    rpc.conn.close()


def in_flight(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("serq_in_flight ")))


def queue_and_sample(amqp_url: str, prefix: str, clip: bytes, n: int, probe) -> tuple[dict, list]:
    """Queue ``n`` copies of a WAV ``clip`` at once; return the replies and what ``probe()`` said every 20 ms
    until all were answered (or 180 s passed)."""
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    for i in range(n):
        rpc.ch.basic_publish("", f"{prefix}.classify", clip, pika.BasicProperties(
            correlation_id=f"r{i}", reply_to="amq.rabbitmq.reply-to", content_type="audio/wav"))
    samples: list = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(probe())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    deadline = time.monotonic() + 180
    try:
        while len(rpc.replies) < n and time.monotonic() < deadline:
            rpc.conn.process_data_events(time_limit=0.1)
    finally:
        stop.set()
        sampler.join()
    rpc.conn.close()
    return rpc.replies, samples


def test_requests_in_flight_per_worker_never_exceed_the_prefetch(start_worker, amqp_url, prefix):
    port, prefetch, n = free_port(), 2, 12
    start_worker({"SERQ_PREFETCH": str(prefetch), "SERQ_METRICS_PORT": str(port)})
    clip = encode(tone(5.0), 16_000)  # a few hundred ms of work each: the queue builds up
    replies, samples = queue_and_sample(amqp_url, prefix, clip, n, lambda: in_flight(port))
    record(f"{n} requests queued at once, SERQ_PREFETCH={prefetch}", n, ["result"] * len(replies)
           + ["timeout"] * (n - len(replies)), "pytest tests/reliability/test_limits.py",
           max_in_flight_seen=int(max(samples)))
    assert len(replies) == n
    assert max(samples) <= prefetch, max(samples)
    assert max(samples) == prefetch  # the limit was reached, so it is what held the other requests back


def health_status(port: int) -> tuple[int, str]:
    code, body = health(port)
    return code, body["status"]


def test_a_request_past_the_time_limit_is_interrupted_answered_and_shown_by_healthz(start_worker, amqp_url, prefix):
    """SERQ_TIME_LIMIT_S on a real worker (issue 13.3): a compute that runs past it is interrupted and answered
    ``time_limit`` (counted in serq_time_limit_exceeded_total), /healthz says ``stuck`` (503) while a request is in
    flight past the limit and ``ok`` again afterwards, and the worker lives on."""
    port, n = free_port(), 3
    # A 15-minute WAV (allowed by a raised SERQ_MAX_SECONDS): decoded in a fraction of a second, then seconds of
    # feature work, past the 0.75 s limit on any machine; the watchdog looks every 0.25 s, so it fires during the
    # features. (A FLAC, decoded through soundfile's cffi callbacks, is the next test's case.)
    proc = start_worker({"SERQ_TIME_LIMIT_S": "0.75", "SERQ_MAX_SECONDS": "1000", "SERQ_PREFETCH": str(n),
                         "SERQ_METRICS_PORT": str(port)})
    assert health(port)[0] == 200
    clip = encode(tone(900.0), 16_000)
    replies, seen = queue_and_sample(amqp_url, prefix, clip, n, lambda: health_status(port))
    codes = [reply.get("error", {}).get("code", "result") for _, reply in replies.values()]
    record(f"{n} requests past SERQ_TIME_LIMIT_S=0.75 (15-minute clips)", n, codes + ["timeout"] * (n - len(codes)),
           "pytest tests/reliability/test_limits.py -k time_limit", healthz_stuck_seen=(503, "stuck") in seen)
    assert codes == ["time_limit"] * n, codes
    assert (503, "stuck") in seen, sorted(set(seen))
    after = health(port)
    assert after[0] == 200 and after[1]["status"] == "ok", after
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f"serq_time_limit_exceeded_total {float(n)}" in text
    assert proc.poll() is None


def test_a_request_past_the_time_limit_while_decoding_a_flac_is_interrupted(start_worker, amqp_url, prefix):
    """The time limit holds while soundfile decodes: it decodes bytes through cffi callbacks into Python, and an
    interruption landing in one is swallowed ("Exception ignored from cffi callback"). The watchdog used to fire
    once, so such a request ran to its end and came back as a normal result (a 10-minute FLAC under
    SERQ_TIME_LIMIT_S=0.05: a result after 4.9 s). Now it fires at every poll while a request is past its
    deadline, and a request it fired at is answered ``time_limit`` whatever swallowed the interruption."""
    port, n = free_port(), 3
    proc = start_worker({"SERQ_TIME_LIMIT_S": "0.05", "SERQ_MAX_SECONDS": "1000", "SERQ_PREFETCH": "1",
                         "SERQ_METRICS_PORT": str(port)})
    # 620 kB that take about 0.75 s to decode (48 kHz stereo): the watchdog polls every 0.25 s, so its first fire
    # (0.05 to 0.3 s in) lands during the decode, inside soundfile's callbacks
    clip = ten_minute_flac(rate=48_000, channels=2)
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    codes, took = [], []
    for i in range(n):
        started = time.monotonic()
        _, reply = rpc.call(clip, content_type="audio/flac", timeout=120)
        took.append(time.monotonic() - started)
        codes.append(reply.get("error", {}).get("code", "result"))
    rpc.conn.close()
    swallowed = proc.log_path.read_text().count("Exception ignored from cffi callback")
    record(f"{n} ten-minute FLACs past SERQ_TIME_LIMIT_S=0.05 (interrupted while decoding)", n, codes,
           "pytest tests/reliability/test_limits.py -k flac", seconds=[round(t, 1) for t in took],
           swallowed_in_cffi=swallowed)
    assert codes == ["time_limit"] * n, (codes, took)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f"serq_time_limit_exceeded_total {float(n)}" in text
    assert health(port)[0] == 200 and proc.poll() is None
