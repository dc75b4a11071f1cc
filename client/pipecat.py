"""A Pipecat plugin: the user's emotion at the end of every turn, from serq, as a frame.

::

    from serq.client.pipecat import EmotionFrame, SerqEmotionProcessor

    pipeline = Pipeline([transport.input(), SerqEmotionProcessor(), stt, user_aggregator, llm, tts,
                         transport.output(), assistant_aggregator])

:class:`SerqEmotionProcessor` buffers the user's ``InputAudioRawFrame`` audio of a turn
(between ``UserStartedSpeakingFrame`` and ``UserStoppedSpeakingFrame``, in whichever direction
they travel; or between the VAD's frames with ``turn_frames="vad"``), and when the turn ends
classifies it through :class:`serq.client.aio.AsyncClient` in a task of its own, then pushes
an :class:`EmotionFrame` downstream. Every frame passes through at once, unchanged and in
order: the pipeline never waits for serq. A turn too short or silent gives no frame; a serq
failure gives a logged warning, never a broken pipeline.

Needs the ``pipecat`` extra (``pip install 'serq[pipecat]'``). See docs/assistants.md.
"""

from __future__ import annotations

import asyncio
import io
import logging
import wave
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    DataFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMMessagesAppendFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from serq.client.aio import AsyncClient
from serq.client.profiles import ProfileStore, profile_headers, updated_profile
from serq.errors import SerqError
from serq.schemas import PredictionResult
from serq.settings import Settings, get_settings

logger = logging.getLogger("serq.client.pipecat")

#: The LLM note's default wording; ``{label}``, ``{percent}`` (0-100) and ``{confidence}`` (0-1) are filled in.
NOTE = "The user sounds {label}, {percent:.0f} % (from the tone of voice)."


@dataclass
class EmotionFrame(DataFrame):
    """The emotion serq heard in the user's last turn.

    Parameters:
        label: the most probable emotion (``angry``, ``calm``...).
        confidence: its probability, 0..1.
        probabilities: every class's probability.
        model_version: the model that answered.
        speaker: the session's speaker key, when a profile was used or asked for.
        duration_s: the length of the turn's audio that was classified.
        result: serq's whole reply (timings, ``normalisation``, ``profile_status``...).
    """

    label: str
    confidence: float
    probabilities: dict[str, float]
    model_version: str
    speaker: str | None = None
    duration_s: float = 0.0
    result: PredictionResult | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return f"{self.name}(label: {self.label}, confidence: {self.confidence:.2f}, turn: {self.duration_s:.1f} s)"


class TurnAudio:
    """The user's audio of one turn as 16-bit PCM, mono, at the input's rate.

    Keeps ``preroll_s`` of audio from before the turn starts (the VAD reports a start only
    after some speech has passed) and at most ``max_s`` of a turn (the latest). Pure
    bookkeeping: appends bytes, no I/O.
    """

    def __init__(self, *, preroll_s: float = 0.5, max_s: float = 60.0):
        self.preroll_s, self.max_s = preroll_s, max_s
        self.active = False
        self.rate: int | None = None
        self._chunks: deque[np.ndarray] = deque()
        self._samples = 0

    def add(self, audio: bytes, sample_rate: int, num_channels: int) -> None:
        if sample_rate != self.rate:  # a new input format: what was kept is of another rate
            self._chunks.clear()
            self._samples = 0
            self.rate = sample_rate
        pcm = np.frombuffer(audio[: len(audio) // (2 * num_channels) * 2 * num_channels], dtype="<i2")
        if num_channels > 1:
            pcm = pcm.reshape(-1, num_channels).mean(axis=1).astype("<i2")
        self._chunks.append(pcm)
        self._samples += len(pcm)
        limit = int((self.max_s if self.active else self.preroll_s) * sample_rate)
        while self._chunks and self._samples - len(self._chunks[0]) >= limit:
            self._samples -= len(self._chunks.popleft())
        if self._samples > limit:  # cut the oldest chunk to the sample
            excess = self._samples - limit
            self._chunks[0] = self._chunks[0][excess:]
            self._samples -= excess

    def start(self) -> None:
        """The turn starts: keep the pre-roll, collect until :meth:`stop`."""
        self.active = True

    def stop(self) -> tuple[np.ndarray, int] | None:
        """The turn ends: its audio and rate (``None`` if there was none); collecting stops."""
        was_active, self.active = self.active, False
        chunks, self._chunks, self._samples = self._chunks, deque(), 0
        if not was_active or not chunks or not self.rate:
            return None
        return np.concatenate(list(chunks)), self.rate


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM as a WAV file's bytes (what the worker decodes; it resamples any rate)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.astype("<i2", copy=False).tobytes())
    return out.getvalue()


def peak_level_dbfs(pcm: np.ndarray, rate: int, window_s: float = 0.05) -> float:
    """The RMS level of the loudest ``window_s`` stretch of 16-bit PCM, dB below full scale (-inf: digital silence).

    The loudest stretch, not the whole turn: a quiet speaker's turn is mostly pauses (RAVDESS's
    softest clips are below -60 dBFS overall, but their loudest 50 ms are above -55).
    """
    if not len(pcm):
        return float("-inf")
    n = min(len(pcm), max(1, int(rate * window_s)))
    windows = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    rms = float(np.sqrt(np.mean(np.square(windows), axis=1)).max())
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


class SerqEmotionProcessor(FrameProcessor):
    """Classifies each user turn's emotion through serq and pushes an :class:`EmotionFrame`.

    Place it where the user's ``InputAudioRawFrame``\\ s flow, e.g. right after
    ``transport.input()`` (before the STT). With no arguments it uses the settings
    ``Client()`` uses (``SERQ_AMQP_URL``, ``SERQ_PREFIX``, ``SERQ_REQUEST_TIMEOUT``).

    Args:
        client: an :class:`~serq.client.aio.AsyncClient` to share between sessions (not closed
            here); default: one of its own from ``settings``, opened at setup, closed at cleanup.
        settings: serq settings (default: the environment's).
        speaker: this session's speaker key: its profile (from ``profiles``) goes with every turn
            and the updated profile a reply carries is stored. ``None``: no profile.
        profiles: a :class:`~serq.client.profiles.ProfileStore` or a directory of profiles
            (as ``serq profiles`` keeps them); default: in memory.
        llm_note: also push an ``LLMMessagesAppendFrame`` with a short system note (``note``)
            for the LLM context aggregator, so the assistant can answer in kind.
        note: the note's wording, see :data:`NOTE`.
        min_confidence: no frame (and no note) below this confidence.
        min_turn_s: turns shorter than this are not classified.
        silence_dbfs: turns whose loudest 50 ms are quieter than this are not sent (the worker,
            whose own floor is -55 dBFS, decides anything louder; a clip it finds silent gives no frame).
        preroll_s: audio kept from before the turn's start frame.
        turn_frames: ``"user"``: turns are ``UserStarted/StoppedSpeakingFrame`` (the user
            aggregator's turns); ``"vad"``: ``VADUserStarted/StoppedSpeakingFrame`` (a bare VAD).
        timeout: seconds to wait for serq's answer (default ``SERQ_REQUEST_TIMEOUT``).
        private: no copy of a turn's result goes to followers on ``<prefix>.results``
            (``AsyncClient.classify(private=True)``). Default ``False``, as the clients': a
            deployment's followers (dashboards, ``serq follow``) see every turn's emotion, never its
            audio or file name; set it when nobody else should learn how the user sounds.
    """

    def __init__(self, *, client: AsyncClient | None = None, settings: Settings | None = None,
                 speaker: str | None = None, profiles: ProfileStore | str | Path | None = None,
                 llm_note: bool = False, note: str = NOTE, min_confidence: float = 0.0,
                 min_turn_s: float = 0.5, silence_dbfs: float = -60.0, preroll_s: float = 0.5,
                 turn_frames: Literal["user", "vad"] = "user", timeout: float | None = None,
                 private: bool = False, **kwargs):
        super().__init__(**kwargs)
        self._own_client = client is None
        self._client = client or AsyncClient(settings=settings or get_settings())
        self.settings = self._client.settings
        self.speaker = speaker
        self.profiles = profiles if isinstance(profiles, ProfileStore) else ProfileStore(profiles)
        self.llm_note, self.note, self.min_confidence = llm_note, note, min_confidence
        self.min_turn_s, self.silence_dbfs = min_turn_s, silence_dbfs
        self.timeout = timeout or self.settings.request_timeout
        self.private = private
        if turn_frames == "user":
            self._starts, self._stops = UserStartedSpeakingFrame, UserStoppedSpeakingFrame
        elif turn_frames == "vad":
            self._starts, self._stops = VADUserStartedSpeakingFrame, VADUserStoppedSpeakingFrame
        else:
            raise ValueError('turn_frames must be "user" or "vad"')
        self._turn = TurnAudio(preroll_s=preroll_s, max_s=self.settings.max_seconds)
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle -----------------------------------------------------------------------------

    async def setup(self, setup) -> None:
        await super().setup(setup)
        try:  # connect now, off the first turn's path; failing here is a warning, retried per turn
            await self._client.connect()
        except SerqError as exc:
            logger.warning("serq: %s [%s]; emotions will be missing until the broker answers", exc, exc.code)

    async def cleanup(self) -> None:
        for task in list(self._tasks):
            await self.cancel_task(task)
        if self._own_client:
            await self._client.close()
        await super().cleanup()

    def set_speaker(self, speaker: str | None) -> None:
        """Name the session's speaker once known (e.g. after caller identification); ``None`` for none."""
        self.speaker = speaker

    # --- frames --------------------------------------------------------------------------------

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, EndFrame):
            await self._drain()  # an orderly end: let the last turn's emotion out before it
        elif isinstance(frame, CancelFrame):
            for task in list(self._tasks):
                task.cancel()
        await self.push_frame(frame, direction)  # first: audio is never held up by what follows
        if isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            self._turn.add(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, self._starts):
            self._turn.start()
        elif isinstance(frame, self._stops):
            self._end_turn()

    def _end_turn(self) -> None:
        turn = self._turn.stop()
        if turn is None:
            return
        pcm, rate = turn
        duration = len(pcm) / rate
        if duration < self.min_turn_s:
            logger.debug("serq: a turn of %.2f s is too short to classify", duration)
            return
        if (level := peak_level_dbfs(pcm, rate)) < self.silence_dbfs:
            logger.debug("serq: a silent turn (%.0f dBFS at its loudest) is not classified", level)
            return
        task = self.create_task(self._classify(pcm, rate, self.speaker), name="serq_classify_turn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.timeout + 5)

    async def _classify(self, pcm: np.ndarray, rate: int, speaker: str | None) -> None:
        try:
            body = await asyncio.to_thread(wav_bytes, pcm, rate)  # a minute of audio is 2 MB to copy
            profile = await asyncio.to_thread(self.profiles.get, speaker) if speaker else None
            result = await self._client.classify(body, timeout=self.timeout, filename="turn.wav",
                                                 headers=profile_headers(profile), private=self.private)
            if (updated := updated_profile(profile, result)) is not None:
                await asyncio.to_thread(self.profiles.put, updated)
        except SerqError as exc:
            logger.warning("serq: no emotion for this turn: %s [%s]", exc, exc.code)
            return
        except Exception:  # a bug or an unforeseen broker error must not end the call: say so and go on
            logger.warning("serq: no emotion for this turn (unexpected failure)", exc_info=True)
            return
        if result.silent or result.label is None or result.confidence < self.min_confidence:
            return
        emotion = EmotionFrame(label=result.label, confidence=result.confidence,
                               probabilities=dict(result.probabilities), model_version=result.model_version,
                               speaker=speaker, duration_s=len(pcm) / rate, result=result)
        await self.push_frame(emotion)
        if self.llm_note:
            text = self.note.format(label=result.label, percent=100 * result.confidence,
                                    confidence=result.confidence)
            await self.push_frame(LLMMessagesAppendFrame(messages=[{"role": "system", "content": text}],
                                                         run_llm=False))


__all__ = ["NOTE", "EmotionFrame", "SerqEmotionProcessor", "TurnAudio"]
