"""Typed exceptions of the client library; each carries a stable ``code`` like every serq error.

Defined in :mod:`serq.errors` (the transport raises them too) and re-exported here.
"""

from serq.errors import (
    BrokerUnavailable,
    ClientError,
    ConnectionLost,
    ServiceError,
    Timeout,
)

__all__ = ["BrokerUnavailable", "ClientError", "ConnectionLost", "ServiceError", "Timeout"]
