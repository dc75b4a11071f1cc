"""The documented contract, called with plain pika and json: no serq code on the calling side.

(The worker under test is started by the `start_worker` fixture; everything the
test sends and reads follows docs/contract.md, as a client in any language would.)
"""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

pytestmark = [pytest.mark.broker, pytest.mark.corpus]

RESULT_FIELDS = {"label", "confidence", "probabilities", "spectral", "model_version", "timings_ms", "request_id", "worker"}


def _call(ch, conn, queue: str, body: bytes, reply_to: str, replies: dict, **props) -> tuple:
    cid = str(uuid.uuid4())
    ch.basic_publish("", queue, body, pika.BasicProperties(reply_to=reply_to, correlation_id=cid, **props))
    deadline = time.monotonic() + 60
    while cid not in replies:
        assert time.monotonic() < deadline, "no reply within 60 s"
        conn.process_data_events(time_limit=0.1)
    return replies.pop(cid)


def test_a_plain_amqp_client_can_classify(start_worker, amqp_url, prefix, ravdess_dir):
    start_worker()
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    ch = conn.channel()
    replies: dict = {}

    def on_reply(channel, method, props, body):
        replies[props.correlation_id] = (props, body)

    queue = f"{prefix}.classify"
    audio = (ravdess_dir / "Actor_08" / "03-01-05-02-01-01-08.flac").read_bytes()

    # direct reply-to: no reply queue to declare
    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    props, body = _call(ch, conn, queue, audio, "amq.rabbitmq.reply-to", replies, content_type="audio/flac",
                        headers={"filename": "call-0001.flac"})
    assert props.type == "serq.PredictionResult" and props.content_type == "application/json"
    result = json.loads(body)
    assert RESULT_FIELDS <= set(result) and result["file"] == "call-0001.flac"
    assert result["label"] in result["probabilities"] and abs(sum(result["probabilities"].values()) - 1) < 1e-3
    assert result["confidence"] == max(result["probabilities"].values())

    # an ordinary exclusive reply queue works the same; an error reply has {"error": {"code", "message"}}
    own = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_consume(own, on_reply, auto_ack=True)
    props, body = _call(ch, conn, queue, b"\x00\x01garbage", own, replies, content_type="application/octet-stream")
    error = json.loads(body)
    assert props.type == "serq.ErrorReply"
    assert error["error"]["code"] == "unsupported_format" and error["error"]["message"]
    conn.close()
