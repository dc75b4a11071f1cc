"""Calling a worker handler as the worker does, without a broker: the request is checked against the
contract first (the consumer loop's ``RequestCheck``), then the handler runs on what it let through."""

from __future__ import annotations

from types import SimpleNamespace

from serq.settings import Settings
from serq.transport.middleware import check_request
from serq.worker.handlers import Context, Reply, handler_for


def handle(request_type: str | None, body: bytes, headers: dict, *, model, content_type: str | None,
           settings: Settings | None = None, speaker_model=None) -> Reply:
    """The reply to one request; a refusal (of the check or the handler) raises its ``SerqError``."""
    fields = check_request(request_type, content_type, headers)
    ctx = Context(settings=settings or Settings(), model=model, worker="w", request_id="r", fields=fields,
                  headers=headers, speaker_model=speaker_model)
    return handler_for(request_type)(body, SimpleNamespace(content_type=content_type), ctx)
