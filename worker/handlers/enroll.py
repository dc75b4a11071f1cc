"""Speaker profiles on the broker: the ``x-serq-profile`` header of a classify request, and ``enroll``.

Workers keep no profile: a classify request may carry the speaker's profile
(``x-serq-profile``, JSON of :class:`serq.schemas.SpeakerProfile`); the reply says
which model answered (``normalisation``, ``profile_status``) and, when the
profile allows updates, carries it with this clip added (``profile``). An
``enroll`` request (AMQP ``type`` ``enroll``, body one audio file) adds the clip
to the profile it carries, or starts one for ``x-serq-speaker``, and replies with
an :class:`serq.schemas.EnrollResult`. See docs/profiles.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from serq.errors import InvalidRequest
from serq.models.registry import load_speaker_model
from serq.schemas import EnrollHeaders, EnrollResult
from serq.schemas.profiles import PROFILE_HEADER
from serq.worker.engine import profiles
from serq.worker.handlers.base import Reply, require_audio

if TYPE_CHECKING:
    import pika

    from serq.schemas import SpeakerProfile
    from serq.worker.engine.model import LoadedModel
    from serq.worker.handlers.base import Context


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def header_profile(headers: dict) -> "SpeakerProfile | None":
    """The request's profile, or ``None`` if it sent none; :class:`InvalidRequest` if it is not one."""
    raw = headers.get(PROFILE_HEADER)
    return None if raw in (None, "", b"") else profiles.from_json(_text(raw))


def speaker_model(ctx: "Context") -> "LoadedModel | None":
    """The profile path's model for this request: the one announced to the worker, else the registry's."""
    return ctx.speaker_model or load_speaker_model(ctx.settings.model_dir)


def profile_args(ctx: "Context") -> dict:
    """Keyword arguments for :func:`serq.worker.engine.inference.classify`: the profile and the speaker model."""
    profile = header_profile(ctx.headers)
    if profile is None:
        return {}
    return {"profile": profile, "speaker_model": speaker_model(ctx)}


def handle_enroll(body: bytes, props: "pika.BasicProperties", ctx: "Context") -> Reply:
    """``enroll``: one clip -> the profile with its features added (a silent clip adds nothing)."""
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import (
        FEATURE_NAMES,
        FEATURE_VERSION,
        analyse,
        feature_vector,
    )

    require_audio(props)
    try:
        headers = EnrollHeaders.model_validate({k: _text(v) if isinstance(v, bytes) else v
                                                for k, v in ctx.headers.items()})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(f"bad enroll headers: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    profile = header_profile(ctx.headers)
    if profile is None:
        if not headers.speaker:
            raise InvalidRequest("an enroll request needs x-serq-profile (to add to) or x-serq-speaker (to start one)")
        profile = profiles.new_profile(headers.speaker, len(FEATURE_NAMES), FEATURE_VERSION, updates=headers.updates)
    elif profiles.check_profile(profile, FEATURE_VERSION, len(FEATURE_NAMES)):
        raise InvalidRequest(f"the profile is over features {profile.feature_version}; this worker computes "
                             f"{FEATURE_VERSION}: enrol the speaker again")
    audio = decode(body, max_bytes=ctx.settings.max_bytes, max_seconds=ctx.settings.max_seconds)
    analysis = analyse(audio.samples, audio.sample_rate)
    added = not analysis.silent
    if added:
        profile = profiles.add(profile, feature_vector(analysis))
    served = speaker_model(ctx)
    prior = served.meta.speaker_prior if served is not None else None
    return Reply.of(EnrollResult(speaker_key=profile.speaker_key, profile=profile, added=added,
                                 min_clips=prior.min_clips if prior is not None else None,
                                 file=headers.filename, request_id=ctx.request_id, worker=ctx.worker))
