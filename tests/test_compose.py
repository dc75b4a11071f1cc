"""docker-compose.yml and the Dockerfile: validated without an engine, run with one.

Without a Docker engine the compose file is checked against the Compose
Specification's JSON Schema and for the properties the deployment relies on, and the
Dockerfile's build stage is replayed (its COPY sources, filtered like the build
context, built into a wheel). With an engine, pytest-docker's ``docker_services``
brings the real compose project up (RabbitMQ healthy, two workers, a trainer) and a
classification and a retrain with its hot-swap go through it; without an engine that
test is skipped with the reason, not errored.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

from serq.transport.accounts import ACCOUNTS

from helpers.broker import consumer_count
from helpers.dockerfile import stages as _stages

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent
#: The broker accounts' passwords the compose file requires (random per test session).
BROKER_PASSWORDS = {var: secrets.token_hex(12) for var in ACCOUNTS.values()}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source of every short-syntax volume of a service."""
    out = {}
    for item in service.get("volumes", []):
        parts = item.split(":")
        # "source:target[:mode]"; the source may itself hold ${VAR:-default}.
        mode = parts[-1] if parts[-1] in {"ro", "rw"} else ""
        body = parts[:-1] if mode else parts
        out[body[-1]] = ":".join(body[:-1]) + (f":{mode}" if mode else "")
    return out


def _check_jsonschema() -> str:
    exe = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is part of the dev extra"
    return exe


def test_compose_file_matches_the_compose_specification():
    exe = _check_jsonschema()
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path):
    """The validation above can fail: a service with an unknown key is refused."""
    exe = _check_jsonschema()
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: serq\n    replicas_typo: 3\n")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_services(compose):
    assert set(compose["services"]) == {"setup", "rabbitmq", "worker", "trainer"}
    rabbit = compose["services"]["rabbitmq"]
    assert "management" in rabbit["image"]
    assert rabbit["healthcheck"]["test"][-3:] == ["rabbitmq-diagnostics", "-q", "ping"]
    # The broker is published on loopback only (AMQP and the management UI).
    ports = [str(p) for p in rabbit["ports"]]
    assert [p.rsplit(":", 1)[-1] for p in ports] == ["5672", "15672"]
    assert all(p.startswith("127.0.0.1:") for p in ports), ports


def test_worker_is_scalable_and_waits_for_a_healthy_broker(compose):
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "a fixed name breaks --scale worker=N"
    assert "ports" not in worker, "a host port breaks --scale worker=N"
    assert worker["command"] == ["serq", "worker"]
    # Its health is the worker's own /healthz on SERQ_METRICS_PORT's default.
    from serq.settings import Settings

    assert f":{Settings.model_fields['metrics_port'].default}/healthz" in " ".join(worker["healthcheck"]["test"])
    for name in ("worker", "trainer"):
        assert compose["services"][name]["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
        env = compose["services"][name]["environment"]
        assert "SERQ_AMQP_URL" in env and env["SERQ_MODEL_DIR"] == "/models"


def test_models_volume_is_shared_and_the_dataset_is_read_only(compose):
    worker, trainer = (_mounts(compose["services"][n]) for n in ("worker", "trainer"))
    assert worker["/models"] == trainer["/models"] == "models"
    assert "models" in compose["volumes"]
    assert trainer["/data"].endswith(":ro")
    assert "/data" not in worker
    assert compose["services"]["trainer"]["environment"]["SERQ_DATA_ROOTS"] == "/data"
    assert compose["services"]["trainer"]["command"] == ["serq", "trainer"]


def test_keys_and_least_privilege_accounts(compose):
    """Each service its own broker account; the private key only where models are signed."""
    services = compose["services"]
    setup = services["setup"]
    assert "serq keys generate /keys/signing" in setup["command"][-1]
    assert "serq broker definitions --out /definitions/definitions.json" in setup["command"][-1]
    assert all(f"${{{var}:?" in setup["environment"][var] for var in ACCOUNTS.values())  # required, no default
    assert services["rabbitmq"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    rabbit = _mounts(services["rabbitmq"])
    assert rabbit["/etc/rabbitmq/definitions"] == "broker-definitions:ro"
    conf = (REPO / rabbit["/etc/rabbitmq/conf.d/20-serq.conf"].removeprefix("./").removesuffix(":ro")).read_text()
    assert "load_definitions = /etc/rabbitmq/definitions/definitions.json" in conf
    for name, account in (("worker", "serq-worker"), ("trainer", "serq-trainer")):
        env = services[name]["environment"]
        assert env["SERQ_AMQP_URL"].startswith(f"amqp://{account}:")
        assert env["SERQ_TRUSTED_KEYS"] == "/keys/trusted/signing.pub"
    assert services["trainer"]["environment"]["SERQ_SIGNING_KEY"] == "/keys/signing/signing.key"
    assert "/keys/signing" not in _mounts(services["worker"])
    assert "SERQ_SIGNING_KEY" not in services["worker"]["environment"]


def test_the_services_commands_exist():
    """`serq worker` and `serq trainer`, which the compose file runs, are real subcommands."""
    from serq.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"worker", "trainer"} <= set(sub.choices)


# ------------------------------------------------------------------ the Dockerfile


def test_dockerfile_is_multi_stage_slim_and_non_root():
    stages = _stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    assert "slim" in runtime[0]
    users = [i.split(None, 1)[1] for i in runtime if i.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    cmd = [i for i in runtime if i.upper().startswith("CMD ")]
    assert cmd and cmd[-1].split(None, 1)[1] == '["serq", "worker"]'
    joined = "\n".join(runtime)
    assert "libsndfile1" in joined and "--no-install-recommends" in joined
    assert "NUMBA_CACHE_DIR" in joined
    # Nothing of the source tree reaches the runtime stage: it installs built wheels only.
    assert not any(i.upper().startswith(("COPY ", "ADD ")) and "--from" not in i for i in runtime)


def _copy_sources() -> list[str]:
    sources = []
    for instr in _stages()[0]:
        if instr.upper().startswith("COPY ") and "--from" not in instr:
            sources += shlex.split(instr)[1:-1]
    # The check below must not pass on nothing: the build stage copies the project file,
    # the readme and the package folders.
    assert {"pyproject.toml", "README.md", "serq"} <= set(sources), f"COPY lines parsed: {sources}"
    return sources


def test_build_context_holds_what_the_dockerfile_copies():
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert allowed, ".dockerignore is an allow-list: no `!` lines parsed"
    sources = _copy_sources()
    for src in sources:
        assert src.rstrip("/") in allowed, f"{src} is excluded from the build context by .dockerignore"
    # and nothing is let in that the build does not copy
    assert allowed == {src.rstrip("/") for src in sources}


@pytest.mark.slow
def test_build_stage_makes_a_wheel_with_the_default_model(tmp_path):
    """Replay the build stage: the wheel of exactly the copied sources holds serq and its model."""
    if not (REPO / "README.md").exists():
        pytest.fail("README.md is missing: pyproject's readme, and the Dockerfile copies it")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for src in _copy_sources():
        path = REPO / src
        if path.is_dir():
            shutil.copytree(path, ctx / src, ignore=skip)
        else:
            shutil.copy2(path, ctx / src)
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(ctx)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("serq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("serq/models/default/model.skops", "serq/models/default/model.json",
                   "serq/worker/engine/inference.py", "serq/client/__init__.py", "serq/cli/__init__.py"):
        assert needed in names
    tops = {n.split("/")[0] for n in names}
    assert tops <= {"serq", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}


# ------------------------------------------------------------------ with an engine
# pytest-docker's fixtures, set for this compose file. They are session-scoped as the plugin's
# own are; nothing starts unless a test asks for `docker_services`.


def docker_engine() -> str | None:
    """Why no Docker engine can run the compose project here, or None when one can."""
    if not shutil.which("docker"):
        return "no `docker` command"
    for cmd in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{' '.join(cmd)}` failed: {exc}"
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            return f"`{' '.join(cmd)}` failed: {last}"
    return None


#: Actors copied into the trainer's data folder: enough for a 2-fold speaker-grouped retrain.
TRAIN_ACTORS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def compose_data(tmp_path_factory) -> Path:
    """SERQ_DATA for the trainer: real copies of a few RAVDESS actors (a symlink would point
    outside the bind mount), readable by the image's uid 10001."""
    from conftest import RAVDESS

    root = tmp_path_factory.mktemp("compose-data")
    for actor in TRAIN_ACTORS:
        src = RAVDESS / f"Actor_{actor:02d}"
        if not src.is_dir():
            pytest.skip(f"RAVDESS corpus not found at {RAVDESS} (set SERQ_RAVDESS_DIR)")
        shutil.copytree(src, root / "four" / src.name)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"serqtest{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def docker_compose_command(compose_data) -> str:
    """`docker compose` with this test's variables: the corpus copy, ephemeral host ports (so a
    broker already on 5672 does not clash), and no SERQ_* of the caller's shell, which the
    compose file would otherwise take (a local SERQ_AMQP_URL would point the services at
    themselves)."""
    unset = " ".join(f"-u {shlex.quote(k)}" for k in sorted(os.environ) if k.startswith("SERQ_"))
    passwords = " ".join(f"{var}={pw}" for var, pw in BROKER_PASSWORDS.items())
    return (f"env {unset} SERQ_DATA={shlex.quote(str(compose_data))} BROKER_PORT=0 BROKER_UI_PORT=0 {passwords} "
            "docker compose")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # --wait: until the broker's and each worker's healthchecks pass (the workers' is /healthz).
    return ["up --build --wait --scale worker=2"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans"]


def _compose(request, *args: str) -> subprocess.CompletedProcess:
    """Run ``docker compose ARGS`` on the project the fixtures brought up."""
    command = shlex.split(request.getfixturevalue("docker_compose_command"))
    project = ["-f", request.getfixturevalue("docker_compose_file"),
               "-p", request.getfixturevalue("docker_compose_project_name")]
    return subprocess.run(command + project + list(args), capture_output=True, text=True, timeout=120)


def _containers(request) -> list[dict]:
    """`docker compose ps --format json`: one JSON array, or one object per line (older releases)."""
    out = _compose(request, "ps", "--format", "json").stdout.strip()
    if out.startswith("["):
        return json.loads(out)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_up_serves_classifies_and_hot_swaps(request):
    reason = docker_engine()
    if reason:
        pytest.skip(f"no Docker engine: {reason}")
    from conftest import ravdess_clip
    from serq.client import Client
    from serq.models.registry import default_metadata
    from serq.schemas import TrainResult

    services = request.getfixturevalue("docker_services")  # `docker compose up --build --wait`
    port = services.port_for("rabbitmq", 5672)
    # Classify and train as a client would: the least-privilege client account.
    url = f"amqp://serq-client:{BROKER_PASSWORDS['BROKER_CLIENT_PASSWORD']}@127.0.0.1:{port}/%2F"
    # The broker is healthy, two workers and a trainer run; both workers consume classify and
    # the trainer consumes train.
    containers = _containers(request)
    assert [c.get("Health") for c in containers if c["Service"] == "rabbitmq"] == ["healthy"], containers
    running = [c["Service"] for c in containers if c.get("State") == "running"]
    assert sorted(running) == ["rabbitmq", "trainer", "worker", "worker"], containers
    operator = f"amqp://serq-operator:{BROKER_PASSWORDS['BROKER_OPERATOR_PASSWORD']}@127.0.0.1:{port}/%2F"
    services.wait_until_responsive(lambda: consumer_count(operator, "serq.classify") == 2, timeout=180, pause=1)
    services.wait_until_responsive(lambda: consumer_count(operator, "serq.train") == 1, timeout=180, pause=1)

    clips = [ravdess_clip(actor, emotion, intensity=2) for actor in (7, 8) for emotion in (3, 4, 5, 6)]
    default = default_metadata().version
    with Client(url, "serq", timeout=60) as client:
        first = client.classify(clips[0])
        assert first.model_version == default and first.emotion

        # Retrain through the trainer container on its read-only /data, activate, and wait.
        env = {k: v for k, v in os.environ.items() if not k.startswith("SERQ_")} | {
            "SERQ_AMQP_URL": url, "SERQ_PREFIX": "serq"}
        trained = subprocess.run(
            [sys.executable, "-m", "serq", "train", "--data", "/data/four", "--folds", "2", "--hidden", "32",
             "--max-iter", "60", "--augment", "none", "--activate", "always", "--wait", "--json"],
            env=env, capture_output=True, text=True, timeout=1200, cwd=REPO)
        assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
        result = TrainResult.model_validate_json(trained.stdout)
        assert result.ok and result.activated and result.version != default
        assert result.dataset["speakers"] == len(TRAIN_ACTORS)

        # The hot-swap: both workers (two distinct worker ids) answer with the new version.
        on_new: set[str] = set()

        def both_workers_swapped() -> bool:
            for _, outcome in client.classify_many(clips, max_in_flight=4):
                assert not isinstance(outcome, Exception), outcome
                if outcome.model_version == result.version:
                    on_new.add(outcome.worker)
            return len(on_new) == 2

        services.wait_until_responsive(both_workers_swapped, timeout=120, pause=0.5)
    # The registry volume holds the activated version: a restarted worker would load it.
    active = _compose(request, "exec", "-T", "trainer", "cat", "/models/ACTIVE")
    assert active.stdout.strip() == result.version, active.stderr


def test_the_engine_check_names_its_reason(monkeypatch):
    """Without docker the compose test skips with a reason that says what is missing."""
    monkeypatch.setenv("PATH", "/nonexistent")
    assert docker_engine() == "no `docker` command"


def test_the_host_url_in_the_docs_is_the_compose_client_account(compose):
    # From the host, the client default (guest:guest) does not exist on the compose broker: the docs
    # name the client account and the port compose publishes.
    docs = (REPO / "docs" / "deploy.md").read_text()
    line = next(x for x in docs.splitlines() if "export SERQ_AMQP_URL=" in x and "serq-client" in x)
    published = compose["services"]["rabbitmq"]["ports"][0]  # "127.0.0.1:${BROKER_PORT:-5672}:5672"
    host_port = published.rsplit(":", 1)[0].split(":", 1)[1]
    assert f"@127.0.0.1:{host_port}/" in line, (line, published)
    assert "${BROKER_CLIENT_PASSWORD}" in line and "BROKER_CLIENT_PASSWORD" in ACCOUNTS.values()
