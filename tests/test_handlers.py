"""The worker's handler registry against the contract, and the one header check every handler uses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serq.errors import InvalidRequest
from serq.models.registry import load_default
from serq.schemas.contract import OPERATIONS, request_types
from serq.settings import Settings
from serq.worker.handlers import HANDLERS, Context, handler_for, known_types


def test_every_request_type_of_the_contract_has_a_handler_and_no_other():
    assert set(HANDLERS) == set(request_types())
    assert known_types() == sorted(request_types())


def test_every_request_the_worker_receives_names_its_type():
    # The classify queue is the worker's: each operation receiving on it is one request type.
    on_classify = [op for op in OPERATIONS if op.action == "receive" and op.channel == "classify"]
    assert on_classify and all(op.request_type for op in on_classify)
    assert len(set(request_types())) == len(request_types())


def test_absent_type_means_classify_and_unknown_is_refused():
    assert handler_for(None) is handler_for("classify")
    with pytest.raises(InvalidRequest, match="unknown request type 'nope'; known: classify, enroll, timeline.chunk"):
        handler_for("nope")


@pytest.fixture(scope="module")
def model():
    return load_default()


@pytest.mark.parametrize(("request_type", "headers", "content_type", "message"), [
    ("classify", {"filename": "x" * 300}, "audio/wav", "bad classify headers: filename: String should have at most"),
    ("enroll", {"x-serq-speaker": ""}, "audio/wav", "bad enroll headers: x-serq-speaker: String should have at least"),
    ("timeline.chunk", {"x-serq-stream-id": "s"}, "application/octet-stream",
     "bad timeline.chunk headers: x-serq-seq: Field required"),
    ("timeline.chunk", {"x-serq-stream-id": b"s", "x-serq-seq": b"x"}, "application/octet-stream",
     "bad timeline.chunk headers: x-serq-seq: Input should be a valid integer"),
])
def test_bad_headers_are_refused_in_one_format(model, request_type, headers, content_type, message):
    ctx = Context(settings=Settings(), model=model, worker="w", request_id="r", headers=headers)
    with pytest.raises(InvalidRequest) as err:
        handler_for(request_type)(b"\0" * 64, SimpleNamespace(content_type=content_type), ctx)
    assert str(err.value).startswith(message), err.value
