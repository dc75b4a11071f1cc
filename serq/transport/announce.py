"""Announcing a model activation on ``<prefix>.models`` (the worker side of hot-swap listens).

The trainer and ``serq models activate|rollback`` build a signed event with
:meth:`serq.models.registry.Registry.announcement` and publish it with :func:`publish_event`.
The event, :class:`serq.schemas.ModelActivated`, carries the artifact itself (base64), so
workers on other machines need no shared disk; this module only moves it (signing is the
models layer's, which the transport does not import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pika

from serq.schemas import ModelActivated, ModelMetadata
from serq.schemas.contract import type_name
from serq.settings import Settings, get_settings
from serq.transport.connection import connect
from serq.transport.topology import declare_models

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel


def activation_event(meta: ModelMetadata, artifact: bytes, reason: str = "") -> ModelActivated:
    """The (unsigned) event announcing ``meta``'s version with its artifact bytes inside."""
    return ModelActivated.announcing(meta, artifact, reason)


def publish_event(event: ModelActivated, *, settings: Settings | None = None,
                  channel: "BlockingChannel | None" = None) -> None:
    """Publish ``event`` on ``<prefix>.models`` (confirmed when ``channel`` is in confirm mode or is ours)."""
    settings = settings or get_settings()
    props = pika.BasicProperties(content_type="application/json", type=type_name(event), app_id="serq")
    body = event.model_dump_json().encode()
    if channel is not None:
        channel.basic_publish(declare_models(channel, settings), "", body, props)
        return
    conn = connect(settings, "serq-announce")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(declare_models(ch, settings), "", body, props)
    finally:
        conn.close()
