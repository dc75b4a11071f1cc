"""Connecting to RabbitMQ: parameters, a clear error when it is unreachable, backoff.

Shared by the client, the worker and the trainer so that all of them connect,
name their connections and back off the same way.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import pika
import pika.exceptions

from serq.errors import BrokerUnavailable

if TYPE_CHECKING:
    from serq.settings import Settings

#: What a dropped or refused connection raises inside pika; callers reconnect on these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    ConnectionError,
    OSError,
)


def parameters(settings: "Settings", name: str) -> pika.URLParameters:
    """Parameters from ``SERQ_AMQP_URL`` with serq's heartbeat and a connection name shown by the broker."""
    params = pika.URLParameters(settings.amqp_url)
    params.heartbeat = settings.heartbeat
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.client_properties = {"connection_name": name, "product": "serq"}
    return params


def connect(settings: "Settings", name: str) -> pika.BlockingConnection:
    """A blocking connection, or :class:`BrokerUnavailable` naming the (redacted) URL and SERQ_AMQP_URL."""
    try:
        return pika.BlockingConnection(parameters(settings, name))
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(
            f"RabbitMQ at {settings.redacted_amqp_url} refused the credentials (check SERQ_AMQP_URL)"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        reason = exc.__class__.__name__ + (f": {exc}" if str(exc) else "")
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {settings.redacted_amqp_url} ({reason}); "
            "start a broker or set SERQ_AMQP_URL"
        ) from None


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    """Close ``conn`` if it is open; a connection that is already dying is not an error here."""
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except CONNECTION_ERRORS:
            pass


class Backoff:
    """Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s ... capped at ``cap`` seconds."""

    def __init__(self, cap: float = 30.0, base: float = 0.25):
        self.cap, self.base, self.attempt = cap, base, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def sleep(self, deadline: float | None = None) -> bool:
        """Sleep the next delay (not past ``deadline``, a monotonic time); ``False`` if the deadline passed."""
        delay = self.next_delay()
        if deadline is not None:
            delay = min(delay, deadline - time.monotonic())
            if delay <= 0:
                return False
        time.sleep(delay)
        return True

    def reset(self) -> None:
        self.attempt = 0
