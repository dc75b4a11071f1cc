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
docs/timeline.md), so chunks can go to any worker. One request is in flight per
stream at a time (the next chunk needs the previous reply); run streams in
parallel for throughput. Not thread-safe: one stream per thread.

Needs numpy and soundfile (base install); soxr only to resample files not at 16 kHz.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable

import numpy as np
import pika

from serq.schemas import ErrorReply
from serq.schemas.contract import type_name
from serq.schemas.timeline import (
    PCM_CONTENT_TYPE,
    TIMELINE_CHUNK,
    Timeline,
    TimelineChunkResult,
    TimelineSegment,
)
from serq.settings import Settings, get_settings

from .amqp import CONNECTION_ERRORS, Backoff, connect
from .errors import BrokerUnavailable, ClientError, ConnectionLost, ServiceError, Timeout
from .topology import declare_classify

logger = logging.getLogger("serq.client.timeline")

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
#: Default chunk length, seconds: a segment is reported within about this plus a pause after it ends.
CHUNK_S = 5.0


class TimelineStream:
    """One recording streamed in chunks. ``send(samples)`` returns the reply to that chunk.

    Args:
        client: a :class:`serq.client.Client` (its URL and prefix are used) or ``None`` for the environment's.
        stream_id: names the stream in the headers and logs (default: random).
        timeout: seconds to wait for each chunk's reply (default ``SERQ_REQUEST_TIMEOUT``).
    """

    def __init__(self, client=None, *, stream_id: str | None = None, timeout: float | None = None,
                 settings: Settings | None = None):
        self.settings = settings or getattr(client, "settings", None) or get_settings()
        self.timeout = timeout or self.settings.request_timeout
        self.stream_id = stream_id or uuid.uuid4().hex[:16]
        self.segments: list[TimelineSegment] = []
        self.last: TimelineChunkResult | None = None
        self._seq = 0
        self._offset = 0  # sample index of self._tail[0]
        self._tail = np.zeros(0, np.float32)
        self._replies: dict[str, tuple[str | None, bytes]] = {}
        self._conn = self._ch = None
        self._queue = self.settings.name("classify")
        self._connect()

    # --- connection ----------------------------------------------------------------------------

    def _connect(self) -> None:
        conn = connect(self.settings, "serq-timeline")
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            declare_classify(ch, self.settings)
            ch.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)
        except BaseException:
            conn.close()
            raise
        self._conn, self._ch = conn, ch

    def _on_reply(self, ch, method, props, body: bytes) -> None:
        self._replies[props.correlation_id or ""] = (props.type, body)

    def _drop(self) -> None:
        conn, self._conn, self._ch = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except CONNECTION_ERRORS:
                pass

    def _request(self, body: bytes, headers: dict) -> tuple[str | None, bytes]:
        """Publish one chunk and wait for its reply; on a lost connection reconnect and send it again.

        Re-sending is safe: a worker's answer depends only on the chunk and its state.
        """
        deadline = time.monotonic() + self.timeout
        cid = uuid.uuid4().hex
        backoff = Backoff(self.settings.reconnect_max_s)
        sent = False
        while True:
            try:
                if self._conn is None:
                    self._connect()
                if not sent:
                    props = pika.BasicProperties(
                        reply_to=DIRECT_REPLY_TO, correlation_id=cid, type=TIMELINE_CHUNK,
                        content_type=PCM_CONTENT_TYPE, headers=headers,
                        expiration=str(max(1, int((deadline - time.monotonic()) * 1000))),
                    )
                    self._ch.basic_publish("", self._queue, body, props)
                    sent = True
                while cid not in self._replies:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Timeout(f"no reply to chunk {headers['x-serq-seq']} of stream {self.stream_id} within "
                                      f"{self.timeout:g} s: is a worker (`serq worker`) consuming {self._queue}?")
                    self._conn.process_data_events(time_limit=min(left, 0.5))
                return self._replies.pop(cid)
            except (BrokerUnavailable, *CONNECTION_ERRORS) as exc:
                self._drop()
                sent = False
                if not backoff.sleep(deadline):
                    raise ConnectionLost(f"lost the connection to RabbitMQ during stream {self.stream_id}: {exc}") from None

    def close_connection(self) -> None:
        self._drop()

    def __enter__(self) -> "TimelineStream":
        return self

    def __exit__(self, *exc) -> None:
        self._drop()

    # --- the stream ----------------------------------------------------------------------------

    def send(self, samples: np.ndarray, *, final: bool = False) -> TimelineChunkResult:
        """Send the next stretch of audio (mono float32 at 16 kHz); return the worker's reply.

        The reply's ``segments`` are final; ``pending`` is the provisional label of
        speech still going on. Raises :class:`ServiceError` for an error reply.
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
        amqp_type, payload = self._request(body, headers)
        if amqp_type != type_name(TimelineChunkResult):
            reply = ErrorReply.model_validate_json(payload)
            raise ServiceError(reply.error.message, code=reply.error.code, reply=reply)
        result = TimelineChunkResult.model_validate_json(payload)
        # Keep only what the next chunk must re-send: the audio from next_offset on.
        self._tail = audio[result.next_offset - self._offset :].copy()
        self._offset = result.next_offset
        self._seq += 1
        self.last = result
        self.segments.extend(result.segments)
        return result

    def close(self, file: str | None = None) -> Timeline:
        """End the stream (a last, empty chunk) and return the whole timeline."""
        result = self.send(np.zeros(0, np.float32), final=True)
        state = result.state
        self._drop()
        return Timeline.build(self.segments, duration_s=result.duration_s, labels=state.labels,
                              model_version=state.model_version, params=state.params, file=file)


def stream_timeline(client, source: str | os.PathLike | Iterable[np.ndarray],
                    on_segment: Callable[[TimelineSegment], None] | None = None, *, chunk_s: float = CHUNK_S,
                    timeout: float | None = None, stream_id: str | None = None) -> Timeline:
    """The timeline of a recording computed by the workers, chunk by chunk.

    Args:
        client: a :class:`serq.client.Client` (or ``None``: settings from the environment).
        source: an audio file (read ``chunk_s`` at a time, resampled to 16 kHz) or an
            iterable of mono float32 16 kHz arrays (each sent as one chunk).
        on_segment: called with each segment as soon as a worker decides it.
    """
    if isinstance(source, (str, os.PathLike)):
        from serq.worker.timeline import read_blocks

        settings = getattr(client, "settings", None) or get_settings()
        blocks: Iterable[np.ndarray] = read_blocks(source, block_s=chunk_s, max_seconds=settings.max_recording_seconds)
        name = os.fspath(source)
    else:
        blocks, name = source, None
    with TimelineStream(client, stream_id=stream_id, timeout=timeout) as stream:
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
