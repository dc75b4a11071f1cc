"""Least-privilege RabbitMQ accounts: the definitions (users, vhost, permissions) a broker imports.

Four accounts, each allowed only what its role needs (``<p>`` = ``SERQ_PREFIX``; RabbitMQ
permissions are three regexes per user and vhost, over queue *and* exchange names; *configure*
is the right to create **and delete** a name):

===============  =====================================================================
account          may
===============  =====================================================================
serq-client      publish requests (classify, train) through the default exchange, read
                 its replies (direct reply-to) and follow ``<p>.results`` /
                 ``<p>.events`` from queues of its own; it configures only its own
                 server-named queues, so it can neither create nor delete a shared name
serq-worker      declare and consume ``<p>.classify`` (+ ``<p>.dead``), publish replies
                 and ``<p>.results``, listen on ``<p>.models`` (not create or delete it)
serq-trainer     consume ``<p>.train``, publish ``<p>.events`` and ``<p>.models``
serq-operator    everything (``serq models activate``, the management UI)
serq-keda        (optional) read queue depths over the management API, nothing else:
                 KEDA's RabbitMQ scaler (deploy/kubernetes/40-keda.yaml)
===============  =====================================================================

Only the trainer and the operator may publish to ``<p>.models``. The definitions also hold the
deployment's exchanges (``topology.EXCHANGES``), so they exist from the broker's boot for the
accounts that may only find them. Passwords never live in a file of the repository:
:func:`definitions` hashes the ones it is given (from the environment at deploy time) the way
RabbitMQ does (salted SHA-256). See docs/deploy.md.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from serq.transport.topology import EXCHANGES

#: Account name -> the environment variable its password comes from at deploy time.
ACCOUNTS = {
    "serq-operator": "BROKER_OPERATOR_PASSWORD",
    "serq-trainer": "BROKER_TRAINER_PASSWORD",
    "serq-worker": "BROKER_WORKER_PASSWORD",
    "serq-client": "BROKER_CLIENT_PASSWORD",
}

#: Included only when its password is given: the autoscaler's read-only monitoring account.
OPTIONAL_ACCOUNTS = {"serq-keda": "BROKER_KEDA_PASSWORD"}

#: Server-named queues (exclusive reply/event/subscription queues) are the declaring connection's own.
_SERVER_NAMED = r"amq\.gen-.*"


def _names(prefix: str, *suffixes: str, extra: tuple[str, ...] = ()) -> str:
    """A regex matching exactly ``<prefix>.<suffix>`` for each suffix, and the ``extra`` patterns."""
    alternatives = [rf"{re.escape(prefix)}\.({'|'.join(suffixes)})"] if suffixes else []
    return "^(" + "|".join([*alternatives, *extra]) + ")$"


def permissions(prefix: str) -> dict[str, dict[str, str]]:
    """``account -> {configure, write, read}`` regexes for a deployment's prefix.

    Publishing through the default exchange is a write on ``amq.default``; binding a
    queue is a write on the queue and a read on the exchange.
    """
    return {
        "serq-operator": {"configure": ".*", "write": ".*", "read": ".*"},
        "serq-keda": {"configure": "^$", "write": "^$", "read": "^$"},  # the vhost, no resource
        "serq-trainer": {
            "configure": _names(prefix, "train", "dead", "events", "models", extra=(_SERVER_NAMED,)),
            "write": _names(prefix, "train", "dead", "events", "models", extra=("amq\\.default", _SERVER_NAMED)),
            "read": _names(prefix, "train", "dead", extra=(_SERVER_NAMED,)),
        },
        "serq-worker": {  # <p>.models is found, never declared: configure on it would let a worker delete it
            "configure": _names(prefix, "classify", "dead", "results", extra=(_SERVER_NAMED,)),
            "write": _names(prefix, "classify", "dead", "results", extra=("amq\\.default", _SERVER_NAMED)),
            "read": _names(prefix, "classify", "dead", "models", extra=(_SERVER_NAMED,)),
        },
        "serq-client": {  # shared names only found (passive declares need no permission) and published to
            "configure": _names(prefix, extra=(_SERVER_NAMED,)),
            "write": _names(prefix, extra=("amq\\.default", _SERVER_NAMED)),
            "read": _names(prefix, "results", "events", extra=(_SERVER_NAMED,)),
        },
    }


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def definitions(prefix: str, passwords: dict[str, str], vhost: str = "/") -> dict:
    """The definitions document (``rabbitmqctl import_definitions`` / ``load_definitions``) for ``passwords``."""
    missing = [ACCOUNTS[name] for name in ACCOUNTS if not passwords.get(name)]
    if missing:
        raise ValueError(f"no password for {', '.join(missing)}")
    tags = {"serq-operator": ["administrator"], "serq-keda": ["monitoring"]}
    names = [*ACCOUNTS, *(name for name in OPTIONAL_ACCOUNTS if passwords.get(name))]
    users = [{"name": name, "password_hash": password_hash(passwords[name]),
              "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": tags.get(name, [])} for name in names]
    perms = [{"user": name, "vhost": vhost, **rules} for name, rules in permissions(prefix).items() if name in names]
    exchanges = [{"name": f"{prefix}.{suffix}", "vhost": vhost, "type": kind, "durable": True, "auto_delete": False,
                  "internal": False, "arguments": {}} for suffix, kind in EXCHANGES.items()]
    return {"users": users, "vhosts": [{"name": vhost}], "permissions": perms, "exchanges": exchanges}


def passwords_from_env(env=os.environ) -> dict[str, str]:
    return {name: env.get(var, "") for name, var in {**ACCOUNTS, **OPTIONAL_ACCOUNTS}.items()}
