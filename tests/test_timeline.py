"""Timeline unit tests: voice activity, smoothing, chunk invariance, bounded memory, the chunk handler, views.

Synthetic recordings (noise bursts for speech, quiet noise for silence) and, where
the test is about plumbing rather than emotion, a fake window classifier; the
real model and corpus are in tests/test_timeline_corpus.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from serq.errors import SerqError
from serq.schemas import (
    Timeline,
    TimelineChunkResult,
    TimelineParams,
    TimelineStreamState,
)
from serq.worker.engine import timeline as tl
from serq.worker.engine.timeline import RATE, TimelineProcessor, decide, smooth

from helpers.handlers import handle

LABELS = ["neutral", "angry", "sad"]


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    """Steady white noise at ``dbfs`` RMS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def burst(seconds: float, dbfs: float = -20.0, seed: int = 0) -> np.ndarray:
    """Speech-like noise: peaks at ``dbfs``, four syllables a second with 30 dB dips between them."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.03 + 0.97 * np.abs(np.cos(4 * np.pi * t))
    return (noise(seconds, dbfs, seed) * envelope).astype(np.float32)


def quiet(seconds: float, seed: int = 1) -> np.ndarray:
    return noise(seconds, -72.0, seed)


def recording(pattern) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate ``("s", seconds, dbfs)`` speech bursts and ``("q", seconds)`` silences; return speech spans."""
    parts, spans, t = [], [], 0.0
    for i, item in enumerate(pattern):
        if item[0] == "s":
            parts.append(burst(item[1], item[2] if len(item) > 2 else -20.0, seed=10 + i))
            spans.append((t, t + item[1]))
        else:
            parts.append(quiet(item[1], seed=100 + i))
        t += item[1]
    return np.concatenate(parts), spans


class FakeModel:
    """A window classifier for plumbing tests: probabilities from the window's level, so they depend on the audio."""

    version = "fake-1"
    meta = SimpleNamespace(labels=LABELS)


def fake_probabilities(samples: np.ndarray, model, profile=None) -> np.ndarray:
    level = 10 * np.log10(np.mean(samples.astype(np.float64) ** 2) + 1e-10)
    # A burst peaking at -10 dBFS (about -13 dBFS RMS) -> angry, -20 -> neutral, -30 -> sad.
    logits = np.array([-abs(level + 23), -abs(level + 13), -abs(level + 33)]) / 3
    p = np.exp(logits - logits.max())
    return p / p.sum()


@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setattr(tl, "window_probabilities", fake_probabilities)
    return FakeModel()


def run(model, audio: np.ndarray, block: int = RATE, params: TimelineParams | None = None):
    proc = TimelineProcessor.new(model, params)
    segments = []
    for i in range(0, len(audio), block):
        segments += proc.feed(audio[i : i + block])
    segments += proc.finish()
    return segments, proc


# --- smoothing --------------------------------------------------------------------------------------


def onehot(i: int, conf: float = 0.8) -> np.ndarray:
    p = np.full(3, (1 - conf) / 2)
    p[i] = conf
    return p


def final_labels(probs: list[np.ndarray]) -> list[int]:
    raw = [int(np.argmax(p)) for p in probs]
    return [decide(raw, i) for i in range(len(probs))]


@pytest.mark.parametrize("where", [0, 1, 2, 3, 4])
def test_one_noisy_window_does_not_flip_the_label(where):
    probs = [onehot(0)] * 5
    probs[where] = onehot(1, 0.99)
    assert final_labels(probs) == [0, 0, 0, 0, 0]


def test_a_sure_outlier_between_unsure_neighbours_changes_nothing():
    # Neighbours barely prefer 0 and the middle window is sure of 1: a median of probabilities
    # would let it flip the windows next to it; the label majority does not.
    weak_a, weak_b = np.array([0.5, 0.45, 0.05]), np.array([0.351, 0.3, 0.349])
    probs = [weak_a, weak_a, onehot(1, 0.95), weak_b, weak_a]
    assert final_labels(probs) == [0, 0, 0, 0, 0]


def test_a_real_change_of_emotion_is_kept():
    probs = [onehot(0)] * 3 + [onehot(2)] * 3
    assert final_labels(probs) == [0, 0, 0, 2, 2, 2]
    probs = [onehot(0)] * 3 + [onehot(2)] * 2 + [onehot(0)] * 3  # two windows = a real, short change
    assert final_labels(probs) == [0, 0, 0, 2, 2, 0, 0, 0]


def test_smoothed_probabilities_sum_to_one():
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(3)) for _ in range(7)]
    for i in range(7):
        assert smooth(probs, i).sum() == pytest.approx(1.0)


def test_params_refuse_gaps_between_windows():
    with pytest.raises(ValueError, match="hop_s"):
        TimelineParams(window_s=2.0, hop_s=3.0)


# --- voice activity ---------------------------------------------------------------------------------


def test_segments_follow_speech_and_silence(fake_model):
    audio, spans = recording([("q", 1.0), ("s", 2.0), ("q", 2.0), ("s", 1.5, -30.0), ("q", 3.0), ("s", 4.0, -10.0), ("q", 1.5)])
    segments, _ = run(fake_model, audio)
    assert len(segments) == 3
    for seg, (start, end) in zip(segments, spans):
        assert abs(seg.start - start) <= 0.05 and abs(seg.end - end) <= 0.05
    assert [s.label for s in segments] == ["neutral", "sad", "angry"]
    assert segments[2].windows >= 2  # 4 s of speech: more than one window


def test_a_pause_under_a_second_stays_inside_a_segment(fake_model):
    audio, spans = recording([("q", 1.0), ("s", 1.5), ("q", 0.8), ("s", 1.5), ("q", 2.0)])
    segments, _ = run(fake_model, audio)
    assert len(segments) == 1
    assert abs(segments[0].start - spans[0][0]) <= 0.05 and abs(segments[0].end - spans[1][1]) <= 0.05


def test_a_pause_over_a_second_ends_a_segment(fake_model):
    audio, _ = recording([("q", 1.0), ("s", 1.5), ("q", 1.3), ("s", 1.5), ("q", 2.0)])
    segments, _ = run(fake_model, audio)
    assert len(segments) == 2


def test_max_pause_is_a_parameter(fake_model):
    audio, _ = recording([("q", 1.0), ("s", 1.5), ("q", 1.3), ("s", 1.5), ("q", 2.0)])
    segments, _ = run(fake_model, audio, params=TimelineParams(max_pause_s=2.0))
    assert len(segments) == 1


def test_clicks_and_silence_are_not_labelled(fake_model):
    audio, _ = recording([("q", 2.0), ("s", 0.1), ("q", 3.0)])
    segments, proc = run(fake_model, audio)
    assert segments == []
    assert proc.duration_s == pytest.approx(5.1)


def test_a_loud_steady_background_is_not_speech(fake_model):
    hum = noise(12.0, -45.0, seed=3)
    hum[4 * RATE : 6 * RATE] += burst(2.0, -25.0, seed=4)  # speech 20 dB above the hum
    segments, _ = run(fake_model, hum)
    assert len(segments) == 1
    assert abs(segments[0].start - 4.0) <= 0.1 and abs(segments[0].end - 6.0) <= 0.1


def test_the_floor_follows_a_change_of_background(fake_model):
    # Digital silence, then a steady hum 45 dB louder: its onset looks like speech until the
    # floor has caught up (a few seconds); speech over the hum later is found exactly.
    hum = noise(14.0, -45.0, seed=3)
    hum[8 * RATE : 10 * RATE] += burst(2.0, -25.0, seed=4)
    audio = np.concatenate([np.zeros(RATE, np.float32), hum])
    segments, _ = run(fake_model, audio)
    assert abs(segments[-1].start - 9.0) <= 0.1 and abs(segments[-1].end - 11.0) <= 0.1
    assert all(s.end <= 1.0 + tl.NOISE_MEMORY_S + 1.5 for s in segments[:-1])


# --- streaming: chunk invariance, state round trip, bounded memory ---------------------------------------


def long_pattern(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pattern = []
    for _ in range(n):
        pattern.append(("q", float(rng.choice([0.4, 0.9, 1.6, 3.0]))))
        pattern.append(("s", float(rng.uniform(0.5, 9.0)), float(rng.choice([-10.0, -20.0, -30.0]))))
    return pattern + [("q", 1.0)]


def test_any_chunking_through_a_serialised_state_gives_the_same_timeline(fake_model):
    audio, _ = recording(long_pattern(12))
    reference, _ = run(fake_model, audio, block=len(audio))
    assert len(reference) >= 8
    rng = np.random.default_rng(7)
    proc = TimelineProcessor.new(fake_model, stream_id="s1")
    streamed, i = [], 0
    while i < len(audio):
        n = int(rng.integers(1, 3 * RATE))
        streamed += proc.feed(audio[i : i + n])
        i += n
        # What a worker would get back: the state as JSON and the tail the client re-sends.
        state = TimelineStreamState.model_validate_json(proc.state.model_dump_json())
        tl.check_state(state)  # every genuine state fits together (what a worker re-checks)
        tail = audio[state.keep_from : state.received]
        assert tl.tail_crc32(tail) == state.tail_crc32
        proc = TimelineProcessor(fake_model, state, tail.copy())
    streamed += proc.finish()
    assert [s.model_dump() for s in streamed] == [s.model_dump() for s in reference]


def test_state_and_buffer_stay_bounded(fake_model):
    audio, _ = recording(long_pattern(30, seed=3))
    block = RATE // 2
    proc = TimelineProcessor.new(fake_model)
    p = proc.params
    bound = int((p.window_s + p.hop_s + p.max_pause_s + 0.3) * RATE) + block
    biggest_state = 0
    for i in range(0, len(audio), block):
        proc.feed(audio[i : i + block])
        assert proc.buffered_samples <= bound
        assert proc.state.received - proc.state.keep_from <= tl.max_tail_frames(p) * tl.FRAME
        biggest_state = max(biggest_state, len(proc.state.model_dump_json()))
    assert biggest_state < 8_000  # bytes: fits an AMQP header with room to spare


# --- files -------------------------------------------------------------------------------------------


def test_read_blocks_resamples_and_mixes_down_like_decode(tmp_path):
    from serq.worker.engine.audio import decode

    t = np.arange(int(2.5 * 44_100)) / 44_100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.1 * np.sin(2 * np.pi * 330 * t)], axis=1)
    path = tmp_path / "tone.wav"
    sf.write(path, stereo, 44_100, subtype="FLOAT")
    blocks = list(tl.read_blocks(path, tl.RATE, block_s=0.3))
    assert all(len(b) <= int(0.3 * RATE) + 64 for b in blocks)
    streamed = np.concatenate(blocks)
    whole = decode(path).samples
    assert abs(len(streamed) - len(whole)) <= 2
    n = min(len(streamed), len(whole))
    assert np.corrcoef(streamed[1000 : n - 1000], whole[1000 : n - 1000])[0, 1] > 0.999


@pytest.mark.parametrize("content, code", [(b"not audio at all", "unsupported_format"), (None, "too_long")])
def test_read_blocks_errors(tmp_path, content, code):
    path = tmp_path / "x.wav"
    if content is None:
        sf.write(path, np.zeros(3 * RATE, np.float32), RATE)
    else:
        path.write_bytes(content)
    with pytest.raises(SerqError) as err:
        list(tl.read_blocks(path, tl.RATE, max_seconds=2.0))
    assert err.value.code == code


def test_read_blocks_refuses_nan(tmp_path):
    path = tmp_path / "nan.wav"
    x = np.zeros(RATE, np.float32)
    x[100] = np.nan
    sf.write(path, x, RATE, subtype="FLOAT")
    with pytest.raises(SerqError) as err:
        list(tl.read_blocks(path, tl.RATE))
    assert err.value.code == "bad_audio"


# --- the timeline.chunk handler (no broker: its function, with a real model) ----------------------------


@pytest.fixture(scope="module")
def model():
    from serq.models.registry import load_default

    return load_default()


PCM = "audio/x-raw;format=F32LE;rate=16000;channels=1"


def chunk(model, body: bytes, headers: dict, content_type: str = PCM):
    """A timeline.chunk request as the worker takes it: checked by the consumer loop, then handled."""
    from serq.settings import Settings

    return handle("timeline.chunk", body, headers, model=model, content_type=content_type,
                  settings=Settings(max_recording_seconds=20.0))


def call(model, samples: np.ndarray, headers: dict, content_type: str = PCM) -> TimelineChunkResult:
    reply = chunk(model, samples.astype("<f4").tobytes(), headers, content_type)
    assert reply.type == "serq.TimelineChunkResult" and reply.routing_key is None
    return reply.body


def test_handler_streams_and_checks_the_state(model):
    audio, _ = recording([("q", 1.0), ("s", 1.5), ("q", 2.0)])
    first = call(model, audio[: 2 * RATE], {"x-serq-stream-id": "abc", "x-serq-seq": 0})
    assert first.next_offset <= 2 * RATE and first.state.next_seq == 1 and first.segments == []
    state = first.state.model_dump_json()
    rest = audio[first.next_offset :]
    headers = {"x-serq-stream-id": "abc", "x-serq-seq": 1, "x-serq-offset": first.next_offset,
               "x-serq-state": state, "x-serq-final": True}
    last = call(model, rest, headers)
    assert last.final and len(last.segments) == 1 and last.duration_s == pytest.approx(4.5)
    assert abs(last.segments[0].start - 1.0) <= 0.05

    def refused(samples, **change) -> str:
        with pytest.raises(SerqError) as err:
            call(model, samples, {**headers, **change.get("h", {})}, change.get("ct", PCM))
        return err.value.code

    assert refused(rest, h={"x-serq-seq": 2}) == "invalid_request"  # out of order
    assert refused(rest, h={"x-serq-stream-id": "other"}) == "invalid_request"
    assert refused(rest, h={"x-serq-offset": 0}) == "invalid_request"
    assert refused(rest, h={"x-serq-state": "{}"}) == "invalid_request"
    assert refused(rest, h={"x-serq-state": None}) == "invalid_request"
    tampered = rest.copy()
    tampered[0] += 0.5
    assert refused(tampered) == "invalid_request"  # the re-sent tail is not what was sent before
    bad = rest.copy()
    bad[-1] = np.nan
    assert refused(bad) == "bad_audio"
    assert refused(rest, ct="audio/wav") == "invalid_request"
    assert refused(rest, ct="audio/x-raw;format=S16LE;rate=16000") == "invalid_request"
    assert call(model, rest, headers, "application/octet-stream").segments == last.segments
    assert refused(np.concatenate([rest, np.zeros(20 * RATE, np.float32)])) == "too_long"


def test_handler_refuses_bad_first_chunks(model):
    with pytest.raises(SerqError, match="whole number"):
        chunk(model, b"\x00" * 7, {"x-serq-stream-id": "a", "x-serq-seq": 0})
    with pytest.raises(SerqError, match="stream_id|stream-id"):
        call(model, np.zeros(10, np.float32), {"x-serq-stream-id": "bad id!", "x-serq-seq": 0})
    with pytest.raises(SerqError, match="chunk 0"):
        call(model, np.zeros(10, np.float32), {"x-serq-stream-id": "a", "x-serq-seq": 0, "x-serq-offset": 5})


# --- views --------------------------------------------------------------------------------------------


def sample_timeline(fake_model) -> Timeline:
    audio, _ = recording([("q", 1.0), ("s", 2.0), ("q", 2.0), ("s", 1.5, -30.0), ("q", 3.0), ("s", 4.0, -10.0), ("q", 1.5)])
    return tl.timeline_of_blocks([audio], fake_model)


def test_summary_shares_and_strongest(fake_model):
    timeline = sample_timeline(fake_model)
    s = timeline.summary
    assert set(s.share_of_time) == set(LABELS)
    assert sum(s.share_of_time.values()) == pytest.approx(1.0, abs=1e-3)
    assert s.speech_s == pytest.approx(sum(x.end - x.start for x in timeline.segments), abs=1e-3)
    assert all(m.label != "neutral" for m in s.strongest)
    assert [m.confidence for m in s.strongest] == sorted((m.confidence for m in s.strongest), reverse=True)
    assert Timeline.model_validate(json.loads(timeline.model_dump_json())) == timeline


def test_render_and_png(fake_model, tmp_path):
    from serq.cli.timeline_view import render_timeline, save_png, strip_chart

    timeline = sample_timeline(fake_model)
    text = render_timeline(timeline)
    for label in ("neutral", "sad", "angry"):
        assert label in text
    rows = strip_chart(timeline, width=50)
    assert len(rows) == 4 and all(len(r) == len(rows[1]) for r in rows[1:])
    # The angry segment (last 4 s of 15 s) sits at the right of its row.
    angry = next(r for r in rows if r.strip().startswith("angry"))
    assert angry.rstrip().endswith("█") and "█" not in angry[: len(angry) // 2]
    png = save_png(timeline, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
