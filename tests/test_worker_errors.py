"""Every error code a worker replies with, checked against a real worker subprocess; metrics and health."""

from __future__ import annotations

import io
import json
import time
import urllib.request

import numpy as np
import pika
import pytest
import soundfile as sf

from helpers.broker import Rpc, free_port

pytestmark = pytest.mark.broker

MAX_BYTES = 300_000
MAX_SECONDS = 2.5


def wav(seconds: float, rate: int = 16_000, subtype: str = "PCM_16", fill: float | None = None) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    x = 0.3 * np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))
    if fill is not None:
        x[len(x) // 2] = fill
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_every_error_code_and_the_metrics(start_worker, amqp_url, prefix):
    port = free_port()
    proc = start_worker({"SERQ_MAX_BYTES": str(MAX_BYTES), "SERQ_MAX_SECONDS": str(MAX_SECONDS),
                         "SERQ_METRICS_PORT": str(port)})
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    audio = {"content_type": "audio/wav"}
    cases = {
        "empty": (b"", audio),
        "too_large": (b"\0" * (MAX_BYTES + 1), audio),
        "too_long": (wav(MAX_SECONDS + 0.5), audio),
        "too_short": (wav(0.01), audio),
        "unsupported_format": (b"hello, this is not a sound file" * 10, audio),
        "bad_audio": (wav(1.0, subtype="FLOAT", fill=float("nan")), audio),
        "invalid_request": (wav(1.0), {"content_type": "application/json"}),
    }
    for code, (body, props) in cases.items():
        reply_props, reply = rpc.call(body, **props)
        assert reply_props.type == "serq.ErrorReply" and reply_props.content_type == "application/json"
        assert reply["error"]["code"] == code, (code, reply)
        assert reply["error"]["message"] and reply["worker"] == "worker0"
    _, unknown_type = rpc.call(wav(1.0), type="no.such.type")
    assert unknown_type["error"]["code"] == "invalid_request" and "no.such.type" in unknown_type["error"]["message"]
    _, bad_header = rpc.call(wav(1.0), headers={"filename": 42})
    assert bad_header["error"]["code"] == "invalid_request" and "filename" in bad_header["error"]["message"]
    ok_props, ok = rpc.call(wav(1.0), content_type="application/octet-stream", headers={"filename": "tone.wav"})
    assert ok_props.type == "serq.PredictionResult" and ok["file"] == "tone.wav" and "label" in ok

    # No reply_to: acked and dropped, logged, and visible on the results exchange as error.invalid_request.
    follow = rpc.ch.queue_declare("", exclusive=True).method.queue
    rpc.ch.queue_bind(follow, f"{prefix}.results", "error.*")
    rpc.ch.basic_publish("", f"{prefix}.classify", wav(1.0), pika.BasicProperties(correlation_id="lost-1"))
    deadline = time.monotonic() + 30
    while True:
        method, _, body = rpc.ch.basic_get(follow, auto_ack=True)
        if method:
            break
        assert time.monotonic() < deadline, "no error.invalid_request on the results exchange"
        time.sleep(0.1)
    assert method.routing_key == "error.invalid_request" and json.loads(body)["request_id"] == "lost-1"
    # The copy on the results exchange goes out before the ack; the log line and the metrics follow it.
    deadline = time.monotonic() + 30
    while "no reply_to" not in proc.log_path.read_text():
        assert time.monotonic() < deadline, "the request without reply_to was not logged"
        time.sleep(0.1)
    time.sleep(0.5)
    assert rpc.ch.queue_declare(f"{prefix}.classify", passive=True).method.message_count == 0  # acked, not requeued

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for code in cases:
        expected = 4 if code == "invalid_request" else 1  # content type, unknown type, bad header, no reply_to
        assert f'serq_errors_total{{code="{code}"}} {float(expected)}' in metrics, code
    assert 'serq_requests_total{type="classify"}' in metrics
    assert 'serq_requests_total{type="unknown"} 1.0' in metrics  # client-chosen types do not become labels
    assert "serq_request_seconds_bucket" in metrics and "serq_model_info{version=" in metrics
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
    assert health["status"] == "ok" and health["model_version"]
    rpc.conn.close()
