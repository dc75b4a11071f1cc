"""Least-privilege broker accounts (``serq broker definitions``) imported into a PRIVATE RabbitMQ node.

The node is this test's own (free ports, private data dir; the shared broker's users are
never touched). A real worker runs as ``serq-worker`` and a client as ``serq-client``:
classification works end to end, while the client account is refused on ``<p>.models``
(and on consuming ``<p>.classify``), the worker account may not publish models either,
and the trainer account may.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pika
import pika.exceptions
import pytest

from serq.client import Client, Timeout
from serq.settings import Settings
from serq.transport.accounts import ACCOUNTS
from serq.transport.topology import declare_models, declare_train, queue_exists

from .conftest import record

pytestmark = [pytest.mark.slow]


@pytest.fixture
def accounts(private_broker, prefix, monkeypatch):
    """The definitions for this test's prefix, imported into the private node; ``account -> URL``."""
    from serq.cli import main
    from serq.settings import get_settings

    passwords = {name: secrets.token_urlsafe(12) for name in ACCOUNTS}
    for name, var in ACCOUNTS.items():
        monkeypatch.setenv(var, passwords[name])
    monkeypatch.setenv("SERQ_PREFIX", prefix)
    get_settings.cache_clear()
    # rabbitmqctl may run as the rabbitmq user (Debian's wrapper): a folder it can read
    folder = Path(tempfile.mkdtemp(prefix="serq-definitions-"))
    try:
        path = folder / "definitions.json"
        assert main(["broker", "definitions", "--out", str(path)]) == 0
        text = path.read_text()
        assert not any(p in text for p in passwords.values()), "a password in clear in the definitions"
        folder.chmod(0o755)
        path.chmod(0o644)
        private_broker.ctl("import_definitions", str(path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    get_settings.cache_clear()
    node = urlsplit(private_broker.url)
    return {name: f"amqp://{name}:{quote(pw, safe='')}@{node.hostname}:{node.port}/%2F"
            for name, pw in passwords.items()}


def publish(url: str, prefix: str, exchange: str, routing_key: str = "") -> None:
    """One confirmed publish as the URL's account; raises ChannelClosedByBroker when refused."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange, routing_key, b"{}", pika.BasicProperties(content_type="application/json"))
    finally:
        if conn.is_open:
            conn.close()


def refused(fn) -> str:
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
    assert info.value.reply_code == 403, info.value
    return info.value.reply_text


def test_client_account_is_refused_on_the_models_exchange(accounts, start_worker, prefix, short_clips):
    worker = start_worker({"SERQ_AMQP_URL": accounts["serq-worker"]})
    settings = Settings(amqp_url=accounts["serq-client"], prefix=prefix)
    with Client(settings=settings) as client:
        outcomes = [o for _, o in client.classify_many(short_clips[:8], max_in_flight=4, timeout=120)]
    assert all(getattr(o, "model_version", None) for o in outcomes), outcomes

    models = f"{prefix}.models"
    client_models = refused(lambda: publish(accounts["serq-client"], prefix, models))
    assert f"access to exchange '{models}'" in client_models and "serq-client" in client_models
    refused(lambda: publish(accounts["serq-worker"], prefix, models))  # workers only listen
    publish(accounts["serq-trainer"], prefix, models)  # the trainer announces
    publish(accounts["serq-operator"], prefix, models)  # and so may an operator

    # a client may queue a training job (the trainer declared its queue, as at a deployment's start) and follow
    # results, and may not read other callers' requests
    trainer = pika.BlockingConnection(pika.URLParameters(accounts["serq-trainer"]))
    declare_train(trainer.channel(), settings)
    trainer.close()
    publish(accounts["serq-client"], prefix, "", f"{prefix}.train")
    followed = []
    with Client(settings=settings) as client, client.subscribe(None, lambda r, key: followed.append(key)):
        client.classify(short_clips[0], timeout=60)
        deadline = time.monotonic() + 10
        while not followed and time.monotonic() < deadline:
            time.sleep(0.05)
    assert followed and followed[0].startswith("emotion."), followed
    conn = pika.BlockingConnection(pika.URLParameters(accounts["serq-client"]))
    try:
        refused(lambda: conn.channel().basic_get(f"{prefix}.classify"))
        refused(lambda: declare_models(conn.channel(), settings))
    finally:
        if conn.is_open:
            conn.close()
    deletions = shared_names_survive(accounts, prefix)
    record("client account publishing to <p>.models (least-privilege definitions, private node)", len(outcomes),
           outcomes, "pytest tests/reliability/test_broker_accounts.py",
           models_publish="refused 403 (client, worker), accepted (trainer, operator)",
           deletions_refused=len(deletions))
    assert worker.poll() is None
    assert f"models={prefix}.models" in worker.log_path.read_text()  # the worker follows announcements


def delete(url: str, kind: str, name: str) -> None:
    """``queue_delete`` or ``exchange_delete`` of ``name`` as the URL's account, on a channel of its own."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        getattr(conn.channel(), f"{kind}_delete")(name)
    finally:
        if conn.is_open:
            conn.close()


def shared_names_survive(accounts: dict, prefix: str) -> list[str]:
    """Neither the client account nor the worker account may delete what others share (configure is the right to
    create *and* delete): the client could delete ``<p>.classify`` with other callers' requests queued, the worker
    the models exchange. Each refusal is asserted; the names are still there afterwards."""
    attempts = [("serq-client", "queue", f"{prefix}.{suffix}") for suffix in ("classify", "dead", "train")]
    attempts += [("serq-client", "exchange", f"{prefix}.{suffix}") for suffix in ("results", "events", "models", "dead")]
    attempts += [("serq-worker", "exchange", f"{prefix}.models"), ("serq-worker", "queue", f"{prefix}.train")]
    for account, kind, name in attempts:
        text = refused(lambda a=account, k=kind, n=name: delete(accounts[a], k, n))
        assert f"access to {kind} '{name}'" in text and f"user '{account}'" in text, text
    operator = pika.BlockingConnection(pika.URLParameters(accounts["serq-operator"]))
    try:
        for _, kind, name in attempts:
            channel = operator.channel()
            if kind == "queue":
                channel.queue_declare(name, passive=True)
            else:
                channel.exchange_declare(name, passive=True)
            channel.close()
    finally:
        operator.close()
    return [f"{account} {kind} {name}" for account, kind, name in attempts]


def test_a_client_finds_no_topology_before_any_worker_and_says_so(accounts, prefix):
    """Before any worker or trainer has started, the client account cannot create their queues (nor should it):
    a classify request times out saying the queue does not exist, a `serq train` job is refused ``no_trainer``,
    nothing was created, and following results works (the definitions hold the exchanges)."""
    settings = Settings(amqp_url=accounts["serq-client"], prefix=prefix)
    with Client(settings=settings) as client, pytest.raises(Timeout) as info:
        client.classify(b"RIFF....", timeout=2)
    assert f"{prefix}.classify does not exist" in str(info.value) and "serq worker" in str(info.value)
    env = os.environ | {"SERQ_AMQP_URL": accounts["serq-client"], "SERQ_PREFIX": prefix}
    out = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "four", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "[no_trainer]" in out.stderr and f"{prefix}.train does not exist" in out.stderr, \
        out.stderr
    # the exchanges come with the definitions: followers may subscribe before any worker runs
    with Client(settings=settings) as client, client.subscribe(None, lambda r, key: None):
        pass
    operator = pika.BlockingConnection(pika.URLParameters(accounts["serq-operator"]))
    try:
        assert not queue_exists(operator, f"{prefix}.classify")
    finally:
        operator.close()


def test_a_worker_without_the_models_exchange_serves_and_follows_it_once_declared(accounts, start_worker, prefix,
                                                                                  short_clips):
    """The worker account may only find ``<p>.models``: with the exchange gone (an operator deleted it), a worker
    serves, says it does not follow announcements yet, and binds once the exchange is back (looked for every 10 s)."""
    operator = pika.BlockingConnection(pika.URLParameters(accounts["serq-operator"]))
    try:
        operator.channel().exchange_delete(f"{prefix}.models")
        worker = start_worker({"SERQ_AMQP_URL": accounts["serq-worker"]})
        log = worker.log_path.read_text()
        assert "not following model announcements yet" in log and 'models="not yet declared"' in log, log[-2000:]
        settings = Settings(amqp_url=accounts["serq-client"], prefix=prefix)
        with Client(settings=settings) as client:
            assert client.classify(short_clips[0], timeout=60).label  # serving meanwhile
        declare_models(operator.channel(), settings)
    finally:
        operator.close()
    deadline = time.monotonic() + 30
    while "following model announcements models=" not in worker.log_path.read_text():
        assert time.monotonic() < deadline and worker.poll() is None, worker.log_path.read_text()[-2000:]
        time.sleep(0.2)
