"""``timeline.chunk``: one chunk of a streamed recording -> the segments it decides, and the new state.

Workers keep nothing between chunks: the request carries the stream's state
(``x-serq-state``, the previous reply's ``state``) and re-sends the audio tail
the state still needs (the body starts at ``state.keep_from``), so any worker can
take any chunk and the result is exactly the local ``serq timeline``'s. A speaker
profile (``x-serq-profile``) sent with chunk 0 applies to the whole stream, and every
later chunk must send the same one (the state holds its sha256). The state is sealed
under ``SERQ_STATE_KEY`` on the way out and must verify, and fit together, on the way
back in (:func:`parse_state`). See docs/timeline.md for the message format.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from serq.errors import BadAudio, InvalidRequest, ModelError, TooLong
from serq.models.registry import Registry
from serq.schemas.timeline import (
    STATE_VERSION,
    TimelineChunkHeaders,
    TimelineChunkResult,
    TimelineStreamState,
)
from serq.worker.engine.profiles import digest
from serq.worker.engine.sealing import accepted_keys, state_key
from serq.worker.engine.timeline import (
    RATE,
    TimelineProcessor,
    check_state,
    choose_model,
    params_from_settings,
    seal_state,
    sealed_by,
    tail_crc32,
)
from serq.worker.handlers.base import Context, Reply
from serq.worker.handlers.profiles import header_profile, speaker_model

if TYPE_CHECKING:
    import pika

    from serq.worker.engine.model import LoadedModel


def parse_state(raw: str, headers: TimelineChunkHeaders, keys: bytes | list[bytes], *, shared: bool = True
                ) -> TimelineStreamState:
    """The state the client sent back: sealed under one of ``keys``, fitting together, matching the headers.

    ``shared``: whether the sealing key is the deployment's ``SERQ_STATE_KEY`` (else this process's
    own, which only the refusal message needs to know).
    """
    try:
        state = TimelineStreamState.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidRequest(f"x-serq-state is not a timeline stream state ({exc.error_count()} errors); "
                             "send back the previous reply's `state` unchanged") from None
    if state.version != STATE_VERSION:
        raise InvalidRequest(f"stream state version {state.version}; this worker reads version {STATE_VERSION}")
    if not sealed_by(state, keys):
        raise InvalidRequest(
            "x-serq-state is not sealed by a worker of this deployment (it was changed, or written under another "
            "SERQ_STATE_KEY): send back the previous reply's state unchanged"
            + ("" if shared else "; this worker has no SERQ_STATE_KEY, so only the worker that started the stream "
               "can continue it"))
    check_state(state)
    if state.stream_id != headers.stream_id:
        raise InvalidRequest(f"the state belongs to stream {state.stream_id!r}, not {headers.stream_id!r}")
    if headers.seq != state.next_seq:
        raise InvalidRequest(f"chunk {headers.seq} of stream {headers.stream_id!r}: expected chunk {state.next_seq}")
    if headers.offset != state.keep_from:
        raise InvalidRequest(f"the body must start at sample {state.keep_from} (the previous reply's next_offset), "
                             f"not {headers.offset}")
    return state


@lru_cache(maxsize=2)
def _registry_model(model_dir: str, version: str) -> "LoadedModel":
    return Registry(model_dir).load(version)


def stream_model(ctx: Context, version: str, *, speaker: bool = False) -> "LoadedModel":
    """The model a stream started with: the worker's (plain, or speaker-normalised when ``speaker``),
    or the same version from the registry."""
    serving = speaker_model(ctx) if speaker else ctx.model
    if serving is not None and serving.version == version:
        return serving
    try:
        model = _registry_model(str(ctx.settings.model_dir), version)
    except ModelError:  # its message names the registry's folder: not for a client
        raise ModelError(f"the stream started with model {version}, which this worker cannot load; "
                         "start a new stream") from None
    if (model.meta.normalisation == "speaker") != speaker:  # a state that does not fit together
        raise InvalidRequest(f"the stream state names model {version}, which "
                             f"{'is not' if speaker else 'is'} speaker-normalised: start a new stream")
    return model


def handle_chunk(body: bytes, props: "pika.BasicProperties", ctx: Context) -> Reply:
    """Feed one chunk to the stream's processor; reply with the decided segments and the next state."""
    headers: TimelineChunkHeaders = ctx.fields
    if len(body) % 4:
        raise InvalidRequest(f"{len(body)} bytes is not a whole number of float32 samples")
    samples = np.frombuffer(body, dtype="<f4")
    profile = header_profile(ctx.headers)  # the same x-serq-profile as classify; applies to the whole stream
    if headers.seq == 0:
        if headers.state is not None or headers.offset != 0:
            raise InvalidRequest("chunk 0 starts a stream: no x-serq-state, x-serq-offset 0")
        model, profile, status = choose_model(ctx.model, profile, speaker_model(ctx) if profile is not None else None)
        proc = TimelineProcessor.new(model, params_from_settings(ctx.settings), stream_id=headers.stream_id,
                                     profile=profile, profile_status=status)
        tail_len = 0
    else:
        if headers.state is None:
            raise InvalidRequest(f"chunk {headers.seq} without x-serq-state: send back the previous reply's state")
        state = parse_state(headers.state, headers, accepted_keys(ctx.settings), shared=state_key(ctx.settings)[1])
        tail_len = state.received - state.keep_from
        if len(samples) < tail_len:
            raise InvalidRequest(f"the body must re-send the {tail_len} samples from next_offset {state.keep_from}, "
                                 f"got {len(samples)}")
        if tail_crc32(samples[:tail_len]) != state.tail_crc32:
            raise InvalidRequest("the re-sent tail differs from the audio sent before (CRC-32 mismatch)")
        if state.profile_sha256 is None:
            profile = None  # the stream runs on the plain model; a profile sent later changes nothing
        elif profile is None or digest(profile) != state.profile_sha256:
            raise InvalidRequest("the stream started with a speaker profile: send the same x-serq-profile "
                                 "with every chunk")
        model = stream_model(ctx, state.model_version, speaker=state.profile_sha256 is not None)
        if list(model.meta.labels) != state.labels:
            raise InvalidRequest(f"the stream state's labels are not those of model {model.version}: "
                                 "start a new stream")
        proc = TimelineProcessor(model, state, samples[:tail_len].copy(), profile=profile)
    new = samples[tail_len:]
    if not np.all(np.isfinite(new)):
        raise BadAudio("the chunk contains NaN or infinite samples")
    limit = ctx.settings.max_recording_seconds
    if (proc.state.received + len(new)) / RATE > limit:
        raise TooLong(f"the stream exceeds {limit:g} s (SERQ_MAX_RECORDING_SECONDS)")
    segments = proc.feed(np.clip(new, -1.0, 1.0))
    if headers.final:
        segments += proc.finish()
    proc.state.next_seq = headers.seq + 1
    return Reply.of(TimelineChunkResult(
        stream_id=headers.stream_id, seq=headers.seq, segments=segments, pending=proc.pending(),
        final=headers.final, duration_s=round(proc.duration_s, 3), next_offset=proc.state.keep_from,
        state=seal_state(proc.state, state_key(ctx.settings)[0]), model_version=proc.model.version,
        request_id=ctx.request_id, worker=ctx.worker,
        normalisation="speaker" if proc.state.profile_status == "used" else "none",
        profile_status=proc.state.profile_status,
    ))
