"""The worker's handler registry against the contract (the request check before them: test_request_check.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from serq.models.registry import load_default
from serq.schemas.contract import OPERATIONS, request_types, requests
from serq.transport.middleware import CONTENT_TYPES
from serq.worker.handlers import HANDLERS, handler_for, known_types

from helpers.handlers import handle


def test_every_request_type_of_the_contract_has_a_handler_and_no_other():
    assert set(HANDLERS) == set(request_types())
    assert known_types() == sorted(request_types())


def test_every_request_the_worker_receives_names_its_type():
    # The classify queue is the worker's: each operation receiving on it is one request type.
    on_classify = [op for op in OPERATIONS if op.action == "receive" and op.channel == "classify"]
    assert on_classify and all(op.request_type for op in on_classify)
    assert len(set(request_types())) == len(request_types())


def test_absent_type_means_classify():
    assert handler_for(None) is handler_for("classify")


def test_every_request_type_has_its_message_and_the_consumer_loop_a_rule_for_its_content_type():
    # The request check refuses by these: a type without a message (or a rule) would be refused unread.
    assert set(requests()) == set(request_types())
    assert all(m.payload is None and m.headers is not None and m.content_type in CONTENT_TYPES
               for m in requests().values())


@pytest.fixture(scope="module")
def model():
    return load_default()


def wav_bytes() -> bytes:
    t = np.arange(16_000, dtype=np.float32) / 16_000
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)), 16_000, format="WAV")
    return buf.getvalue()


def test_a_handler_sees_the_checked_headers_as_the_contract_model(model):
    reply = handle("classify", wav_bytes(), {"filename": b"clip.wav"}, model=model, content_type="audio/wav")
    assert reply.body.file == "clip.wav" and reply.type == "serq.PredictionResult"
