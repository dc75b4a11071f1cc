"""Shared fixtures: the corpus, the broker, isolated settings.

- ``ravdess_dir``: the corpus from ``SERQ_RAVDESS_DIR`` (default ``../shared/data/ravdess``
  relative to the repository); tests skip with a clear reason when it is absent.
- ``amqp_url`` / ``prefix``: the real broker at ``SERQ_AMQP_URL``; every test gets its own
  name prefix and its queues/exchanges are deleted afterwards.
- ``isolated_env``: SERQ_MODEL_DIR and SERQ_CACHE_DIR in a temp dir, so no test touches
  the user's registry.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _ravdess() -> Path:
    raw = Path(os.environ.get("SERQ_RAVDESS_DIR", "../shared/data/ravdess"))
    return raw if raw.is_absolute() else (REPO / raw).resolve()


RAVDESS = _ravdess()


def ravdess_clip(actor: int, emotion: int, intensity: int = 1, statement: int = 1, repetition: int = 1) -> Path:
    """Path of one RAVDESS clip by its fields (emotion 1..8 in RAVDESS order)."""
    if emotion == 1:
        intensity = 1
    name = f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.flac"
    return RAVDESS / f"Actor_{actor:02d}" / name


@pytest.fixture(scope="session")
def ravdess_dir() -> Path:
    if not (RAVDESS / "Actor_01").is_dir():
        pytest.skip(f"RAVDESS corpus not found at {RAVDESS} (set SERQ_RAVDESS_DIR)")
    return RAVDESS


def _broker_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    url = os.environ.get("SERQ_AMQP_URL", DEFAULT_AMQP)
    if not _broker_reachable(url):
        pytest.skip(f"no RabbitMQ at {url} (set SERQ_AMQP_URL or start rabbitmq-server)")
    return url


@pytest.fixture
def prefix(amqp_url) -> str:
    """A unique name prefix for this test; its queues and exchanges are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    _delete_prefixed(amqp_url, name)


def _delete_prefixed(url: str, name: str) -> None:
    import pika

    suffixes = ["classify", "dead", "train", "results", "events", "models", "timeline", "enroll"]
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except Exception:
        return
    try:
        for suffix in suffixes:
            for kind in ("queue", "exchange"):
                ch = conn.channel()
                try:
                    (ch.queue_delete if kind == "queue" else ch.exchange_delete)(f"{name}.{suffix}")
                except Exception:
                    pass
                finally:
                    if ch.is_open:
                        ch.close()
    finally:
        conn.close()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """SERQ_MODEL_DIR/SERQ_CACHE_DIR under tmp_path; the settings cache is cleared."""
    from serq.settings import get_settings

    monkeypatch.setenv("SERQ_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SERQ_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
