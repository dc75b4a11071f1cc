"""serq's client library: classify clips through RabbitMQ, follow results, announce models.

::

    from serq.client import Client

    with Client() as client:                       # SERQ_AMQP_URL, SERQ_PREFIX
        result = client.classify("call.wav", timeout=10)
        print(result.label, result.confidence)

Needs only the base install (pika, pydantic, numpy, soundfile). See docs/client.md.
``serq.client.AsyncClient`` (the asyncio twin, :mod:`serq.client.aio`) is imported only when
asked for, and needs the ``async`` extra.
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


def __getattr__(name: str):
    """``serq.client.AsyncClient``: :class:`serq.client.aio.AsyncClient`, imported on first use, so the
    base install never loads aio-pika; without the ``async`` extra, an install hint."""
    if name == "AsyncClient":
        from serq.extras import missing_extra

        try:
            from serq.client.aio import AsyncClient
        except ModuleNotFoundError as exc:
            hint = missing_extra(exc, "serq.client.AsyncClient")
            if hint is None:
                raise
            raise ModuleNotFoundError(str(hint), name=exc.name) from None
        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
