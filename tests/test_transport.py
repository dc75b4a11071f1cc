"""serq.transport without a broker: the node list, redaction, envelope checks, the undecodable-frame guard,
the time limit and /healthz's verdicts (the consumer loop itself is tested against real workers)."""

from __future__ import annotations

import random
import struct
import threading
import time
from types import SimpleNamespace

import pika
import pika.frame
import pytest
from pika import spec

from serq.errors import BrokerUnavailable, TimeLimitExceeded
from serq.schemas.contract import PRIVATE_HEADER, is_private, is_public
from serq.settings import Settings, redact_url
from serq.transport import nodes
from serq.transport.connection import UNDECODABLE, connect, node_urls, parameters
from serq.transport.consumer import envelope
from serq.transport.middleware import public_copy
from serq.worker.services.metrics import Metrics
from serq.worker.services.timelimit import TimeLimit

CLUSTER = "amqp://u:first@n1:5672/%2F, amqp://u:second@n2:5673/%2F,amqp://u:third@n3/%2F"


def test_a_comma_separated_url_is_a_node_list_tried_in_shuffled_order():
    settings = Settings(amqp_url=CLUSTER)
    assert node_urls(settings) == ["amqp://u:first@n1:5672/%2F", "amqp://u:second@n2:5673/%2F", "amqp://u:third@n3/%2F"]
    orders = {tuple(nodes.node_urls(settings.amqp_url, shuffle=True, rng=random.Random(seed))) for seed in range(30)}
    assert len(orders) > 1 and all(sorted(o) == sorted(node_urls(settings)) for o in orders)
    params = parameters(settings, "t")
    assert sorted((p.host, p.port) for p in params) == [("n1", 5672), ("n2", 5673), ("n3", 5672)]
    assert {p.client_properties["connection_name"] for p in params} == {"t"}
    assert node_urls(Settings(amqp_url="amqp://h/")) == ["amqp://h/"]
    with pytest.raises(BrokerUnavailable):
        node_urls(Settings(amqp_url=" , "))


def test_every_url_of_a_list_is_redacted_in_logs_and_errors():
    redacted = redact_url(CLUSTER)
    assert not any(secret in redacted for secret in (":first@", ":second@", ":third@"))
    assert redacted.count("u:***@") == 3
    assert "second" not in Settings(amqp_url=CLUSTER).redacted_amqp_url
    dead = "amqp://u:first@127.0.0.1:1/%2F,amqp://u:second@127.0.0.1:2/%2F"
    with pytest.raises(BrokerUnavailable) as err:
        connect(Settings(amqp_url=dead), "t")
    assert "first" not in str(err.value) and "second" not in str(err.value) and "127.0.0.1:2" in str(err.value)


def _delivery(**props):
    method = SimpleNamespace(delivery_tag=7, redelivered=False)
    return envelope(None, method, pika.BasicProperties(**props), b"body")


def test_every_property_is_checked_before_use():
    ok = _delivery(reply_to="r", correlation_id="c", headers={"filename": "a.wav"})
    assert ok.problem is None and ok.unanswerable is None and ok.request_id == "c"
    bad_cid = _delivery(reply_to="r", correlation_id=b"\xff", message_id="m")
    assert bad_cid.problem.code == "invalid_request" and bad_cid.correlation_id is None and bad_cid.request_id == "m"
    bad_mid = _delivery(reply_to="r", correlation_id="c", message_id=b"\xc3\x28")
    assert bad_mid.problem.code == "invalid_request" and bad_mid.correlation_id == "c"
    assert _delivery(reply_to=b"\xff", correlation_id="c").unanswerable
    assert _delivery(reply_to="r", type=b"\xff").problem.code == "invalid_request"
    undecodable = pika.BasicProperties()
    setattr(undecodable, UNDECODABLE, "RecursionError")
    assert envelope(None, SimpleNamespace(delivery_tag=1, redelivered=True), undecodable, b"").unanswerable


def _header_frame(properties: bytes, body_size: int = 4, channel: int = 3) -> bytes:
    payload = struct.pack(">HHQ", 60, 0, body_size) + properties
    return struct.pack(">BHL", spec.FRAME_HEADER, channel, len(payload)) + payload + bytes([spec.FRAME_END])


def test_a_header_frame_pika_cannot_decode_becomes_a_marked_header():
    # Property flags: headers only (bit 13), then a table nested far deeper than the recursion limit.
    depth = 5000
    inner = struct.pack(">I", 0)
    for _ in range(depth):
        entry = bytes([1]) + b"a" + b"F" + inner
        inner = struct.pack(">I", len(entry)) + entry
    table = inner
    frame = _header_frame(struct.pack(">H", 1 << 13) + table)
    consumed, header = pika.frame.decode_frame(frame)
    assert consumed == len(frame) and isinstance(header, pika.frame.Header)
    assert header.channel_number == 3 and header.body_size == 4
    assert "RecursionError" in getattr(header.properties, UNDECODABLE)
    # A well-formed header still decodes as pika does.
    _, plain = pika.frame.decode_frame(_header_frame(struct.pack(">H", 0)))
    assert getattr(plain.properties, UNDECODABLE, None) is None


def test_privacy_rules_of_the_results_exchange():
    assert is_public(None, {}) and is_public("classify", {"filename": "x.wav"})
    assert not is_public("timeline.chunk", {}) and not is_public("enroll", {})
    assert is_private({PRIVATE_HEADER: True}) and is_private({PRIVATE_HEADER: "true"})
    assert is_private({PRIVATE_HEADER: {"odd": 1}})  # malformed: fail closed
    assert not is_private({PRIVATE_HEADER: False}) and not is_private(None)
    assert public_copy(b'{"file":"jane.wav","label":"sad","profile":{"n":1}}') == b'{"label":"sad"}'


def test_the_time_limit_interrupts_a_python_loop_and_nothing_after_it():
    limit = TimeLimit(0.3, poll_s=0.05)
    started = time.monotonic()

    def endless():
        while True:  # a forged state's endless loop
            pass

    with pytest.raises(TimeLimitExceeded) as err:
        limit.call(endless)
    assert time.monotonic() - started < 5 and err.value.code == "time_limit" and limit.exceeded == 1
    assert limit.call(time.sleep, 0.05) is None  # within the limit: untouched
    time.sleep(0.5)  # nothing pending lands after the call
    limit.close()


def test_the_time_limit_fires_again_when_an_interruption_is_swallowed():
    """soundfile's cffi callbacks swallow an exception raised in them: the watchdog must not fire only once."""
    limit = TimeLimit(0.1, poll_s=0.05)
    swallowed = []

    def swallowing_then_looping():
        while len(swallowed) < 3:  # as a decode through cffi callbacks would, three times
            try:
                time.sleep(0.01)
            except TimeLimitExceeded:
                swallowed.append(time.monotonic())
        while True:
            pass

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        limit.call(swallowing_then_looping)
    assert len(swallowed) == 3 and time.monotonic() - started < 5 and limit.exceeded == 1

    def swallowing_everything():  # and returns as if nothing happened: the result is not trusted
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except TimeLimitExceeded:
                pass
        return "a result from a decode cut short"

    with pytest.raises(TimeLimitExceeded):
        limit.call(swallowing_everything)
    assert limit.exceeded == 2
    assert limit.call(lambda: "quick") == "quick"
    limit.close()


def test_the_time_limit_survives_an_interruption_landing_in_its_own_finally():
    """An interruption that lands as :meth:`TimeLimit.call` cleans up (before it takes its lock) leaves no stale
    entry: nothing lands in the thread after the call, and the next request is limited again."""
    limit = TimeLimit(0.1, poll_s=0.05)
    real_lock, me = limit._lock, threading.get_ident()

    class LandsInTheFinally:
        armed = False

        def __enter__(self):
            if self.armed and threading.get_ident() == me:
                self.armed = False
                raise TimeLimitExceeded()  # where the watchdog's exception could land
            return real_lock.__enter__()

        def __exit__(self, *exc):
            return real_lock.__exit__(*exc)

    lock = limit._lock = LandsInTheFinally()

    def arm():
        lock.armed = True
        return "done"

    with pytest.raises(TimeLimitExceeded):
        limit.call(arm)
    assert not lock.armed  # it landed there, so the call could not clean up after itself
    for _ in range(40):  # 0.4 s of Python code in this thread, past the deadline: nothing may land here
        time.sleep(0.01)
    assert not limit._running, "the watchdog forgets a call that has ended"

    def endless():
        while True:
            pass

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        limit.call(endless)
    assert time.monotonic() - started < 5
    limit.close()


def test_healthz_is_unhealthy_when_not_consuming_or_stuck():
    metrics = Metrics()
    state = {"consuming": True, "oldest": 0.0}
    metrics.probe = lambda: (state["consuming"], state["oldest"])
    metrics.time_limit_s = 10
    assert metrics.health()[0] == 503  # not connected yet
    metrics.set_connected(True)
    assert metrics.health() == (200, {"status": "ok", "model_version": None, "oldest_in_flight_s": 0.0})
    state["consuming"] = False
    assert metrics.health()[1]["status"] == "not consuming" and metrics.health()[0] == 503
    state.update(consuming=True, oldest=11.0)
    assert metrics.health()[1]["status"] == "stuck" and metrics.health()[0] == 503


class _FakeChannel:
    """Records what the consumer does on a channel; ``fail_publish`` makes basic_publish raise it."""

    def __init__(self, fail_publish: BaseException | None = None):
        self.is_open, self.fail_publish = True, fail_publish
        self.published, self.acked, self.nacked = [], [], []

    def basic_publish(self, exchange, key, body, props, mandatory=False):
        if self.fail_publish is not None:
            raise self.fail_publish
        self.published.append((exchange, key, props.correlation_id, body))

    def basic_ack(self, tag):
        self.acked.append(tag)

    def basic_nack(self, tag, requeue):
        self.nacked.append((tag, requeue))


def _consumer_with(channel, middleware=()):
    from serq.transport.consumer import Consumer

    consumer = Consumer(lambda ch: "q", lambda d: None, middleware=middleware, worker="w")
    consumer.channel = consumer.side_channel = channel
    return consumer


def test_a_reply_that_cannot_be_published_is_dead_lettered_never_left_in_flight():
    from serq.schemas import ErrorInfo, ErrorReply
    from serq.transport.consumer import Answer

    channel = _FakeChannel(fail_publish=ValueError("cannot encode"))
    consumer = _consumer_with(channel)
    delivery = envelope(channel, SimpleNamespace(delivery_tag=5, redelivered=False),
                        pika.BasicProperties(reply_to="r", correlation_id="c"), b"x")
    consumer.in_flight[5] = delivery
    reply = ErrorReply(error=ErrorInfo(code="empty", message="m"), request_id="c", worker="w")
    assert consumer.complete(delivery, Answer.of(reply)) is False
    assert channel.nacked == [(5, False)] and channel.acked == [] and consumer.in_flight == {}


def test_the_fanout_publishes_what_the_privacy_filter_leaves_after_the_reply():
    from serq.schemas.contract import result_key
    from serq.transport.consumer import Answer
    from serq.transport.middleware import PrivacyFilter, ResultsFanout

    class Body:  # a reply body: anything with model_dump_json
        def model_dump_json(self, exclude_none=False):
            return '{"file":"jane.wav","label":"sad"}'

    channel = _FakeChannel()
    consumer = _consumer_with(channel, [PrivacyFilter(), ResultsFanout("p.results")])
    for tag, headers, kind in ((1, {}, None), (2, {PRIVATE_HEADER: True}, None), (3, {}, "enroll")):
        delivery = envelope(channel, SimpleNamespace(delivery_tag=tag, redelivered=False),
                            pika.BasicProperties(reply_to="r", correlation_id=f"c{tag}", headers=headers, type=kind),
                            b"x")
        consumer.in_flight[tag] = delivery
        assert consumer.complete(delivery, Answer(Body(), "serq.PredictionResult", result_key("sad")))
    assert [(e, c) for e, _, c, _ in channel.published] == [("", "c1"), ("p.results", "c1"), ("", "c2"), ("", "c3")]
    assert channel.published[1][3] == b'{"label":"sad"}' and channel.acked == [1, 2, 3]


def test_serve_pumps_until_stopping_then_cancels_and_drains_what_is_in_flight():
    events = []
    consumer = _consumer_with(_FakeChannel())
    consumer.in_flight = {1: "a delivery"}
    consumer._tag = "ctag"
    consumer.channel.basic_cancel = lambda tag: events.append(("cancel", tag))

    class Conn:
        def process_data_events(self, time_limit):
            events.append("pump")
            if events.count("pump") == 4:
                consumer.in_flight.clear()  # its reply went out and it was acked

    consumer.conn = Conn()
    consumer.serve(lambda: events.count("pump") >= 2, seconds=0.01)
    assert events == ["pump", "pump", ("cancel", "ctag"), "pump", "pump"] and not consumer.consuming


def test_the_async_reconnect_loop_retries_with_backoff_until_open_or_stopped():
    import asyncio

    aio = pytest.importorskip("serq.transport.aio")
    tries, errors = [], []

    async def open_():
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise BrokerUnavailable("down")

    settings = Settings(reconnect_max_s=0.2)
    assert asyncio.run(aio.reconnect(open_, settings, lambda: False, errors.append)) is True
    assert len(tries) == 3 and [str(e) for e in errors] == ["down", "down"]
    assert tries[1] - tries[0] >= 0.1  # backed off (0.25 s capped at 0.2, full jitter from half)
    stopped = []
    assert asyncio.run(aio.reconnect(lambda: stopped.append(1), settings, lambda: True)) is False and not stopped
