"""Forged timeline stream states: refused with ``invalid_request``, in bounded work, never ``internal``.

The state a client carries is sealed (HMAC-SHA256 under ``SERQ_STATE_KEY``): any change
breaks the seal. Behind the seal, a worker re-checks that the fields fit together, as
it must when the key has leaked (or a worker of another version wrote the state), so
these tests also seal their forgeries with the worker's key. The real handler and the
shipped model, real speech from ``samples/``; no broker (tests/reliability/test_forged_state.py
sends the same forgeries to a real worker).
"""

from __future__ import annotations

import json
import numpy as np
import pytest
from helpers.forgeries import SEALED_FORGERIES, forged, real_speech
from helpers.handlers import handle

from serq.errors import InvalidRequest, SerqError
from serq.schemas import TimelineParams, TimelineStreamState
from serq.settings import Settings
from serq.worker.engine import timeline as tl
from serq.worker.engine.timeline import RATE, TimelineProcessor, seal_state

KEY = "a-deployment-state-key-for-tests"
PCM = "audio/x-raw;format=F32LE;rate=16000;channels=1"


@pytest.fixture(scope="module")
def model():
    from serq.models.registry import load_default

    return load_default()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return real_speech()




def chunk(model, samples: np.ndarray, headers: dict, key: str = KEY):
    return handle("timeline.chunk", samples.astype("<f4").tobytes(), {"x-serq-stream-id": "s1"} | headers,
                  model=model, content_type=PCM, settings=Settings(state_key=key)).body


@pytest.fixture(scope="module")
def mid_speech(model, speech):
    """The reply to chunk 0 (9 s of speech): a state with an open segment, windows and a run."""
    assert len(speech) > 10 * RATE
    first = chunk(model, speech[: 9 * RATE], {"x-serq-seq": 0})
    s = first.state
    assert s.vad.seg_start is not None and s.run is not None and s.windows and s.seal
    return first


def send(model, speech, first, state_json: str, key: str = KEY):
    """Chunk 1 with ``state_json``, re-sending the genuine tail: its reply, or the error raised."""
    rest = speech[first.next_offset:]
    try:
        return chunk(model, rest, {"x-serq-seq": 1, "x-serq-offset": first.next_offset, "x-serq-state": state_json},
                     key)
    except SerqError as exc:
        return exc


def test_the_genuine_state_goes_on(model, speech, mid_speech):
    reply = send(model, speech, mid_speech, mid_speech.state.model_dump_json())
    assert not isinstance(reply, Exception) and reply.state.next_seq == 2 and reply.state.seal


def test_a_client_may_reserialise_the_state(model, speech, mid_speech):
    """The seal covers the values, not the bytes: other key order and whitespace still verify."""
    text = json.dumps(json.loads(mid_speech.state.model_dump_json()), indent=2, sort_keys=True)
    assert not isinstance(send(model, speech, mid_speech, text), Exception)


@pytest.mark.parametrize("change", [
    {"position": 0}, {"labels": ["neutral"]}, {"params": TimelineParams(window_s=30.0, hop_s=7.5)},
    {"next_window": 0}, {"model_version": "x"}, {"seal": None},
])
def test_any_change_breaks_the_seal(model, speech, mid_speech, change):
    state = mid_speech.state.model_copy(update=change)
    reply = send(model, speech, mid_speech, state.model_dump_json())
    assert isinstance(reply, InvalidRequest) and "not sealed by a worker of this deployment" in str(reply)


def test_a_state_of_another_deployment_is_refused(model, speech, mid_speech):
    reply = send(model, speech, mid_speech, mid_speech.state.model_dump_json(), key="another-deployments-key")
    assert isinstance(reply, InvalidRequest) and "SERQ_STATE_KEY" in str(reply)


def test_without_a_key_a_stream_stays_on_its_worker(model, speech):
    """SERQ_STATE_KEY unset: a per-process key seals (the stream goes on here), and the refusal says why."""
    from serq.worker.handlers.timeline import parse_state
    from serq.schemas import TimelineChunkHeaders

    first = handle("timeline.chunk", speech[: 3 * RATE].astype("<f4").tobytes(),
                   {"x-serq-stream-id": "s1", "x-serq-seq": 0}, model=model, content_type=PCM,
                   settings=Settings(state_key=None)).body
    headers = TimelineChunkHeaders.model_validate({"x-serq-stream-id": "s1", "x-serq-seq": 1,
                                                   "x-serq-offset": first.next_offset})
    from serq.worker.engine.sealing import state_key

    key, shared = state_key(Settings(state_key=None))
    assert not shared and parse_state(first.state.model_dump_json(), headers, key, shared=False)
    with pytest.raises(InvalidRequest, match="only the worker that started the stream"):
        parse_state(first.state.model_dump_json(), headers, b"some other worker's random key", shared=False)


@pytest.mark.parametrize("name", list(SEALED_FORGERIES))
def test_sealed_forgeries_get_invalid_request(model, speech, mid_speech, name):
    state = seal_state(SEALED_FORGERIES[name](mid_speech.state), KEY.encode())
    reply = send(model, speech, mid_speech, state.model_dump_json())
    assert isinstance(reply, SerqError), f"{name}: accepted"
    assert reply.code == "invalid_request", f"{name}: {reply.code}: {reply}"


def test_nan_last_boundary_is_refused(model, speech, mid_speech):
    """JSON has no NaN, but Python's json writes one: the schema refuses it before anything else."""
    data = json.loads(mid_speech.state.model_dump_json())
    data["last_boundary"] = float("nan")
    text = json.dumps(data)
    assert "NaN" in text
    reply = send(model, speech, mid_speech, text)
    assert isinstance(reply, InvalidRequest) and "not a timeline stream state" in str(reply)


def test_a_chunk_classifies_only_windows_inside_its_audio(model, speech, mid_speech, monkeypatch):
    """Past both checks (the processor built straight from the forged loop state), the work of a
    chunk is still bounded by its audio: windows stop at the audio held, then a typed error."""
    calls = []
    real = tl.window_probabilities
    monkeypatch.setattr(tl, "window_probabilities", lambda *a, **k: calls.append(1) or real(*a, **k))
    state = forged(mid_speech.state, vad={"seg_start": 0, "last_active": 10**12}, next_window=0)
    tail = speech[state.keep_from:state.received]
    proc = TimelineProcessor(model, state, tail.copy())
    with pytest.raises(InvalidRequest, match="outside the audio"):
        proc.feed(speech[state.received:state.received + RATE])
    assert len(calls) == 0  # the first window it asks for, [0, 300) frames, lies before the tail


def test_window_hop_ratio_is_bounded():
    with pytest.raises(ValueError, match="4 x hop_s"):
        TimelineParams(window_s=30.0, hop_s=0.1)
    TimelineParams(window_s=8.0, hop_s=2.0)  # 4x: the most allowed
    with pytest.raises(ValueError, match="SERQ_TIMELINE_WINDOW_S"):
        Settings(timeline_window_s=30.0, timeline_hop_s=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_genuine_state_of_real_speech_passes_the_check(model, speech, seed):
    """Random chunkings of real speech and silence: every state the processor writes fits together."""
    rng = np.random.default_rng(seed)
    quiet = (rng.standard_normal(RATE) * 1e-4).astype(np.float32)
    audio = np.concatenate([quiet, speech, quiet, quiet, speech[: 3 * RATE], quiet])
    proc = TimelineProcessor.new(model)
    i = 0
    while i < len(audio):
        n = int(rng.integers(RATE // 10, 4 * RATE))
        proc.feed(audio[i:i + n])
        i += n
        tl.check_state(TimelineStreamState.model_validate_json(proc.state.model_dump_json()))
    proc.finish()
    tl.check_state(proc.state)


def test_a_rotated_key_is_still_accepted_from_state_key_previous(model, speech, mid_speech):
    """Rotation: the new key seals, the old one (SERQ_STATE_KEY_PREVIOUS) still verifies; without it, refused."""
    rest = speech[mid_speech.next_offset:].astype("<f4").tobytes()
    headers = {"x-serq-stream-id": "s1", "x-serq-seq": 1, "x-serq-offset": mid_speech.next_offset,
               "x-serq-state": mid_speech.state.model_dump_json()}  # sealed under KEY

    def chunk_with(**settings):
        return handle("timeline.chunk", rest, headers, model=model, content_type=PCM,
                      settings=Settings(**settings)).body

    rotated = chunk_with(state_key="the-new-deployment-state-key", state_key_previous=f"an-older-one-0123,{KEY}")
    assert rotated.state.seal and tl.sealed_by(rotated.state, b"the-new-deployment-state-key")
    assert not tl.sealed_by(rotated.state, KEY.encode())
    with pytest.raises(InvalidRequest, match="not sealed"):
        chunk_with(state_key="the-new-deployment-state-key")
