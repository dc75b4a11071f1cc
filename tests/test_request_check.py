"""The consumer loop's request check: a request's ``type``, ``content_type`` and headers against the contract,
refused in one format before any handler sees it, answered with a typed error that is published before the ack."""

from __future__ import annotations

from types import SimpleNamespace

import pika
import pytest

from serq.errors import InvalidRequest
from serq.schemas import ClassifyHeaders, EnrollHeaders, ErrorReply, TimelineChunkHeaders
from serq.schemas.timeline import PCM_CONTENT_TYPE
from serq.transport.consumer import Consumer, envelope
from serq.transport.middleware import RequestCheck, check_request

STREAM = {"x-serq-stream-id": "s", "x-serq-seq": 0}


def refusal(request_type, content_type, headers=None) -> str:
    with pytest.raises(InvalidRequest) as err:
        check_request(request_type, content_type, headers or {})
    assert err.value.code == "invalid_request"
    return str(err.value)


def test_absent_type_is_classify_and_an_unknown_one_is_refused():
    assert isinstance(check_request(None, "audio/wav", {}), ClassifyHeaders)
    assert refusal("nope", "audio/wav") == "unknown request type 'nope'; known: classify, enroll, timeline.chunk"


@pytest.mark.parametrize("request_type", [None, "classify", "enroll"])
def test_an_audio_file_request_takes_audio_or_octet_stream_or_nothing(request_type):
    for ok in (None, "", "audio/wav", "Audio/FLAC", "audio/wav; rate=16000", "application/octet-stream",
               " application/octet-stream ; x=y"):
        check_request(request_type, ok, {"x-serq-speaker": "k"} if request_type == "enroll" else {})
    for bad in ("application/json", "text/plain; charset=utf-8", "video/mp4", "audio"):
        assert refusal(request_type, bad) == (f"content_type {bad!r}: send the audio file's bytes as audio/* "
                                              "or application/octet-stream")


def test_a_timeline_chunk_takes_raw_pcm_only():
    for ok in (PCM_CONTENT_TYPE, "AUDIO/X-RAW; channels=1; rate=16000; format=f32le", "audio/x-raw;format=F32LE;rate=16000",
               "application/octet-stream"):
        assert isinstance(check_request("timeline.chunk", ok, STREAM), TimelineChunkHeaders)
    for bad in (None, "audio/wav", "audio/x-raw;format=S16LE;rate=16000", "audio/x-raw;format=F32LE;rate=8000",
                "audio/x-raw;format=F32LE;rate=16000;channels=2", "audio/x-raw"):
        assert refusal("timeline.chunk", bad, STREAM) == (
            f"content_type {bad!r}: a timeline chunk is raw PCM, {PCM_CONTENT_TYPE!r} (or application/octet-stream)")


@pytest.mark.parametrize(("request_type", "headers", "content_type", "message"), [
    ("classify", {"filename": "x" * 300}, "audio/wav", "bad classify headers: filename: String should have at most"),
    ("classify", {"filename": 42}, None, "bad classify headers: filename: Input should be a valid string"),
    ("enroll", {"x-serq-speaker": ""}, "audio/wav", "bad enroll headers: x-serq-speaker: String should have at least"),
    ("timeline.chunk", {"x-serq-stream-id": "s"}, "application/octet-stream",
     "bad timeline.chunk headers: x-serq-seq: Field required"),
    ("timeline.chunk", {"x-serq-stream-id": b"s", "x-serq-seq": b"x"}, "application/octet-stream",
     "bad timeline.chunk headers: x-serq-seq: Input should be a valid integer"),
    ("timeline.chunk", {"x-serq-stream-id": "bad id!", "x-serq-seq": 0}, PCM_CONTENT_TYPE,
     "bad timeline.chunk headers: x-serq-stream-id: String should match pattern"),
])
def test_bad_headers_are_refused_in_one_format(request_type, headers, content_type, message):
    assert refusal(request_type, content_type, headers).startswith(message)


def test_the_headers_come_back_as_the_contract_model_with_bytes_decoded():
    fields = check_request("enroll", "audio/wav", {"x-serq-speaker": b"caller-7", "filename": b"a.wav"})
    assert isinstance(fields, EnrollHeaders) and (fields.speaker, fields.filename) == ("caller-7", "a.wav")
    chunk = check_request("timeline.chunk", PCM_CONTENT_TYPE, {"x-serq-stream-id": b"s", "x-serq-seq": b"3"})
    assert (chunk.stream_id, chunk.seq) == ("s", 3)


class _Channel:
    """Records, in order, what the consumer publishes and settles."""

    def __init__(self):
        self.is_open, self.events = True, []

    def basic_publish(self, exchange, key, body, props, mandatory=False):
        self.events.append(("publish", key, props.type, props.correlation_id, body))

    def basic_ack(self, tag):
        self.events.append(("ack", tag))

    def basic_nack(self, tag, requeue):
        self.events.append(("nack", tag, requeue))


def _deliver(consumer, channel, tag, **props):
    consumer._on_message(channel, SimpleNamespace(delivery_tag=tag, redelivered=False),
                         pika.BasicProperties(reply_to="r", correlation_id=f"c{tag}", **props), b"\0" * 64)


def test_a_refused_request_gets_its_typed_error_reply_before_the_ack_and_never_reaches_processing():
    processed = []
    channel = _Channel()
    consumer = Consumer(lambda ch: "q", processed.append, middleware=[RequestCheck()], worker="w1")
    consumer.channel = consumer.side_channel = channel
    _deliver(consumer, channel, 1, content_type="application/json")
    _deliver(consumer, channel, 2, type="timeline.chunk", content_type="audio/wav", headers=STREAM)
    _deliver(consumer, channel, 3, type="enroll", headers={"x-serq-speaker": ""})
    assert processed == [] and consumer.in_flight == {}
    assert [e[0] for e in channel.events] == ["publish", "ack"] * 3
    for (_, key, kind, cid, body), tag in zip(channel.events[::2], (1, 2, 3)):
        reply = ErrorReply.model_validate_json(body)
        assert (key, kind, cid) == ("r", "serq.ErrorReply", f"c{tag}")
        assert (reply.error.code, reply.request_id, reply.worker) == ("invalid_request", f"c{tag}", "w1")
    assert "content_type 'application/json'" in ErrorReply.model_validate_json(channel.events[0][4]).error.message


def test_a_valid_request_reaches_processing_with_its_checked_headers():
    processed = []
    channel = _Channel()
    consumer = Consumer(lambda ch: "q", processed.append, middleware=[RequestCheck()], worker="w1")
    consumer.channel = consumer.side_channel = channel
    _deliver(consumer, channel, 4, type="timeline.chunk", content_type=PCM_CONTENT_TYPE, headers=STREAM)
    assert channel.events == [] and [d.tag for d in processed] == [4] and 4 in consumer.in_flight
    assert isinstance(processed[0].fields, TimelineChunkHeaders) and processed[0].fields.stream_id == "s"
    assert envelope(channel, SimpleNamespace(delivery_tag=5, redelivered=False), pika.BasicProperties(),
                    b"").fields is None  # nothing sets it but the check
