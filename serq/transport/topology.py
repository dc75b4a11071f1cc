"""The broker topology: every queue and exchange serq uses, declared in one place.

The worker, the trainer, the client and the tests all call these functions, so a
name or an argument can never differ between two declarations (RabbitMQ refuses
a re-declaration with other arguments, ``PRECONDITION_FAILED``); the arguments come from
one function each, for pika and aio-pika channels alike. No broker library is imported
here: the client imports this module without the worker extra.

Names (``<p>`` = ``SERQ_PREFIX``):

=================  ===================  ==============================================
name               kind                 role
=================  ===================  ==============================================
``<p>.classify``   quorum queue         requests (audio bytes); delivery limit, DLX
``<p>.dead``       fanout + quorum      requests that exhausted their delivery limit
                   queue                or expired before a worker took them
``<p>.results``    topic exchange       every reply again, key ``emotion.<label>``,
                                        ``emotion.silent`` or ``error.<code>``
``<p>.train``      quorum queue         training jobs (JSON ``TrainRequest``)
``<p>.events``     topic exchange       training progress ``train.<job_id>.<stage>``
``<p>.models``     fanout exchange      ``ModelActivated`` events (hot-swap)
=================  ===================  ==============================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pika.exceptions

from serq.errors import NotDeclared

if TYPE_CHECKING:
    from collections.abc import Callable

    from pika.adapters.blocking_connection import BlockingChannel

    from serq.settings import Settings

#: How long a dead-lettered request is kept for inspection, ms (7 days), and how many at most
#: (quorum queues take both since RabbitMQ 3.10).
DEAD_TTL_MS = 7 * 24 * 3600 * 1000
DEAD_MAX = 10_000


#: Every name a deployment declares, as suffixes of its prefix (request types such as
#: ``timeline.chunk`` and ``enroll`` travel on ``<p>.classify`` and add none).
NAME_SUFFIXES = ("classify", "dead", "train", "results", "events", "models")


def delete_deployment(connection, prefix: str) -> list[str]:
    """Delete every queue and exchange of ``prefix`` (demo and test teardown); returns what was deleted.

    Each delete gets its own channel: deleting a name that is not there closes the channel.
    """
    deleted = []
    for suffix in NAME_SUFFIXES:
        for kind in ("queue", "exchange"):
            channel = connection.channel()
            try:
                getattr(channel, f"{kind}_delete")(f"{prefix}.{suffix}")
                deleted.append(f"{kind} {prefix}.{suffix}")
            except Exception:  # absent, or closed under us: nothing left to delete
                pass
            finally:
                if channel.is_open:
                    channel.close()
    return deleted


def consumer_count(connection, queue: str) -> int:
    """Consumers of ``queue``, 0 while it does not exist (a passive declare on a channel of its own:
    a 404 closes the channel, never the caller's)."""
    channel = connection.channel()
    try:
        return channel.queue_declare(queue, passive=True).method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if channel.is_open:
            channel.close()


#: The exchanges of a deployment and their kinds. `serq broker definitions` creates them at the
#: broker's boot, so least-privilege accounts find them without the right to create (or delete) them.
EXCHANGES = {"dead": "fanout", "results": "topic", "events": "topic", "models": "fanout"}

#: Who declares each shared name in a running deployment: a client (or a worker, for ``<p>.models``)
#: that finds it missing says who has not started (codes ``no_worker``, ``no_trainer``).
OWNERS = {"classify": "worker", "results": "worker", "dead": "worker", "train": "trainer", "events": "trainer",
          "models": "trainer"}


def missing(settings: "Settings", suffix: str, where: str = "") -> NotDeclared:
    """The typed error of a shared queue or exchange that does not exist (nobody who declares it has started)."""
    owner = OWNERS[suffix]
    on = f" on {where}" if where else ""
    return NotDeclared(f"{settings.name(suffix)} does not exist{on}: no {owner} (`serq {owner}`) has started for "
                       f"SERQ_PREFIX={settings.prefix!r} yet (or it was deleted); start one first (an account that "
                       f"may not create it only uses what the workers and the trainer declare: docs/deploy.md)",
                       code=f"no_{owner}")


def attempt(connection, declare: "Callable[[BlockingChannel], object]", *, refused: tuple[int, ...]) -> bool:
    """``declare(channel)`` on a channel of its own (a refusal closes the channel, never the caller's):
    ``True``, or ``False`` when the broker refuses with one of the ``refused`` codes (404: absent,
    403: not this account's to create)."""
    channel = connection.channel()
    try:
        declare(channel)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code not in refused:
            raise
        return False
    finally:
        if channel.is_open:
            channel.close()


def ensure_exchange(connection, settings: "Settings", suffix: str) -> str:
    """The shared exchange ``<p>.<suffix>``: found by a passive declare (which needs no permission),
    else declared if this account may create it (a development broker's single account); a
    least-privilege account gets :class:`NotDeclared`. Returns the exchange's name."""
    name, kind = settings.name(suffix), EXCHANGES[suffix]
    for passive in (True, False):
        if attempt(connection, lambda ch, p=passive: ch.exchange_declare(name, exchange_type=kind, durable=True,
                                                                          passive=p), refused=(403, 404)):
            return name
    raise missing(settings, suffix)


async def ensure_exchange_async(connection, settings: "Settings", suffix: str):
    """:func:`ensure_exchange` on an aio-pika connection; returns the exchange."""
    import aiormq.exceptions

    name = settings.name(suffix)
    for passive in (True, False):
        channel = await connection.channel()
        try:
            exchange = await channel.declare_exchange(name, EXCHANGES[suffix], durable=True, passive=passive)
            return exchange
        except (aiormq.exceptions.ChannelNotFoundEntity, aiormq.exceptions.ChannelAccessRefused):
            if not channel.is_closed:
                await channel.close()
    raise missing(settings, suffix)


def queue_exists(connection, queue: str) -> bool:
    """Whether ``queue`` exists (a passive declare, which needs no permission)."""
    return attempt(connection, lambda ch: ch.queue_declare(queue, passive=True), refused=(404,))


def dead_queue_arguments() -> dict:
    """Arguments of ``<p>.dead``: a quorum queue (replicated, see :func:`_work_queue`), kept for inspection, bounded."""
    return {"x-queue-type": "quorum", "x-message-ttl": DEAD_TTL_MS, "x-max-length": DEAD_MAX}


def work_queue_arguments(settings: "Settings") -> dict:
    """Arguments of a work queue (``<p>.classify``, ``<p>.train``): quorum, delivery limit, dead-lettering."""
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.delivery_limit,
        "x-dead-letter-exchange": settings.name("dead"),
    }


def _work_queue(channel: "BlockingChannel", settings: "Settings", suffix: str) -> str:
    """A durable quorum queue whose poison messages end in ``<p>.dead`` after the delivery limit.

    ``<p>.dead`` is a quorum queue too: a classic one lives on one node, and once that node
    is down every declaration of it (each worker's, client's and trainer's reconnect) fails
    with ``NOT_FOUND - home node ... is down``, so a cluster could not fail over.
    """
    dead = _exchange(channel, settings, "dead", "fanout")
    channel.queue_declare(dead, durable=True, arguments=dead_queue_arguments())
    channel.queue_bind(dead, dead)
    name = settings.name(suffix)
    channel.queue_declare(name, durable=True, arguments=work_queue_arguments(settings))
    return name


def _exchange(channel: "BlockingChannel", settings: "Settings", suffix: str, kind: str) -> str:
    """The durable exchange ``<p>.<suffix>`` of ``kind``; returns its name."""
    name = settings.name(suffix)
    channel.exchange_declare(name, exchange_type=kind, durable=True)
    return name


def declare_results(channel: "BlockingChannel", settings: "Settings") -> str:
    """The ``<p>.results`` topic exchange; returns its name."""
    return _exchange(channel, settings, "results", "topic")


def declare_classify(channel: "BlockingChannel", settings: "Settings") -> str:
    """``<p>.classify`` (+ ``<p>.dead``) and ``<p>.results``; returns the request queue's name."""
    declare_results(channel, settings)
    return _work_queue(channel, settings, "classify")


async def declare_results_async(channel, settings: "Settings"):
    """:func:`declare_results` on an aio-pika channel; returns the exchange."""
    return await channel.declare_exchange(settings.name("results"), "topic", durable=True)


async def declare_classify_async(channel, settings: "Settings") -> str:
    """:func:`declare_classify` on an aio-pika channel (same names, same arguments)."""
    await declare_results_async(channel, settings)
    dead = await channel.declare_exchange(settings.name("dead"), "fanout", durable=True)
    dead_queue = await channel.declare_queue(settings.name("dead"), durable=True, arguments=dead_queue_arguments())
    await dead_queue.bind(dead)
    name = settings.name("classify")
    await channel.declare_queue(name, durable=True, arguments=work_queue_arguments(settings))
    return name


def declare_train(channel: "BlockingChannel", settings: "Settings") -> str:
    """``<p>.train`` (+ ``<p>.dead``) and ``<p>.events``; returns the job queue's name."""
    _exchange(channel, settings, "events", "topic")
    return _work_queue(channel, settings, "train")


def declare_models(channel: "BlockingChannel", settings: "Settings") -> str:
    """The ``<p>.models`` fanout exchange; returns its name."""
    return _exchange(channel, settings, "models", "fanout")


def declare_all(channel: "BlockingChannel", settings: "Settings") -> None:
    """Every queue and exchange of a deployment (idempotent)."""
    declare_classify(channel, settings)
    declare_train(channel, settings)
    declare_models(channel, settings)
