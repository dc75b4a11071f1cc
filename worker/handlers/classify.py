"""``classify``: one audio file -> :class:`serq.schemas.PredictionResult` (the same path as ``serq predict``).

A request may carry the speaker's profile (``x-serq-profile``, :mod:`.profiles`);
with enough clips the speaker-normalised model answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serq.schemas.contract import CLASSIFY, ClassifyHeaders
from serq.worker.engine.inference import classify
from serq.worker.handlers.base import Context, Reply, parse_headers, require_audio
from serq.worker.handlers.profiles import profile_args

if TYPE_CHECKING:
    import pika


def handle_classify(body: bytes, props: "pika.BasicProperties", ctx: Context) -> Reply:
    """The audio bytes -> the prediction, stamped with this request's id and worker."""
    require_audio(props)
    headers = parse_headers(ClassifyHeaders, ctx.headers, CLASSIFY)
    result = classify(body, ctx.model, ctx.settings, file=headers.filename, **profile_args(ctx))
    return Reply.of(result.model_copy(update={"request_id": ctx.request_id, "worker": ctx.worker}))
