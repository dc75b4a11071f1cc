"""serq's client library: classify clips through RabbitMQ, follow results, announce models.

::

    from serq.client import Client

    with Client() as client:                       # SERQ_AMQP_URL, SERQ_PREFIX
        result = client.classify("call.wav", timeout=10)
        print(result.label, result.confidence)

Needs only the base install (pika, pydantic, numpy, soundfile). See docs/client.md.
"""

from serq.client.client import ClassifyResult, Client, Subscription
from serq.client.errors import (
    BrokerUnavailable,
    ClientError,
    ConnectionLost,
    ServiceError,
    Timeout,
)

__all__ = [
    "BrokerUnavailable",
    "ClassifyResult",
    "Client",
    "ClientError",
    "ConnectionLost",
    "ServiceError",
    "Subscription",
    "Timeout",
]
