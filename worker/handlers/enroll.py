"""``enroll``: one clip of a speaker talking normally -> the speaker's profile with the clip added.

An ``enroll`` request (body one audio file) adds the clip to the profile it
carries (``x-serq-profile``), or starts one for ``x-serq-speaker``, and replies with
an :class:`serq.schemas.EnrollResult`. Workers keep nothing: the reply carries the
profile. See docs/profiles.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serq.errors import InvalidRequest
from serq.schemas import EnrollResult
from serq.worker.engine import profiles
from serq.worker.engine.audio import decode
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION, analyse, feature_vector, speech_level
from serq.worker.handlers.base import Context, Reply
from serq.worker.handlers.profiles import header_profile, speaker_model

if TYPE_CHECKING:
    import pika


def handle_enroll(body: bytes, props: "pika.BasicProperties", ctx: Context) -> Reply:
    """One clip -> the profile with its features added (a silent clip adds nothing)."""
    headers = ctx.fields
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
        profile = profiles.add(profile, feature_vector(analysis), [speech_level(analysis)])
    served = speaker_model(ctx)
    prior = served.meta.speaker_prior if served is not None else None
    return Reply.of(EnrollResult(speaker_key=profile.speaker_key, profile=profile, added=added,
                                 min_clips=prior.min_clips if prior is not None else None,
                                 file=headers.filename, request_id=ctx.request_id, worker=ctx.worker))
