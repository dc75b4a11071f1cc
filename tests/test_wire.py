"""The messages both clients send and read (serq.client.wire) and the node list of SERQ_AMQP_URL: pure functions."""

from __future__ import annotations

import random
import time

import pytest

from serq.client.errors import ClientError, ServiceError
from serq.client.wire import (
    DIRECT_REPLY_TO,
    accept_reply,
    new_request,
    outcome,
    properties,
    request_headers,
    subscription_keys,
)
from serq.schemas import ErrorInfo, ErrorReply
from serq.schemas.contract import PRIVATE_HEADER
from serq.transport.nodes import node_urls, redacted_nodes


def test_properties_carry_reply_address_id_type_headers_and_the_deadline():
    request = new_request(b"RIFF", "a.wav", "audio/wav", 10.0, headers={"x-serq-profile": "{}"}, type="enroll")
    props = properties(request, now=request.deadline - 2.5)
    assert props == {"reply_to": DIRECT_REPLY_TO, "correlation_id": request.id, "message_id": request.id,
                     "content_type": "audio/wav",
                     "headers": {"filename": "a.wav", "x-serq-profile": "{}"}, "type": "enroll",
                     "expiration_ms": 2500}
    bare = new_request(b"x", None, "application/octet-stream", 1.0)
    assert properties(bare, now=time.monotonic() + 60)["expiration_ms"] == 1  # past its deadline: expires at once
    assert properties(bare)["headers"] is None and properties(bare)["type"] is None


def test_request_headers_add_the_private_flag_for_both_clients():
    assert request_headers(None) is None and request_headers({"x-serq-profile": "{}"}) == {"x-serq-profile": "{}"}
    assert request_headers(None, private=True) == {PRIVATE_HEADER: True}
    mine = {"x-serq-profile": "{}"}
    assert request_headers(mine, private=True) == {"x-serq-profile": "{}", PRIVATE_HEADER: True}
    assert mine == {"x-serq-profile": "{}"}  # the caller's dict is left alone


def test_a_reply_is_taken_once_and_unknown_or_duplicate_ones_are_dropped():
    request = new_request(b"x", None, "application/octet-stream", 5.0)
    pending = {request.id: request}
    assert accept_reply(pending, "someone-else", None, b"{}") is None
    assert accept_reply(pending, request.id, "serq.ErrorReply", b"first") is request
    assert accept_reply(pending, request.id, "serq.ErrorReply", b"second") is None
    assert request.reply == ("serq.ErrorReply", b"first")


def test_outcome_maps_error_replies_and_refuses_garbage():
    request = new_request(b"x", None, "application/octet-stream", 5.0)
    error = ErrorReply(error=ErrorInfo(code="too_long", message="61.0 s exceeds 60 s"), request_id=request.id)
    request.reply = ("serq.ErrorReply", error.model_dump_json().encode())
    with pytest.raises(ServiceError) as info:
        outcome(request)
    assert info.value.code == "too_long" and info.value.reply == error
    request.reply = ("serq.PredictionResult", b"{not json")
    with pytest.raises(ClientError) as info:
        outcome(request)
    assert info.value.code == "invalid_request"


def test_subscription_keys():
    assert subscription_keys(None) == ["emotion.*"]
    keys = subscription_keys(["Angry", "silent", "angry"], errors=True)
    assert keys == ["emotion.angry", "emotion.silent", "error.*"]
    with pytest.raises(ValueError, match="grumpy"):
        subscription_keys(["grumpy"])


def test_node_urls_split_strip_and_shuffle():
    url = " amqp://a:1@h1:5672/%2F ,amqp://b:2@h2:5672/%2F,, amqp://h3/ "
    assert node_urls(url) == ["amqp://a:1@h1:5672/%2F", "amqp://b:2@h2:5672/%2F", "amqp://h3/"]
    orders = {tuple(node_urls(url, shuffle=True, rng=random.Random(seed))) for seed in range(20)}
    assert len(orders) > 1 and all(sorted(o) == sorted(node_urls(url)) for o in orders)
    assert redacted_nodes(url) == "amqp://a:***@h1:5672/%2F,amqp://b:***@h2:5672/%2F,amqp://h3/"
    with pytest.raises(ValueError):
        node_urls(" , ")
