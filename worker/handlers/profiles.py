"""The ``x-serq-profile`` header any request may carry: the speaker's profile and the model it needs.

Workers keep no profile: a request may carry the speaker's profile (JSON of
:class:`serq.schemas.SpeakerProfile`); classify and timeline replies say which
model answered (``normalisation``, ``profile_status``). See docs/profiles.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serq.schemas.profiles import PROFILE_HEADER
from serq.worker.engine import profiles
from serq.worker.handlers.base import Context, text

if TYPE_CHECKING:
    from serq.schemas import SpeakerProfile
    from serq.worker.engine.model import LoadedModel


def header_profile(headers: dict) -> "SpeakerProfile | None":
    """The request's profile, or ``None`` if it sent none; :class:`InvalidRequest` if it is not one."""
    raw = headers.get(PROFILE_HEADER)
    return None if raw in (None, "", b"") else profiles.from_json(text(raw))


def speaker_model(ctx: Context) -> "LoadedModel | None":
    """The profile path's model for this request, as the worker verified it (announced, else the registry's
    or the shipped one it started with); ``None``: none is usable."""
    return ctx.speaker_model


def profile_args(ctx: Context) -> dict:
    """Keyword arguments for :func:`serq.worker.engine.inference.classify`: the profile and the speaker model."""
    profile = header_profile(ctx.headers)
    if profile is None:
        return {}
    return {"profile": profile, "speaker_model": speaker_model(ctx)}
