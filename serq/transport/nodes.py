"""``SERQ_AMQP_URL`` as a list of cluster nodes: ``amqp://a:5672/,amqp://b:5672/`` (issue 15.1).

Pure functions, so every connecting party (the sync and async clients, workers, the trainer,
every command) reads the list the same way: :func:`serq.transport.connection.node_urls` (pika)
and :mod:`serq.transport.aio` (aio-pika) both parse it here.
"""

from __future__ import annotations

import random

from serq.settings import redact_url


def node_urls(amqp_url: str, *, shuffle: bool = False, rng: random.Random | None = None) -> list[str]:
    """The node URLs of a comma-separated ``SERQ_AMQP_URL`` (blanks dropped), shuffled when asked.

    Shuffling spreads clients over the nodes; the caller tries them in this order and takes the
    next one on loss. Raises :class:`ValueError` for a list with no URL in it.
    """
    urls = [part.strip() for part in amqp_url.split(",") if part.strip()]
    if not urls:
        raise ValueError("SERQ_AMQP_URL holds no broker URL")
    if shuffle and len(urls) > 1:
        (rng or random).shuffle(urls)
    return urls


def redacted_nodes(amqp_url: str) -> str:
    """Every node's URL with its password masked, comma-separated: safe in logs and errors."""
    return ",".join(redact_url(url) for url in node_urls(amqp_url))
