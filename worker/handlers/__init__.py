"""One module per message type: a delivery in, a reply out (no broker I/O).

:data:`HANDLERS` maps the contract's request types (:func:`serq.schemas.contract.request_types`)
to their handlers; a test checks the two match. Adding a message type = an
:class:`~serq.schemas.contract.Operation` with its ``request_type`` in the contract,
a module here, and one entry below. The consumer loop checks a request's ``type``, content type
and headers against the contract before a handler sees it (:class:`serq.transport.middleware.RequestCheck`).
"""

from __future__ import annotations

from serq.schemas.contract import CLASSIFY
from serq.schemas.profiles import ENROLL
from serq.schemas.timeline import TIMELINE_CHUNK
from serq.worker.handlers.base import Context, Handler, Reply
from serq.worker.handlers.classify import handle_classify
from serq.worker.handlers.enroll import handle_enroll
from serq.worker.handlers.timeline import handle_chunk

__all__ = ["HANDLERS", "Context", "Handler", "Reply", "handler_for", "known_types"]

#: AMQP ``type`` of a request -> its handler.
HANDLERS: dict[str, Handler] = {
    CLASSIFY: handle_classify,
    TIMELINE_CHUNK: handle_chunk,  # streamed timelines (docs/timeline.md)
    ENROLL: handle_enroll,  # speaker profiles (docs/profiles.md)
}


def handler_for(type_name: str | None) -> Handler:
    """The handler for a request's ``type`` (absent = ``classify``), one the contract knows: the consumer
    loop has refused any other (``unknown request type``) before it gets here."""
    return HANDLERS[type_name or CLASSIFY]


def known_types() -> list[str]:
    return sorted(HANDLERS)
