"""``classify``: one audio file -> :class:`serq.schemas.PredictionResult` (the same path as ``serq predict``).

A request may carry the speaker's profile (``x-serq-profile``, :mod:`.profiles`);
with enough clips the speaker-normalised model answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serq.worker.engine.inference import classify
from serq.worker.handlers.base import Context, Reply
from serq.worker.handlers.profiles import profile_args

if TYPE_CHECKING:
    import pika


def handle_classify(body: bytes, props: "pika.BasicProperties", ctx: Context) -> Reply:
    """The audio bytes -> the prediction, stamped with this request's id and worker."""
    result = classify(body, ctx.model, ctx.settings, file=ctx.fields.filename, **profile_args(ctx))
    return Reply.of(result.model_copy(update={"request_id": ctx.request_id, "worker": ctx.worker}))
