"""Forged client-held state against a real worker: typed answers in bounded time, the worker keeps serving.

One `serq worker` (its deployment's SERQ_STATE_KEY, which the test knows, as a leaked key
would be known) gets a real stream's chunk 0, then every forgery of the state as chunk
1, pipelined: unsealed changes, another deployment's seal, and forgeries sealed with the
right key (the re-check must refuse them: ``keep_from > received``, the ``10**12`` loop
that once hung a worker, NaN, short label lists, wrong-length sums, ``window_s=30,
hop_s=0.1``). Then forged speaker profiles, on classify, enroll and a stream's chunk 0.
Every reply must be ``invalid_request`` within the deadline; afterwards the genuine
state still goes on and a clip is still classified, by the same process.
"""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest
from helpers.broker import Rpc
from helpers.forgeries import FORGED_PROFILES as FORGED
from helpers.forgeries import SEALED_FORGERIES, forged, real_speech

from serq.schemas import TimelineChunkResult, TimelineParams
from serq.schemas.profiles import PROFILE_HEADER
from serq.worker.engine.timeline import RATE, seal_state

from .conftest import SAMPLES, assert_typed, record

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PCM = "audio/x-raw;format=F32LE;rate=16000;channels=1"
#: Seconds within which every forged request must be answered (all of them, pipelined to one worker).
DEADLINE_S = 120.0


def pipelined(rpc: Rpc, requests: dict[str, tuple[bytes, dict]], timeout: float) -> tuple[dict, float]:
    """Publish every ``name: (body, props)`` at once; ``({name: reply or None}, seconds until the last reply)``."""
    cids = {}
    started = time.monotonic()
    for name, (body, props) in requests.items():
        cid = uuid.uuid4().hex
        cids[cid] = name
        rpc.ch.basic_publish("", rpc.queue, body, pika.BasicProperties(
            correlation_id=cid, reply_to="amq.rabbitmq.reply-to", **props))
    while not set(cids) <= set(rpc.replies) and time.monotonic() - started < timeout:
        rpc.conn.process_data_events(time_limit=0.1)
    took = time.monotonic() - started
    return {name: rpc.replies.pop(cid, (None, None))[1] for cid, name in cids.items()}, took


def code_of(reply: dict | None) -> str:
    if reply is None:
        return "timeout"
    return reply["error"]["code"] if "error" in reply else "result"


def test_forged_states_and_profiles_get_invalid_request_in_bounded_time(start_worker, amqp_url, prefix):
    proc = start_worker()
    key = f"test-state-key-{prefix}".encode()  # the deployment's key (tests/conftest.py's service factory)
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    speech = real_speech()

    def chunk_props(**headers) -> dict:
        return {"content_type": PCM, "type": "timeline.chunk", "headers": {"x-serq-stream-id": "call-1"} | headers}

    _, reply = rpc.call(speech[: 9 * RATE].astype("<f4").tobytes(), **chunk_props(**{"x-serq-seq": 0}))
    first = TimelineChunkResult.model_validate(reply)
    state = first.state
    assert state.vad.seg_start is not None and state.run is not None and state.seal
    rest = speech[first.next_offset:].astype("<f4").tobytes()
    next_headers = {"x-serq-seq": 1, "x-serq-offset": first.next_offset}

    states: dict[str, str] = {
        "unsealed: position 0": forged(state, position=0).model_dump_json(),
        "unsealed: the 10**12 loop": forged(state, vad={"seg_start": 0, "last_active": 10**12},
                                            next_window=0).model_dump_json(),
        "unsealed: window_s 30, hop_s 0.1": forged(state, params=TimelineParams.model_construct(
            window_s=30.0, hop_s=0.1, max_pause_s=1.0, min_speech_s=0.3)).model_dump_json(),
        "another deployment's seal": seal_state(forged(state, next_window=0),
                                                b"another-deployment-key").model_dump_json(),
        "not JSON": "{oops",
        "NaN last_boundary": json.dumps(json.loads(state.model_dump_json()) | {"last_boundary": float("nan")}),
    }
    states |= {f"sealed: {name}": seal_state(make(state), key).model_dump_json()
               for name, make in SEALED_FORGERIES.items()}
    requests = {name: (rest, chunk_props(**next_headers, **{"x-serq-state": text})) for name, text in states.items()}
    clip = next(SAMPLES.glob("neutral-*.flac")).read_bytes()
    for name, (text, _) in FORGED.items():
        requests[f"profile on classify: {name}"] = (clip, {"content_type": "audio/flac",
                                                          "headers": {PROFILE_HEADER: text}})
        requests[f"profile on chunk 0: {name}"] = (speech[: 2 * RATE].astype("<f4").tobytes(), chunk_props(
            **{"x-serq-seq": 0, PROFILE_HEADER: text}))
        requests[f"profile on enroll: {name}"] = (clip, {"content_type": "audio/flac", "type": "enroll",
                                                        "headers": {PROFILE_HEADER: text}})

    replies, took = pipelined(rpc, requests, DEADLINE_S)
    # The genuine state goes on, and the worker still classifies: same process.
    _, genuine = rpc.call(rest, **chunk_props(**next_headers, **{"x-serq-state": state.model_dump_json()}))
    _, classified = rpc.call(clip, content_type="audio/flac")
    rpc.conn.close()

    codes = {name: code_of(r) for name, r in replies.items()}
    record("forged timeline states and speaker profiles (pipelined to one worker)", len(requests),
           list(codes.values()), "pytest tests/reliability/test_forged_state.py",
           all_answered_within_s=f"{took:.1f}", worker_alive=proc.poll() is None)
    wrong = {name: (code, (replies[name] or {}).get("error")) for name, code in codes.items()
             if code != "invalid_request"}
    assert not wrong, wrong
    for code in codes.values():
        assert_typed(code)
    assert took < DEADLINE_S
    assert "segments" in genuine and genuine["seq"] == 1, genuine
    assert "label" in classified and proc.poll() is None



def test_without_a_state_key_a_stream_is_refused_by_another_worker_with_the_reason(start_worker, amqp_url, prefix):
    """SERQ_STATE_KEY unset: each worker warns at start-up; a stream's next chunk on another worker is
    refused (invalid_request naming the setting), while the worker that started it goes on."""
    first_worker = start_worker({"SERQ_STATE_KEY": ""})
    assert "SERQ_STATE_KEY is not set" in first_worker.log_path.read_text()
    rpc = Rpc(amqp_url, f"{prefix}.classify")
    speech = real_speech()
    props = {"content_type": PCM, "type": "timeline.chunk"}
    _, reply = rpc.call(speech[: 4 * RATE].astype("<f4").tobytes(), **props,
                        headers={"x-serq-stream-id": "hop", "x-serq-seq": 0})
    first = TimelineChunkResult.model_validate(reply)
    nxt = {"x-serq-stream-id": "hop", "x-serq-seq": 1, "x-serq-offset": first.next_offset,
           "x-serq-state": first.state.model_dump_json()}
    rest = speech[first.next_offset: 6 * RATE].astype("<f4").tobytes()
    _, same = rpc.call(rest, **props, headers=nxt)  # the worker that sealed it: goes on
    first_worker.terminate()
    first_worker.wait(30)
    start_worker({"SERQ_STATE_KEY": ""})
    _, other = rpc.call(rest, **props, headers=nxt)
    rpc.conn.close()
    record("a stream hopping to another worker without SERQ_STATE_KEY", 2, [code_of(same), code_of(other)],
           "pytest tests/reliability/test_forged_state.py -k without")
    assert code_of(same) == "result"
    assert code_of(other) == "invalid_request" and "no SERQ_STATE_KEY" in other["error"]["message"]
