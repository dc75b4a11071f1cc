"""The Pipecat plugin in Pipecat's own test harness (``pipecat.tests.utils.run_test``) against a real
worker and real audio: an EmotionFrame per turn, every other frame through unchanged and in order,
nothing for short or silent turns, warnings (never a broken pipeline) for serq errors, profiles."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from serq.labels import EMOTIONS
from serq.settings import Settings, get_settings

from conftest import REPO, ravdess_clip

pytest.importorskip("pipecat", reason="the Pipecat plugin needs pipecat-ai, which cannot share an environment with the "
                    "train extra: `./run test` runs this file in .venv-pipecat (serq[worker,pipecat,dev])")

from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402 - after the skip above
from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    InputAudioRawFrame,
    LLMMessagesAppendFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import (  # noqa: E402
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection  # noqa: E402
from pipecat.tests.utils import QueuedFrameProcessor, run_test  # noqa: E402
from pipecat.utils.time import time_now_iso8601  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from serq.client.aio import AsyncClient  # noqa: E402
from serq.client.pipecat import EmotionFrame, SerqEmotionProcessor, TurnAudio, peak_level_dbfs, wav_bytes  # noqa: E402
from serq.client.profiles import AsyncSpeakerProfiles, ProfileStore  # noqa: E402

ANGRY = REPO / "samples" / "angry-03-01-05-02-02-01-16.flac"
FRAME_S = 0.02  # 20 ms frames, as transports send them


def audio_frames(pcm: np.ndarray, rate: int, channels: int = 1) -> list[InputAudioRawFrame]:
    """``pcm`` (int16, shape (n,) or (n, channels)) cut into 20 ms InputAudioRawFrames."""
    step = int(rate * FRAME_S)
    return [InputAudioRawFrame(audio=pcm[i:i + step].astype("<i2").tobytes(), sample_rate=rate, num_channels=channels)
            for i in range(0, len(pcm), step)]


def turn(pcm: np.ndarray, rate: int, channels: int = 1, *, trailing_s: float = 0.0) -> list:
    """One user turn as a transport and the user aggregator deliver it, plus ``trailing_s`` of silence after."""
    tail = audio_frames(np.zeros((int(trailing_s * rate),) + pcm.shape[1:], np.int16), rate, channels)
    return [UserStartedSpeakingFrame(), *audio_frames(pcm, rate, channels), UserStoppedSpeakingFrame(), *tail]


def run(processor, frames):
    down, _ = asyncio.run(run_test(processor, frames_to_send=frames, start_timeout=30.0))
    return down


def passed_through(down, sent) -> bool:
    """Every frame sent came out, the same objects in the same order (serq's own frames aside)."""
    others = [f for f in down if not isinstance(f, (EmotionFrame, LLMMessagesAppendFrame))]
    return len(others) == len(sent) and all(a is b for a, b in zip(others, sent, strict=False))


@pytest.fixture
def serq_env(amqp_url, prefix, monkeypatch):
    """SERQ_AMQP_URL/SERQ_PREFIX in the environment, read afresh: what `SerqEmotionProcessor()` uses."""
    monkeypatch.setenv("SERQ_AMQP_URL", amqp_url)
    monkeypatch.setenv("SERQ_PREFIX", prefix)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


# --- unit: the turn buffer --------------------------------------------------------------------


def test_turn_audio_keeps_a_preroll_downmixes_and_caps_the_turn():
    buf = TurnAudio(preroll_s=0.1, max_s=1.0)
    before = np.arange(1000, dtype=np.int16)  # 1000 samples at 1 kHz before the start: 0.1 s kept
    buf.add(before.tobytes(), 1000, 1)
    buf.start()
    stereo = np.stack([np.full(500, 100, np.int16), np.full(500, 300, np.int16)], axis=1)
    buf.add(stereo.tobytes(), 1000, 2)
    pcm, rate = buf.stop()
    assert rate == 1000 and len(pcm) == 100 + 500
    assert np.array_equal(pcm[:100], before[-100:]) and np.all(pcm[100:] == 200)
    assert buf.stop() is None  # nothing collected after the turn ended
    buf.start()
    for _ in range(30):
        buf.add(np.ones(100, np.int16).tobytes(), 1000, 1)  # 3 s: only the latest 1 s is kept
    assert len(buf.stop()[0]) == 1000
    buf.add(np.ones(100, np.int16).tobytes(), 1000, 1)
    buf.start()
    buf.add(np.ones(160, np.int16).tobytes(), 16000, 1)  # the rate changed: the 1 kHz pre-roll is dropped
    pcm, rate = buf.stop()
    assert rate == 16000 and len(pcm) == 160


def test_wav_bytes_and_level():
    pcm = (np.sin(np.linspace(0, 200, 8000)) * 8000).astype(np.int16)
    data, rate = sf.read(io.BytesIO(wav_bytes(pcm, 8000)), dtype="int16")
    assert rate == 8000 and np.array_equal(data, pcm)
    assert peak_level_dbfs(np.zeros(100, np.int16), 8000) == float("-inf")
    # A sine of amplitude 8000/32768 has an RMS of that over sqrt(2): -15.3 dBFS (a 50 ms window
    # holds 1.6 of this 32 Hz sine's periods, so its loudest window reads a little above).
    assert peak_level_dbfs(pcm, 8000) == pytest.approx(20 * np.log10(8000 / 32768 / np.sqrt(2)), abs=0.5)
    # A soft speaker: 0.2 s at -41 dBFS in 4 s of pause is about -54 dBFS over the whole turn, but
    # its loudest 50 ms are what tells speech from silence.
    burst = (np.sin(np.arange(3200) * 0.3) * 400).astype(np.int16)
    soft = np.concatenate([np.zeros(30000, np.int16), burst, np.zeros(30000, np.int16)])
    assert peak_level_dbfs(soft, 16000) == pytest.approx(20 * np.log10(400 / 32768 / np.sqrt(2)), abs=0.2)
    assert peak_level_dbfs(soft[:10], 16000) == float("-inf")  # shorter than a window: the whole of it


# --- against a real worker ------------------------------------------------------------------


@pytest.mark.broker
def test_a_turn_gives_one_emotion_frame_and_everything_else_passes_unchanged(start_worker, serq_env, amqp_url,
                                                                             prefix):
    start_worker()
    pcm, rate = sf.read(ANGRY, dtype="int16")
    sent = turn(pcm, rate, trailing_s=1.0)
    processor = SerqEmotionProcessor(llm_note=True, preroll_s=0.0)  # settings from the environment
    assert processor.settings.prefix == prefix
    down = run(processor, sent)

    async def direct():
        async with AsyncClient(amqp_url, prefix, timeout=60) as client:
            return await client.classify(ANGRY)

    expected = asyncio.run(direct())
    assert passed_through(down, sent)
    emotions = [f for f in down if isinstance(f, EmotionFrame)]
    assert len(emotions) == 1
    emotion = emotions[0]
    assert (emotion.label, emotion.model_version) == (expected.label, expected.model_version)
    assert emotion.confidence == pytest.approx(expected.confidence, abs=1e-9)
    assert emotion.probabilities == pytest.approx(expected.probabilities, abs=1e-9)
    assert emotion.duration_s == pytest.approx(len(pcm) / rate, abs=FRAME_S)
    # Classified in a task of its own: the audio after the turn's end was not held up behind it.
    stop = next(i for i, f in enumerate(down) if isinstance(f, UserStoppedSpeakingFrame))
    assert isinstance(down[stop + 1], InputAudioRawFrame)
    assert down.index(emotion) > stop + 1
    (note,) = [f for f in down if isinstance(f, LLMMessagesAppendFrame)]
    assert down.index(note) == down.index(emotion) + 1 and note.run_llm is False
    assert note.messages == [{"role": "system",
                              "content": f"The user sounds {expected.label}, {100 * expected.confidence:.0f} % "
                                         "(from the tone of voice)."}]


@pytest.mark.broker
def test_any_rate_stereo_turns_and_upstream_turn_frames(start_worker, amqp_url, prefix):
    """48 kHz stereo, with the turn frames travelling upstream (as the user aggregator broadcasts them)."""
    soxr = pytest.importorskip("soxr")
    start_worker()
    pcm16, rate = sf.read(ANGRY, dtype="float32")
    mono = soxr.resample(pcm16, rate, 48000)
    stereo = (np.stack([mono, mono], axis=1) * 32767).astype(np.int16)
    audio = audio_frames(stereo, 48000, channels=2)

    async def main():
        processor = SerqEmotionProcessor(settings=Settings(amqp_url=amqp_url, prefix=prefix), preroll_s=0.0)
        # Audio goes downstream; the turn frames come up from the aggregator further down.
        started, stopped = UserStartedSpeakingFrame(), UserStoppedSpeakingFrame()
        down_q, up_q = asyncio.Queue(), asyncio.Queue()
        source = QueuedFrameProcessor(queue=up_q, queue_direction=FrameDirection.UPSTREAM)
        sink = QueuedFrameProcessor(queue=down_q, queue_direction=FrameDirection.DOWNSTREAM)
        worker = PipelineWorker(Pipeline([source, processor, sink]), cancel_on_idle_timeout=False)
        ready = asyncio.Event()

        @worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            ready.set()

        async def feed():
            await asyncio.wait_for(ready.wait(), 30)
            await worker.queue_frame(started, FrameDirection.UPSTREAM)
            while up_q.empty():  # the start has passed the processor before any audio
                await asyncio.sleep(0.01)
            for frame in audio:
                await worker.queue_frame(frame)
            while down_q.qsize() < len(audio):  # all audio is through before the turn ends
                await asyncio.sleep(0.01)
            await worker.queue_frame(stopped, FrameDirection.UPSTREAM)
            await worker.queue_frame(EndFrame())

        runner = WorkerRunner()
        await runner.add_workers(worker)
        await asyncio.gather(runner.run(), feed())
        down = [down_q.get_nowait() for _ in range(down_q.qsize())]
        up = [up_q.get_nowait() for _ in range(up_q.qsize())]
        return down, up

    down, up = asyncio.run(main())
    assert [type(f) for f in up] == [UserStartedSpeakingFrame, UserStoppedSpeakingFrame]
    emotions = [f for f in down if isinstance(f, EmotionFrame)]
    assert len(emotions) == 1 and emotions[0].label
    assert emotions[0].duration_s == pytest.approx(len(pcm16) / rate, abs=2 * FRAME_S)
    assert [f for f in down if isinstance(f, InputAudioRawFrame)] == audio


@pytest.mark.broker
def test_in_the_documented_arrangement_the_note_reaches_the_llm_context(start_worker, amqp_url, prefix):
    """transport -> serq -> (STT) -> user aggregator with Silero VAD: the turn frames come up from the
    aggregator and serq's note lands in the LLM context. No STT runs offline, so the transcript an
    STT would send is queued as its TranscriptionFrame."""
    start_worker()
    pcm, rate = sf.read(ANGRY, dtype="int16")
    speech = audio_frames(pcm, rate)
    silence = audio_frames(np.zeros(2 * rate, np.int16), rate)
    context = LLMContext([{"role": "system", "content": "You are a voice assistant."}])
    params = LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    user = LLMContextAggregatorPair(context, user_params=params).user()
    serq = SerqEmotionProcessor(settings=Settings(amqp_url=amqp_url, prefix=prefix), llm_note=True)

    async def main():
        down_q, up_q = asyncio.Queue(), asyncio.Queue()
        source = QueuedFrameProcessor(queue=up_q, queue_direction=FrameDirection.UPSTREAM)
        sink = QueuedFrameProcessor(queue=down_q, queue_direction=FrameDirection.DOWNSTREAM)
        worker = PipelineWorker(Pipeline([source, serq, user, sink]), cancel_on_idle_timeout=False)
        ready, down, up = asyncio.Event(), [], []

        @worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            ready.set()

        async def until(condition, what: str, timeout: float = 60.0):
            deadline = time.monotonic() + timeout
            while True:
                while not down_q.empty():
                    down.append(down_q.get_nowait())
                while not up_q.empty():
                    up.append(up_q.get_nowait())
                if condition():
                    return
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                await asyncio.sleep(0.002)

        def audio_out() -> int:
            return sum(isinstance(f, InputAudioRawFrame) for f in down)

        async def feed():
            await asyncio.wait_for(ready.wait(), 30)
            for n, frame in enumerate(speech + silence, 1):  # in lock-step, as a live microphone paces them
                await worker.queue_frame(frame)
                await until(lambda n=n: audio_out() >= n, "the audio")
                if n == len(speech):
                    await worker.queue_frame(TranscriptionFrame(text="I can't believe you did that", user_id="caller",
                                                                timestamp=time_now_iso8601()))
            await until(lambda: any(isinstance(f, EmotionFrame) for f in down), "serq's emotion")
            await worker.queue_frame(EndFrame())

        runner = WorkerRunner()
        await runner.add_workers(worker)
        await asyncio.gather(runner.run(), feed())
        return down, up

    down, up = asyncio.run(main())
    assert sum(isinstance(f, UserStoppedSpeakingFrame) for f in up) == 1  # the turn came up from the aggregator
    (emotion,) = [f for f in down if isinstance(f, EmotionFrame)]
    assert emotion.duration_s > 1.0
    messages = context.get_messages()
    note = {"role": "system", "content": f"The user sounds {emotion.label}, {100 * emotion.confidence:.0f} % "
                                         "(from the tone of voice)."}
    assert messages[1] == {"role": "user", "content": "I can't believe you did that"}
    assert note in messages[2:]
    assert [f for f in down if isinstance(f, InputAudioRawFrame)] == speech + silence


@pytest.mark.broker
def test_short_and_silent_turns_give_no_frame(start_worker, amqp_url, prefix):
    start_worker()
    pcm, rate = sf.read(ANGRY, dtype="int16")
    sent = [*turn(pcm[: int(0.3 * rate)], rate), *turn(np.zeros(2 * rate, np.int16), rate),
            *turn(np.full(2 * rate, 3, np.int16), rate)]  # -80 dBFS of hum: silent too
    down = run(SerqEmotionProcessor(settings=Settings(amqp_url=amqp_url, prefix=prefix)), sent)
    assert passed_through(down, sent)
    assert not [f for f in down if isinstance(f, EmotionFrame)]


@pytest.mark.broker
def test_private_turns_are_copied_to_no_follower(start_worker, amqp_url, prefix):
    """``private=True``: the turn's EmotionFrame comes, and followers on ``<p>.results`` see no copy of it (the
    default, as the clients', copies each turn's result: the public turn after it is the marker)."""
    start_worker()
    pcm, rate = sf.read(ANGRY, dtype="int16")
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    seen: list[str] = []

    async def two_turns():
        async with AsyncClient(settings=settings, timeout=60) as client:
            subscription = await client.subscribe(None, lambda result, key: seen.append(result.request_id))
            frames = []
            for private in (True, False):
                processor = SerqEmotionProcessor(client=client, private=private, preroll_s=0.0)
                down, _ = await run_test(processor, frames_to_send=turn(pcm, rate, trailing_s=0.5), start_timeout=30.0)
                frames.append([f for f in down if isinstance(f, EmotionFrame)])
            public = frames[1][0].result.request_id
            deadline = time.monotonic() + 30
            while public not in seen and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await subscription.close()
            return frames

    frames = asyncio.run(two_turns())
    assert [len(f) for f in frames] == [1, 1]
    hidden, shown = frames[0][0].result.request_id, frames[1][0].result.request_id
    # One worker answers in order and publishes a copy right after its reply: a copy of the private turn would
    # have come before the public turn's (sent only once the private one was answered).
    assert shown in seen and hidden not in seen, (hidden, shown, seen)


@pytest.mark.broker
def test_serq_errors_are_warnings_never_a_broken_pipeline(start_worker, amqp_url, prefix, caplog):
    start_worker(env={"SERQ_MAX_SECONDS": "2"})  # the worker refuses the 3.8 s turn: too_long
    pcm, rate = sf.read(ANGRY, dtype="int16")
    sent = turn(pcm, rate)
    with caplog.at_level(logging.WARNING, logger="serq.client.pipecat"):
        down = run(SerqEmotionProcessor(settings=Settings(amqp_url=amqp_url, prefix=prefix)), sent)
        assert passed_through(down, sent) and not [f for f in down if isinstance(f, EmotionFrame)]
        assert "[too_long]" in caplog.text
        caplog.clear()
        # No broker at all: a warning at setup and at the turn; the frames still flow.
        nowhere = SerqEmotionProcessor(settings=Settings(amqp_url="amqp://guest:s3cret@127.0.0.1:1/%2F", prefix=prefix))
        down = run(nowhere, sent)
    assert passed_through(down, sent)
    assert caplog.text.count("[no_broker]") == 2 and "s3cret" not in caplog.text


@pytest.mark.broker
@pytest.mark.corpus
def test_a_sessions_speaker_profile_is_used_and_kept(start_worker, amqp_url, prefix, ravdess_dir, tmp_path):
    start_worker()
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    calm = list(dict.fromkeys(ravdess_clip(14, e, i, s, r) for e, i in ((1, 1), (2, 1), (2, 2))
                              for s in (1, 2) for r in (1, 2)))[:10]
    store = ProfileStore(tmp_path / "profiles")

    async def enrol():
        async with AsyncClient(settings=settings, timeout=60) as client:
            return await AsyncSpeakerProfiles(client, store=store).enroll("caller-14", calm, updates=True)

    profile = asyncio.run(enrol())
    pcm, rate = sf.read(ravdess_clip(14, 5, 2, 1, 1), dtype="int16")
    down = run(SerqEmotionProcessor(settings=settings, speaker="caller-14", profiles=tmp_path / "profiles"),
               turn(pcm, rate))
    (emotion,) = [f for f in down if isinstance(f, EmotionFrame)]
    assert emotion.speaker == "caller-14"
    assert (emotion.result.normalisation, emotion.result.profile_status) == ("speaker", "used")
    assert store.get("caller-14").count == profile.count + 1  # the reply's updated profile was stored


@pytest.mark.broker
def test_the_documented_local_pipeline_runs(start_worker, amqp_url, prefix):
    """docs/examples/pipecat_emotions.py: file -> Silero VAD -> serq, with a real worker."""
    start_worker()
    run = subprocess.run([sys.executable, str(REPO / "docs" / "examples" / "pipecat_emotions.py"), str(ANGRY)],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, SERQ_AMQP_URL=amqp_url, SERQ_PREFIX=prefix))
    assert run.returncode == 0, run.stderr[-3000:]
    labels = re.findall(r"^EmotionFrame#\d+\(label: (\w+), confidence: [01]\.\d\d", run.stdout, re.M)
    assert len(labels) == 1 and labels[0] in EMOTIONS, run.stdout
