"""Typed exceptions of the client library; each carries a stable ``code`` like every serq error."""

from __future__ import annotations

from serq.errors import SerqError


class ClientError(SerqError):
    """Base class of everything :class:`serq.client.Client` raises."""

    code = "client_error"


class BrokerUnavailable(ClientError):
    """No connection to RabbitMQ could be made (wrong SERQ_AMQP_URL, broker down, bad credentials)."""

    code = "no_broker"


class ConnectionLost(ClientError):
    """The connection dropped and could not be restored before the deadline."""

    code = "connection_lost"


class Timeout(ClientError):
    """No reply within the timeout (usually: no worker is running)."""

    code = "timeout"


class ServiceError(ClientError):
    """The worker answered with an error reply; ``code`` is the reply's code (``too_long``, ...).

    ``reply`` holds the whole :class:`serq.schemas.ErrorReply` (``request_id``, ``worker``).
    """

    def __init__(self, message: str, *, code: str, reply=None):
        super().__init__(message, code=code)
        self.reply = reply
