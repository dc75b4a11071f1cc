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

Needs numpy and soundfile (base install); soxr only to resample files not at 16 kHz.
"""

from __future__ import annotations

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


class TimelineStream:
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
        self._own = client is None
        self.client = client or Client(settings=settings or get_settings())
        self.settings = self.client.settings
        self.timeout = timeout or self.settings.request_timeout
        self.stream_id = stream_id or uuid.uuid4().hex[:16]
        self.segments: list[TimelineSegment] = []
        self.last: TimelineChunkResult | None = None
        self._seq = 0
        self._offset = 0  # sample index of self._tail[0]
        self._tail = np.zeros(0, np.float32)
        self._profile = profile.model_dump_json() if profile is not None else None

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
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError("samples must be mono: shape (n,)")
        audio = np.concatenate([self._tail, samples])
        body = audio.astype("<f4", copy=False).tobytes()
        if len(body) > self.settings.max_bytes:
            raise ClientError(f"a chunk of {len(body)} bytes exceeds SERQ_MAX_BYTES ({self.settings.max_bytes}); "
                              "send shorter chunks", code="too_large")
        headers = {"x-serq-stream-id": self.stream_id, "x-serq-seq": self._seq, "x-serq-offset": self._offset,
                   "x-serq-final": final}
        if self.last is not None:
            headers["x-serq-state"] = self.last.state.model_dump_json()
        if self._profile is not None:
            headers[PROFILE_HEADER] = self._profile
        result = self.client.call(body, type=TIMELINE_CHUNK, headers=headers, timeout=self.timeout)
        if not isinstance(result, TimelineChunkResult):
            raise ClientError(f"unexpected reply {type(result).__name__} to a timeline chunk", code="invalid_request")
        # Keep only what the next chunk must re-send: the audio from next_offset on.
        self._tail = audio[result.next_offset - self._offset :].copy()
        self._offset = result.next_offset
        self._seq += 1
        self.last = result
        self.segments.extend(result.segments)
        return result

    def close(self, file: str | None = None) -> Timeline:
        """End the stream (a last chunk with no new audio) and return the whole timeline."""
        result = self.send(np.zeros(0, np.float32), final=True)
        state = result.state
        return Timeline.build(self.segments, duration_s=result.duration_s, labels=state.labels,
                              model_version=state.model_version, params=state.params, file=file,
                              profile_status=state.profile_status)


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
    if isinstance(source, (str, os.PathLike)):
        settings = getattr(client, "settings", None) or get_settings()
        blocks: Iterable[np.ndarray] = read_blocks(source, TIMELINE_RATE, block_s=chunk_s,
                                                   max_seconds=settings.max_recording_seconds)
        name = os.fspath(source)
    else:
        blocks, name = source, None
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
