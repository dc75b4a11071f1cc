"""Shared fixtures: the corpus, the broker, isolated settings.

- ``ravdess_dir``: the corpus from ``SERQ_RAVDESS_DIR`` (default ``../shared/data/ravdess``
  relative to the repository); tests skip with a clear reason when it is absent.
- ``turev_dir``: TurEV-DB from ``SERQ_TUREV_DIR`` (default ``../shared/data/turev``), for
  cross-corpus evaluation only (its licence forbids training a shipped model on it).
- ``amqp_url`` / ``prefix``: the real broker at ``SERQ_AMQP_URL``; every test gets its own
  name prefix and its queues/exchanges are deleted afterwards.
- ``isolated_env``: SERQ_MODEL_DIR and SERQ_CACHE_DIR in a temp dir, so no test touches
  the user's registry.
- ``signing_keys`` (autouse): every test signs with a test key pair and trusts only it
  (SERQ_SIGNING_KEY, SERQ_TRUSTED_KEYS), the way a deployment does: the check stays on.
  Subprocess workers and trainers inherit it. ``untrusted_keys`` is a second pair.
- ``cli``: `serq` in this process, with the module's ``env``; ``feature_cache``: one per session;
  ``model_dir`` / ``speaker_version``: a tiny speaker model in a module's worker registry.

Helpers that are not fixtures live in tests/helpers/.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pika
import pytest

from serq.cli import main
from serq.schemas import Hyperparameters, TrainRequest
from serq.settings import Settings, get_settings
from serq.transport.topology import delete_deployment

REPO = Path(__file__).resolve().parents[1]
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


def _ravdess() -> Path:
    raw = Path(os.environ.get("SERQ_RAVDESS_DIR", "../shared/data/ravdess"))
    return raw if raw.is_absolute() else (REPO / raw).resolve()


RAVDESS = _ravdess()


def _turev() -> Path:
    raw = Path(os.environ.get("SERQ_TUREV_DIR", "../shared/data/turev"))  # as serq.settings' turev_dir
    return raw if raw.is_absolute() else (REPO / raw).resolve()


TUREV = _turev()


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


@pytest.fixture(scope="session")
def turev_dir() -> Path:
    if not (TUREV / "Angry").is_dir():
        pytest.skip(f"TurEV-DB corpus not found at {TUREV} (set SERQ_TUREV_DIR)")
    return TUREV


def _broker_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The broker at SERQ_AMQP_URL; else docker-compose's RabbitMQ when a Docker engine answers; else skip."""
    url = os.environ.get("SERQ_AMQP_URL", DEFAULT_AMQP)
    if _broker_reachable(url):
        return url
    composed = _compose_broker()
    if composed is None:
        pytest.skip(f"no RabbitMQ at {url} and no Docker engine (set SERQ_AMQP_URL or start rabbitmq-server)")
    return composed


def _compose_broker() -> str | None:
    """Bring up the `rabbitmq` service of docker-compose.yml (only if `docker info` works); its URL or None."""
    if shutil.which("docker") is None or not (REPO / "docker-compose.yml").is_file():
        return None
    if subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode != 0:
        return None
    from serq.transport.accounts import ACCOUNTS

    # The compose broker has only the least-privilege accounts; tests use the operator's.
    password = os.environ.get("BROKER_OPERATOR_PASSWORD") or uuid.uuid4().hex
    env = {var: os.environ.get(var) or uuid.uuid4().hex for var in ACCOUNTS.values()}
    env = dict(os.environ) | env | {"BROKER_OPERATOR_PASSWORD": password}
    up = subprocess.run(["docker", "compose", "-f", str(REPO / "docker-compose.yml"), "up", "-d", "--wait", "rabbitmq"],
                        capture_output=True, text=True, timeout=300, env=env)
    if up.returncode != 0:
        pytest.fail(f"docker compose could not start rabbitmq: {up.stderr[-2000:]}")
    port = os.environ.get("BROKER_PORT", "5672")
    url = f"amqp://serq-operator:{password}@127.0.0.1:{port}/%2F"
    for _ in range(60):
        if _broker_reachable(url):
            os.environ["SERQ_AMQP_URL"] = url  # subprocesses (workers, trainers) use it too
            return url
        time.sleep(1)
    pytest.fail("docker compose started rabbitmq but it never accepted connections")


@pytest.fixture
def prefix(amqp_url) -> str:
    """A unique name prefix for this test; its queues and exchanges are deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    _delete_prefixed(amqp_url, name)


def _delete_prefixed(url: str, name: str) -> None:
    try:
        conn = pika.BlockingConnection(pika.URLParameters(url))
    except Exception:
        return
    try:
        delete_deployment(conn, name)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def test_keys(tmp_path_factory) -> Path:
    """A key pair of this test session (``serq keys generate``): the folder holding signing.key/.pub."""
    from serq.models.signing import generate_keys

    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder)
    return folder


@pytest.fixture(scope="session")
def untrusted_keys(tmp_path_factory) -> Path:
    """A second pair, trusted by nobody: what an attacker signs with."""
    from serq.models.signing import generate_keys

    folder = tmp_path_factory.mktemp("untrusted-keys")
    generate_keys(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def signing_keys(test_keys):
    """Sign with the session's test key and trust only it (unsigned models stay refused).

    Session-wide, so module fixtures that train and register models sign too.
    """
    from serq.settings import get_settings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERQ_SIGNING_KEY", str(test_keys / "signing.key"))
        mp.setenv("SERQ_TRUSTED_KEYS", str(test_keys / "signing.pub"))
        mp.delenv("SERQ_ALLOW_UNSIGNED_MODELS", raising=False)
        get_settings.cache_clear()
        yield test_keys
    get_settings.cache_clear()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """SERQ_MODEL_DIR/SERQ_CACHE_DIR under tmp_path; the settings cache is cleared."""
    monkeypatch.setenv("SERQ_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("SERQ_CACHE_DIR", str(tmp_path / "cache"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def _service_factory(command: str, amqp_url: str, prefix: str, tmp_path: Path):
    """Generator behind ``start_worker``/``start_trainer``: ``serq <command>`` subprocesses on this test's prefix.

    ``start(env=...)`` returns once the service logs ``consuming`` (its log is
    ``proc.log_path``); every one still running at the end gets SIGTERM, then
    SIGKILL after 20 s. They share ``tmp_path/models`` as SERQ_MODEL_DIR and, as the
    workers of one deployment do, a SERQ_STATE_KEY.
    """
    procs: list[subprocess.Popen] = []

    def start(env: dict | None = None, *, wait: bool = True, timeout: float = 90.0) -> subprocess.Popen:
        n = len(procs)
        full = dict(os.environ)
        full.update({"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_METRICS_PORT": "0", "SERQ_TRAINER_METRICS_PORT": "0",
                     "SERQ_MODEL_DIR": str(tmp_path / "models"), "SERQ_WORKER_ID": f"{command}{n}",
                     "SERQ_LOG_LEVEL": "INFO", "SERQ_LOG_JSON": "0", "SERQ_STATE_KEY": f"test-state-key-{prefix}"})
        full.update(env or {})
        log_path = tmp_path / f"{command}{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "serq", command], env=full, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=REPO)
        proc.log_path = log_path
        procs.append(proc)
        deadline = time.monotonic() + timeout
        while wait and "consuming" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{command} did not start (exit {proc.poll()}):\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def start_worker(amqp_url, prefix, tmp_path):
    """Factory: ``start_worker(env={...})`` runs `serq worker` as a real subprocess (see ``_service_factory``)."""
    yield from _service_factory("worker", amqp_url, prefix, tmp_path)


@pytest.fixture
def start_trainer(amqp_url, prefix, tmp_path):
    """Factory: ``start_trainer(env={...})`` runs `serq trainer` as a real subprocess (pass SERQ_DATA_ROOTS)."""
    yield from _service_factory("trainer", amqp_url, prefix, tmp_path)


def close_broker_connections(match: str) -> int:
    """Close (broker side, like a network cut) every connection whose client properties contain ``match``.

    Needs ``rabbitmqctl`` on this host; skips the test otherwise. Returns how many were closed.
    """
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not available to cut connections")
    listing = subprocess.run(["rabbitmqctl", "list_connections", "pid", "client_properties", "-q", "--no-table-headers"],
                             capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        pytest.skip(f"rabbitmqctl cannot list connections: {listing.stderr[-300:]}")
    pids = [line.split("\t")[0] for line in listing.stdout.splitlines() if match in line]
    for pid in pids:
        subprocess.run(["rabbitmqctl", "close_connection", pid, "serq test: simulated network cut"],
                       capture_output=True, timeout=60)
    return len(pids)


# --- fixtures several modules share


@pytest.fixture
def cli(env, monkeypatch, capsys):
    """Run `serq` in this process (cheaper than a new interpreter per call): ``(code, stdout, stderr)``,
    with the module's ``env`` fixture's SERQ_MODEL_DIR and SERQ_CACHE_DIR."""
    for key in ("SERQ_MODEL_DIR", "SERQ_CACHE_DIR"):
        monkeypatch.setenv(key, env[key])
    get_settings.cache_clear()

    def run(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    yield run
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    """One feature cache for the session's training jobs, as a deployment shares one between jobs."""
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("profiles-broker") / "models"


@pytest.fixture(scope="module")
def speaker_version(ravdess_dir, model_dir) -> str:
    """A tiny speaker model in the workers' registry, on the profile path (trained once per module)."""
    from serq.worker.training.job import run_training  # lazy: scikit-learn, seconds every test would pay

    settings = Settings(model_dir=model_dir, cache_dir=get_settings().cache_dir)
    request = TrainRequest(dataset=str(ravdess_dir), speakers=["01", "02", "03"], folds=2, activate="always",
                           speaker_normalisation=True,
                           hyperparameters=Hyperparameters(hidden_layers=[16], max_iter=30, random_state=0,
                                                           augment_speeds=[], channel_copies=0))
    result = run_training(request, settings)
    assert result.ok, result.error
    return result.version
