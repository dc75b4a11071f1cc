"""docker-compose.yml and the Dockerfile: validated without an engine, run with one.

Without a Docker engine the compose file is checked against the Compose
Specification's JSON Schema and for the properties the deployment relies on, and the
Dockerfile's build stage is replayed (its COPY sources, filtered like the build
context, built into a wheel). With an engine, a real ``docker compose up`` runs two
workers; without one that test is skipped, not errored.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent


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


def test_compose_file_matches_the_compose_specification():
    exe = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is part of the dev extra"
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path):
    """The validation above can fail: a service with an unknown key is refused."""
    exe = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  worker:\n    image: serq\n    replicas_typo: 3\n")
    proc = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def test_services(compose):
    assert set(compose["services"]) == {"rabbitmq", "worker", "trainer"}
    rabbit = compose["services"]["rabbitmq"]
    assert "management" in rabbit["image"]
    assert rabbit["healthcheck"]["test"][-3:] == ["rabbitmq-diagnostics", "-q", "ping"]
    # The broker is published on loopback only.
    assert all(str(p).startswith("127.0.0.1:") for p in rabbit.get("ports", []))


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


def test_the_services_commands_exist():
    """`serq worker` and `serq trainer`, which the compose file runs, are real subcommands."""
    from serq.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"worker", "trainer"} <= set(sub.choices)


# ------------------------------------------------------------------ the Dockerfile


def _stages() -> list[list[str]]:
    """Dockerfile instructions per stage (continuation lines joined, comments dropped)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


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
    return sources


def test_build_context_holds_what_the_dockerfile_copies():
    allowed = {line[1:].rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for src in _copy_sources():
        assert src.rstrip("/") in allowed, f"{src} is excluded from the build context by .dockerignore"


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


def _docker_ok() -> bool:
    if not shutil.which("docker"):
        return False
    for cmd in (["docker", "info"], ["docker", "compose", "version"]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode != 0:
                return False
        except (OSError, subprocess.TimeoutExpired):
            return False
    return True


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_compose_up_runs_two_workers(tmp_path):
    if not _docker_ok():
        pytest.skip("no Docker engine (docker info / docker compose version failed)")
    project = f"serqtest{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SERQ_")}
    env.update(SERQ_DATA=str(tmp_path), BROKER_PORT="0", BROKER_UI_PORT="0")
    base = ["docker", "compose", "-p", project, "-f", str(COMPOSE)]
    try:
        up = subprocess.run(base + ["up", "-d", "--build", "--wait", "--scale", "worker=2", "rabbitmq", "worker"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        ps = subprocess.run(base + ["ps", "--status", "running", "-q", "worker"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert len(ps.stdout.split()) == 2
    finally:
        subprocess.run(base + ["down", "-v", "--remove-orphans"], cwd=REPO, env=env, capture_output=True, timeout=300)
