"""Sealing state a worker hands a client to send back: HMAC-SHA256 under ``SERQ_STATE_KEY``.

Workers keep nothing between a stream's chunks, so the client carries the
stream's state (:class:`serq.schemas.TimelineStreamState`). A worker seals what it
hands out and refuses anything whose seal does not verify, so a client can carry
the state but never choose it: only a worker of the same deployment (the same
``SERQ_STATE_KEY``) can have written it.

The MAC is over a canonical serialisation of the *values* (the worker's own
JSON dump of the parsed model, with a purpose label in front), not over the bytes
the client sent: a client may re-serialise the state (another JSON library, key
order, whitespace) and it still verifies, while any change of a value does not.
Non-finite floats are refused by the schema, so every accepted value has exactly
one canonical form.

Without ``SERQ_STATE_KEY`` a worker seals with a random key of its own process
(and says so loudly at start-up): streams then work on that one worker only, and a
chunk that reaches another worker is refused with a message naming the setting.

Rotation: seal with the new ``SERQ_STATE_KEY`` and keep accepting the old one from
``SERQ_STATE_KEY_PREVIOUS`` until the streams sealed under it have ended.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serq.settings import Settings

logger = logging.getLogger("serq.worker")

#: Bytes of a per-process key (used only when ``SERQ_STATE_KEY`` is unset).
RANDOM_KEY_BYTES = 32


def mac(key: bytes, purpose: str, payload: bytes) -> str:
    """HMAC-SHA256 of ``payload`` under ``key``, bound to ``purpose`` (hex, 64 characters)."""
    return hmac.new(key, purpose.encode() + b"\0" + payload, hashlib.sha256).hexdigest()


def verify(key: bytes, purpose: str, payload: bytes, tag: str | None) -> bool:
    """Whether ``tag`` is ``payload``'s MAC (constant-time comparison)."""
    return tag is not None and hmac.compare_digest(mac(key, purpose, payload), tag)


@lru_cache(maxsize=1)
def _process_key() -> bytes:
    return secrets.token_bytes(RANDOM_KEY_BYTES)


def state_key(settings: "Settings") -> tuple[bytes, bool]:
    """``(key, shared)``: ``SERQ_STATE_KEY`` as bytes (``shared``), else this process's random key."""
    if settings.state_key is not None:
        return settings.state_key.get_secret_value().encode(), True
    return _process_key(), False


def accepted_keys(settings: "Settings") -> list[bytes]:
    """The keys a state's seal may verify under: the sealing key, then ``SERQ_STATE_KEY_PREVIOUS``'s (rotation)."""
    previous = settings.state_key_previous.get_secret_value() if settings.state_key_previous is not None else ""
    return [state_key(settings)[0]] + [k.strip().encode() for k in previous.split(",") if k.strip()]


def warn_if_unshared(settings: "Settings") -> None:
    """Log, once at start-up, that streams cannot hop between workers without ``SERQ_STATE_KEY``."""
    if settings.state_key is None:
        logger.warning(
            "SERQ_STATE_KEY is not set: timeline stream states are sealed with a random key of this process, "
            "so a stream works on this worker only and its chunks are refused by any other worker. Set the same "
            "secret (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) on every worker of "
            "the deployment.")
