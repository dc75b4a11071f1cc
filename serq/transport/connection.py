"""Connecting to RabbitMQ: the node list, parameters, a clear error, and ONE reconnect loop.

Shared by the client, the worker, the trainer and every command, so that all of them
read ``SERQ_AMQP_URL`` the same way (one URL, or a comma-separated list of a cluster's
nodes, tried in shuffled order and then the next one on loss), name their connections,
redact every password and back off the same way.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pika
import pika.exceptions
import pika.frame
from pika import spec

from serq.errors import BrokerUnavailable
from serq.settings import redact_url
from serq.transport import nodes

if TYPE_CHECKING:
    from serq.settings import Settings

logger = logging.getLogger("serq.transport")

#: What a dropped or refused connection raises inside pika; callers reconnect on these.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ConnectionClosed,
    pika.exceptions.StreamLostError,
    pika.exceptions.ChannelWrongStateError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
)


# --------------------------------------------------------------------------- the node list


def node_urls(settings: "Settings") -> list[str]:
    """The node URLs of ``SERQ_AMQP_URL`` in the order given (a comma-separated list, or one URL);
    :class:`BrokerUnavailable` when it holds none. The parsing is :func:`serq.transport.nodes.node_urls`."""
    try:
        return nodes.node_urls(settings.amqp_url)
    except ValueError:
        raise BrokerUnavailable("SERQ_AMQP_URL is empty: give a broker URL (or a comma-separated list of nodes)") \
            from None


def parameters(settings: "Settings", name: str) -> list[pika.URLParameters]:
    """One parameter set per node (shuffled), with serq's heartbeat and a connection name shown by the broker.

    pika's ``BlockingConnection`` tries them in order: on loss, the next connect lands on another node.
    """
    node_urls(settings)  # none at all: BrokerUnavailable, not pika's ValueError
    out = []
    # Shuffled: the clients of a cluster spread over its nodes instead of all hitting the first.
    for url in nodes.node_urls(settings.amqp_url, shuffle=True):
        params = pika.URLParameters(url)
        params.heartbeat = settings.heartbeat
        params.blocked_connection_timeout = 60
        params.connection_attempts = 1
        params.socket_timeout = 5
        params.client_properties = {"connection_name": name, "product": "serq"}
        out.append(params)
    return out


def connect(settings: "Settings", name: str) -> pika.BlockingConnection:
    """A blocking connection to one of the nodes, or :class:`BrokerUnavailable` naming the (redacted) URLs."""
    where = redact_url(settings.amqp_url)
    try:
        return pika.BlockingConnection(parameters(settings, name))
    except pika.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(f"RabbitMQ at {where} refused the credentials (check SERQ_AMQP_URL)") from None
    except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
        # pika's own message names host and port at most; redact anyway, it is cheap and it is the last line
        reason = exc.__class__.__name__ + (f": {redact_url(str(exc))}" if str(exc) else "")
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where} ({reason}); start a broker or set SERQ_AMQP_URL") \
            from None


def close_quietly(conn: pika.BlockingConnection | None) -> None:
    """Close ``conn`` if it is open; a connection that is already dying is not an error here."""
    if conn is not None and conn.is_open:
        try:
            conn.close()
        except (*CONNECTION_ERRORS, pika.exceptions.AMQPError):
            pass


class Backoff:
    """Exponential backoff with full jitter: 0.25 s, 0.5 s, 1 s ... capped at ``cap`` seconds."""

    def __init__(self, cap: float = 30.0, base: float = 0.25):
        self.cap, self.base, self.attempt = cap, base, 0

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2**self.attempt)
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def sleep(self, deadline: float | None = None, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay (not past ``deadline``, a monotonic time); ``False`` if the deadline passed
        or ``stop`` was set meanwhile."""
        delay = self.next_delay()
        if deadline is not None:
            delay = min(delay, deadline - time.monotonic())
            if delay <= 0:
                return False
        if stop is not None:
            return not stop.wait(delay)
        time.sleep(delay)
        return True

    def reset(self) -> None:
        self.attempt = 0


# --------------------------------------------------------------------------- the one reconnect loop


def connect_retrying(settings: "Settings", name: str, *, deadline: float | None = None,
                     stop: threading.Event | None = None, backoff: Backoff | None = None,
                     on_unavailable: Callable[[BrokerUnavailable], None] | None = None) -> pika.BlockingConnection:
    """Connect, backing off between attempts, until it works; :class:`BrokerUnavailable` once ``deadline``
    passes or ``stop`` is set (the last attempt's error)."""
    backoff = backoff or Backoff(settings.reconnect_max_s)
    while True:
        try:
            return connect(settings, name)
        except BrokerUnavailable as exc:
            if on_unavailable is not None:
                on_unavailable(exc)
            if (stop is not None and stop.is_set()) or not backoff.sleep(deadline, stop):
                raise


#: ``session(conn, ready)``: one connection's life (see :func:`serve_forever`).
Session = Callable[[pika.BlockingConnection, Callable[[], None]], None]


def serve_forever(settings: "Settings", name: str, session: Session, *, stop: threading.Event,
                  on_lost: Callable[[BaseException], None] | None = None,
                  first: pika.BlockingConnection | None = None) -> int:
    """Run ``session(conn, ready)`` on a fresh connection until ``stop`` is set; returns how many sessions ran.

    ``first``: an already open connection for the first session (a caller that must fail loudly
    when the broker is not there at all connects once itself).

    ``session`` returns when it is done (stopping) or raises one of :data:`CONNECTION_ERRORS`
    when the link drops; it calls ``ready()`` once it consumes, which resets the backoff. The
    loop logs each loss (redacted), waits the backoff and connects again, to the next node of
    the list in shuffled order. Anything else a session raises is a bug and propagates.
    """
    backoff = Backoff(settings.reconnect_max_s)
    sessions = 0

    def unavailable(exc: BrokerUnavailable) -> None:
        logger.warning("broker unavailable: %s", exc)

    while not stop.is_set():
        try:
            conn, first = first or connect_retrying(settings, name, stop=stop, backoff=backoff,
                                                    on_unavailable=unavailable), None
        except BrokerUnavailable:
            break  # stop was set while waiting
        sessions += 1
        try:
            session(conn, backoff.reset)
        except CONNECTION_ERRORS as exc:
            logger.warning("connection lost (%s: %s)", exc.__class__.__name__, redact_url(str(exc)))
            if on_lost is not None:
                on_lost(exc)
            if not stop.is_set():
                backoff.sleep(stop=stop)
        finally:
            close_quietly(conn)
    return sessions


# --------------------------------------------------------------------------- frames pika cannot decode


#: Set on the properties of a message whose content header pika could not decode (the reason, a str).
UNDECODABLE = "serq_undecodable"


def _decode_frame_guarded(data_in: bytes):
    """pika's ``decode_frame``, except that a content header it cannot decode costs only its own message.

    An AMQP header table nested 600 deep (6 kB) makes pika's recursive table decoder raise
    ``RecursionError`` on the I/O thread; the connection drops at each delivery, and every
    innocent request in the same prefetch window is redelivered with it until the delivery
    limit dead-letters them too. Here such a header frame becomes a header with empty
    properties marked :data:`UNDECODABLE`, so the consumer dead-letters that one delivery
    (its body still follows, its delivery tag came in the method frame before it).
    """
    try:
        return _pika_decode_frame(data_in)
    except (RecursionError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as exc:
        try:
            frame_type, channel_number, frame_size = struct.unpack(">BHL", data_in[0:7])
        except struct.error:
            raise exc from None
        if frame_type != spec.FRAME_HEADER:
            raise
        frame_end = spec.FRAME_HEADER_SIZE + frame_size + spec.FRAME_END_SIZE
        frame_data = data_in[spec.FRAME_HEADER_SIZE:frame_end - 1]
        _class_id, _weight, body_size = struct.unpack_from(">HHQ", frame_data)
        properties = pika.BasicProperties()
        setattr(properties, UNDECODABLE, f"{exc.__class__.__name__} decoding the message properties")
        return frame_end, pika.frame.Header(channel_number, body_size, properties)


_pika_decode_frame = pika.frame.decode_frame
if getattr(pika.frame.decode_frame, "__name__", "") != _decode_frame_guarded.__name__:
    # pika.connection calls ``frame.decode_frame`` through the module: replacing the attribute is enough.
    pika.frame.decode_frame = _decode_frame_guarded
