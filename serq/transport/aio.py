"""Connecting to RabbitMQ from asyncio (aio-pika): the async twin of :mod:`serq.transport.connection`.

Same settings, connection names, node list and errors as the blocking connection, so an
asyncio program connects the way the worker and the sync client do. Needs the ``async``
extra (aio-pika); nothing in the base install imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aio_pika
import aiormq.exceptions

from serq.errors import BrokerUnavailable
from serq.settings import redact_url
from serq.transport.connection import Backoff
from serq.transport.nodes import node_urls, redacted_nodes

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from serq.settings import Settings

#: What a dropped connection or channel raises inside aio-pika; callers reconnect on these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


async def connect(settings: "Settings", name: str, *, timeout: float = 5.0) -> "AbstractConnection":
    """A connection to the first node of ``SERQ_AMQP_URL`` (shuffled) that answers.

    Raises :class:`BrokerUnavailable` naming every (redacted) node and SERQ_AMQP_URL.
    """
    reasons = []
    for url in node_urls(settings.amqp_url, shuffle=True):
        try:
            return await aio_pika.connect(
                url, timeout=timeout, heartbeat=settings.heartbeat,
                client_properties={"connection_name": name, "product": "serq"},
            )
        except aiormq.exceptions.ProbableAuthenticationError:
            raise BrokerUnavailable(
                f"RabbitMQ at {redact_url(url)} refused the credentials (check SERQ_AMQP_URL)"
            ) from None
        except (aiormq.exceptions.AMQPError, OSError, asyncio.TimeoutError) as exc:
            reason = exc.__class__.__name__ + (f": {exc}" if str(exc) else "")
            password = urlsplit(url).password
            reasons.append(reason.replace(password, "***") if password else reason)
    raise BrokerUnavailable(
        f"cannot reach RabbitMQ at {redacted_nodes(settings.amqp_url)} ({'; '.join(reasons)}); "
        "start a broker or set SERQ_AMQP_URL"
    )


async def close_quietly(connection: "AbstractConnection | None") -> None:
    """Close ``connection`` if open; one that is already dying is not an error here."""
    if connection is not None and not connection.is_closed:
        try:
            await connection.close()
        except CONNECTION_ERRORS:
            pass


async def reconnect(open_: Callable[[], Awaitable[object]], settings: "Settings", stopped: Callable[[], bool],
                    on_error: Callable[[BaseException], None] | None = None) -> bool:
    """The async reconnect loop: ``await open_()`` until it succeeds (``True``) or ``stopped()`` (``False``),
    with jittered backoff up to ``SERQ_RECONNECT_MAX_S`` between tries; ``on_error`` sees each failure."""
    backoff = Backoff(settings.reconnect_max_s)
    while not stopped():
        try:
            await open_()
            return True
        except (BrokerUnavailable, *CONNECTION_ERRORS) as exc:
            if on_error is not None:
                on_error(exc)
            await asyncio.sleep(backoff.next_delay())
    return False
