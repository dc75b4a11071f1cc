"""Streaming a long recording through the broker: chunks in, segments out as they are decided.

::

    from serq.client import Client
    from serq.client.timeline import stream_timeline

    with Client() as client:
        timeline = stream_timeline(client, "call.wav", on_segment=print)

or, for a live call, chunk by chunk::

    with TimelineStream(client) as stream:
        for pcm in microphone():             # float32, mono, 16 kHz
            for seg in stream.send(pcm).segments:
                alert(seg)
        timeline = stream.close()

Workers keep no state: every reply carries the stream's state and the offset from
which the next chunk must re-send audio; this module sends both back with the
next chunk (``timeline.chunk`` requests on ``<prefix>.classify``, see
docs/timeline.md), so chunks can go to any worker of the deployment. The state is
sealed by the workers (``SERQ_STATE_KEY``): it is carried back as it came, never changed. One request is in flight per
stream at a time (the next chunk needs the previous reply); run streams in
parallel for throughput. Not thread-safe: one stream per thread.

The same for asyncio: :class:`AsyncTimelineStream` and :func:`astream_timeline` take an
:class:`serq.client.aio.AsyncClient` (the ``async`` extra) and share the bookkeeping
(:class:`StreamCursor`) with the sync stream.

Needs numpy and soundfile (base install); soxr only to resample files not at 16 kHz.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import uuid
from collections.abc import Callable, Iterable

import numpy as np

from serq.audiofile import read_blocks
from serq.client.client import Client
from serq.client.errors import ClientError
from serq.schemas.profiles import PROFILE_HEADER, SpeakerProfile
from serq.schemas.timeline import (
    TIMELINE_CHUNK,
    TIMELINE_RATE,
    Timeline,
    TimelineChunkResult,
    TimelineSegment,
)
from serq.settings import Settings, get_settings

#: Default chunk length, seconds: a segment is reported within about this plus a pause after it ends.
CHUNK_S = 5.0


class StreamCursor:
    """Where a stream stands: what the next chunk must carry and how a reply moves it on.

    Pure bookkeeping shared by :class:`TimelineStream` and :class:`AsyncTimelineStream`:
    :meth:`chunk` builds a request body and headers, :meth:`advance` takes the reply.
    """

    def __init__(self, stream_id: str, max_bytes: int, profile: SpeakerProfile | None = None):
        self.stream_id, self.max_bytes = stream_id, max_bytes
        self.segments: list[TimelineSegment] = []
        self.last: TimelineChunkResult | None = None
        self._seq = 0
        self._offset = 0  # sample index of self._tail[0]
        self._tail = np.zeros(0, np.float32)
        self._profile = profile.model_dump_json() if profile is not None else None

    def chunk(self, samples: np.ndarray, final: bool) -> tuple[np.ndarray, bytes, dict]:
        """``(audio, body, headers)`` of the next chunk: the re-sent tail plus ``samples``."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError("samples must be mono: shape (n,)")
        audio = np.concatenate([self._tail, samples])
        body = audio.astype("<f4", copy=False).tobytes()
        if len(body) > self.max_bytes:
            raise ClientError(f"a chunk of {len(body)} bytes exceeds SERQ_MAX_BYTES ({self.max_bytes}); "
                              "send shorter chunks", code="too_large")
        headers = {"x-serq-stream-id": self.stream_id, "x-serq-seq": self._seq, "x-serq-offset": self._offset,
                   "x-serq-final": final}
        if self.last is not None:
            headers["x-serq-state"] = self.last.state.model_dump_json()
        if self._profile is not None:
            headers[PROFILE_HEADER] = self._profile
        return audio, body, headers

    def advance(self, audio: np.ndarray, result) -> TimelineChunkResult:
        """Take the reply to the chunk of ``audio``; keep only what the next chunk must re-send."""
        if not isinstance(result, TimelineChunkResult):
            raise ClientError(f"unexpected reply {type(result).__name__} to a timeline chunk", code="invalid_request")
        self._tail = audio[result.next_offset - self._offset :].copy()
        self._offset = result.next_offset
        self._seq += 1
        self.last = result
        self.segments.extend(result.segments)
        return result

    def timeline(self, file: str | None = None) -> Timeline:
        """The whole timeline, once the final chunk's reply is in."""
        state = self.last.state
        return Timeline.build(self.segments, duration_s=self.last.duration_s, labels=state.labels,
                              model_version=state.model_version, params=state.params, file=file,
                              profile_status=state.profile_status)


class _Stream:
    """What the sync and the async stream share: their client, settings, timeout, id and cursor.

    ``own``: the stream opened ``client`` itself and closes it with the stream.
    """

    def __init__(self, client, own: bool, stream_id: str | None, timeout: float | None,
                 profile: SpeakerProfile | None):
        self.client, self._own = client, own
        self.settings = client.settings
        self.timeout = timeout or self.settings.request_timeout
        self.stream_id = stream_id or uuid.uuid4().hex[:16]
        self._cursor = StreamCursor(self.stream_id, self.settings.max_bytes, profile)

    @property
    def segments(self) -> list[TimelineSegment]:
        return self._cursor.segments

    @property
    def last(self) -> TimelineChunkResult | None:
        return self._cursor.last


class TimelineStream(_Stream):
    """One recording streamed in chunks. ``send(samples)`` returns the reply to that chunk.

    Requests go through :meth:`serq.client.Client.call` (publisher confirms,
    reconnect and re-send, duplicate replies dropped): re-sending a chunk is safe,
    since a worker's answer depends only on the chunk and its state.

    Args:
        client: a :class:`serq.client.Client`, or ``None`` to open one from ``settings`` (closed with the stream).
        stream_id: names the stream in the headers and logs (default: random).
        timeout: seconds to wait for each chunk's reply (default ``SERQ_REQUEST_TIMEOUT``).
        profile: the speaker's profile (:mod:`serq.client.profiles`), sent with every chunk; with
            enough clips the whole timeline comes from the speaker-normalised model (the
            results' ``normalisation`` and ``profile_status`` say). A timeline never updates it.
    """

    def __init__(self, client: Client | None = None, *, stream_id: str | None = None, timeout: float | None = None,
                 settings: Settings | None = None, profile: SpeakerProfile | None = None):
        super().__init__(client or Client(settings=settings or get_settings()), client is None, stream_id, timeout,
                         profile)

    def __enter__(self) -> "TimelineStream":
        return self

    def __exit__(self, *exc) -> None:
        if self._own:
            self.client.close()

    def send(self, samples: np.ndarray, *, final: bool = False) -> TimelineChunkResult:
        """Send the next stretch of audio (mono float32 at 16 kHz); return the worker's reply.

        The reply's ``segments`` are final; ``pending`` is the provisional label of
        speech still going on. Raises :class:`~serq.client.ServiceError` for an
        error reply, :class:`~serq.client.Timeout`, :class:`~serq.client.ConnectionLost`.
        """
        audio, body, headers = self._cursor.chunk(samples, final)
        result = self.client.call(body, type=TIMELINE_CHUNK, headers=headers, timeout=self.timeout)
        return self._cursor.advance(audio, result)

    def close(self, file: str | None = None) -> Timeline:
        """End the stream (a last chunk with no new audio) and return the whole timeline."""
        self.send(np.zeros(0, np.float32), final=True)
        return self._cursor.timeline(file)


class AsyncTimelineStream(_Stream):
    """:class:`TimelineStream` for asyncio, through a :class:`serq.client.aio.AsyncClient`.

    ``async with AsyncTimelineStream(client) as stream``; ``await stream.send(pcm)``;
    ``await stream.close()`` returns the timeline. Same arguments as :class:`TimelineStream`
    (``client=None`` opens an :class:`~serq.client.aio.AsyncClient`, closed with the stream).
    """

    def __init__(self, client=None, *, stream_id: str | None = None, timeout: float | None = None,
                 settings: Settings | None = None, profile: SpeakerProfile | None = None):
        own = client is None
        if own:
            # Lazy: aio-pika is the `async` extra; the sync stream above must import without it.
            from serq.client.aio import AsyncClient

            client = AsyncClient(settings=settings or get_settings())
        super().__init__(client, own, stream_id, timeout, profile)

    async def __aenter__(self) -> "AsyncTimelineStream":
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own:
            await self.client.close()

    async def send(self, samples: np.ndarray, *, final: bool = False) -> TimelineChunkResult:
        """As :meth:`TimelineStream.send`."""
        audio, body, headers = self._cursor.chunk(samples, final)
        result = await self.client.call(body, type=TIMELINE_CHUNK, headers=headers, timeout=self.timeout)
        return self._cursor.advance(audio, result)

    async def close(self, file: str | None = None) -> Timeline:
        """As :meth:`TimelineStream.close`."""
        await self.send(np.zeros(0, np.float32), final=True)
        return self._cursor.timeline(file)


def _blocks(client, source, chunk_s: float) -> tuple[Iterable[np.ndarray], str | None]:
    """The chunks of ``source`` (a file read ``chunk_s`` at a time at 16 kHz, or arrays) and its name."""
    if isinstance(source, (str, os.PathLike)):
        settings = getattr(client, "settings", None) or get_settings()
        blocks = read_blocks(source, TIMELINE_RATE, block_s=chunk_s, max_seconds=settings.max_recording_seconds)
        return blocks, os.fspath(source)
    return source, None


def stream_timeline(client, source: str | os.PathLike | Iterable[np.ndarray],
                    on_segment: Callable[[TimelineSegment], None] | None = None, *, chunk_s: float = CHUNK_S,
                    timeout: float | None = None, stream_id: str | None = None,
                    profile: SpeakerProfile | None = None) -> Timeline:
    """The timeline of a recording computed by the workers, chunk by chunk.

    Args:
        client: a :class:`serq.client.Client` (or ``None``: settings from the environment).
        source: an audio file (read ``chunk_s`` at a time, resampled to 16 kHz) or an
            iterable of mono float32 16 kHz arrays (each sent as one chunk).
        on_segment: called with each segment as soon as a worker decides it.
        profile: the speaker's profile, as for :class:`TimelineStream`.
    """
    blocks, name = _blocks(client, source, chunk_s)
    with TimelineStream(client, stream_id=stream_id, timeout=timeout, profile=profile) as stream:
        for block in blocks:
            for seg in stream.send(block).segments:
                if on_segment is not None:
                    on_segment(seg)
        done = len(stream.segments)
        timeline = stream.close(file=name)
        if on_segment is not None:
            for seg in timeline.segments[done:]:
                on_segment(seg)
        return timeline


_END = object()


async def astream_timeline(client, source: str | os.PathLike | Iterable[np.ndarray],
                           on_segment: Callable[[TimelineSegment], object] | None = None, *, chunk_s: float = CHUNK_S,
                           timeout: float | None = None, stream_id: str | None = None,
                           profile: SpeakerProfile | None = None) -> Timeline:
    """:func:`stream_timeline` for asyncio: ``client`` is an :class:`~serq.client.aio.AsyncClient` (or ``None``).

    A file is read and resampled in a thread, one chunk at a time, so the loop never waits on
    the disk or the resampler. ``on_segment`` may be a function or a coroutine function.
    """
    blocks, name = await asyncio.to_thread(_blocks, client, source, chunk_s)
    chunks = iter(blocks)

    async def emit(seg: TimelineSegment) -> None:
        if on_segment is not None and inspect.isawaitable(done := on_segment(seg)):
            await done

    async with AsyncTimelineStream(client, stream_id=stream_id, timeout=timeout, profile=profile) as stream:
        while (block := await asyncio.to_thread(next, chunks, _END)) is not _END:
            for seg in (await stream.send(block)).segments:
                await emit(seg)
        done = len(stream.segments)
        timeline = await stream.close(file=name)
        for seg in timeline.segments[done:]:
            await emit(seg)
        return timeline
