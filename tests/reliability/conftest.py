"""Fixtures of the reliability suite: short real clips, a private RabbitMQ node, RSS, the fault report.

Every fault test records a row with :func:`record` (fault, requests, answered, lost,
errors by code, the command that reproduces it); the rows are printed as a Markdown
table at the end of the run (the table in ``docs/reliability.md`` is that output), and
written as JSON to ``$SERQ_RELIABILITY_REPORT`` when it is set.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from serq.errors import ERROR_CODES

from helpers.broker import restartable_port_pair

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"
#: Rows of the fault report, in the order the tests ran.
REPORT: list[dict] = []


@pytest.fixture(scope="session")
def short_clips() -> list[bytes]:
    """24 one-second WAV clips of real speech: three windows of each shipped sample (samples/, RAVDESS)."""
    clips = []
    for path in sorted(SAMPLES.glob("*.flac")):
        x, rate = sf.read(path, dtype="float32")
        for start in (0.4, 0.9, 1.4):
            buf = io.BytesIO()
            sf.write(buf, x[int(start * rate):int((start + 1.0) * rate)], rate, format="WAV", subtype="PCM_16")
            clips.append(buf.getvalue())
    assert len(clips) >= 24, f"expected the 8 shipped samples in {SAMPLES}"
    return clips


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc/<pid>/status (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def health(port: int) -> tuple[int, dict]:
    """A service's ``/healthz`` on ``port``: the HTTP status and the JSON body (503 included)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def tally(outcomes) -> tuple[int, Counter]:
    """``(answered, errors by code)`` of a list of outcomes (results, ClientErrors, or error codes as str)."""
    errors: Counter = Counter()
    answered = 0
    for outcome in outcomes:
        code = outcome if isinstance(outcome, str) else getattr(outcome, "code", None)
        if code in ("timeout", "connection_lost"):  # the client gave up: not an answer
            errors[code] += 1
            continue
        answered += 1
        if code is not None and code != "result":
            errors[code] += 1
    return answered, errors


def record(fault: str, requests: int, outcomes, command: str, **notes) -> dict:
    """Add a row to the fault report; returns it (``lost`` = requests - answered)."""
    answered, errors = tally(outcomes)
    row = {"fault": fault, "requests": requests, "answered": answered, "lost": requests - answered,
           "errors": dict(sorted(errors.items())), "command": command, **notes}
    REPORT.append(row)
    return row


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    tr = terminalreporter
    tr.section("serq reliability report")
    tr.write_line("| fault | requests | answered | lost | errors by code | notes | reproduce |")
    tr.write_line("|---|---:|---:|---:|---|---|---|")
    for row in REPORT:
        errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "none"
        notes = "; ".join(f"{k} {v}" for k, v in row.items()
                          if k not in {"fault", "requests", "answered", "lost", "errors", "command"})
        tr.write_line(f"| {row['fault']} | {row['requests']} | {row['answered']} | {row['lost']} | {errors} | "
                      f"{notes} | `{row['command']}` |")
    target = os.environ.get("SERQ_RELIABILITY_REPORT")
    if target:
        Path(target).write_text(json.dumps(REPORT, indent=2))


def assert_typed(code: str) -> None:
    """A reply's code is one of the contract's, and not ``internal`` (which means a bug)."""
    assert code in ERROR_CODES, f"unknown error code {code!r}"
    assert code != "internal", "an internal error: a bug the input revealed (see the worker log)"


# --------------------------------------------------------------------------- a private broker


class PrivateBroker:
    """A RabbitMQ node of this test alone (serq.cli.demo.LocalBroker), which it may stop and start at will."""

    def __init__(self, workdir: Path):
        from serq.cli.demo import LocalBroker

        self.url = f"amqp://guest:guest@127.0.0.1:{restartable_port_pair()}/%2F"
        self.node = LocalBroker(self.url, workdir)

    def start(self) -> None:
        self.node.start(timeout=180)

    def ctl(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([shutil.which("rabbitmqctl"), "-n", self.node.node, *args],
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr[-1000:]}"

    def stop(self) -> None:
        self.node.stop()

    def _pid(self) -> int:
        return int((self.node.base / "node.pid").read_text().strip())

    def alive(self) -> bool:
        """The node's Erlang VM still runs (it wrote its pid at start)."""
        try:
            os.kill(self._pid(), 0)
            return True
        except (OSError, ValueError, TypeError):
            return False

    def kill_9(self) -> None:
        """SIGKILL the node's Erlang VM: a crash, with no goodbye to the cluster or the clients."""
        os.kill(self._pid(), signal.SIGKILL)


@pytest.fixture
def private_broker(tmp_path):
    """A private RabbitMQ node on free ports (never the shared broker); always stopped at the end."""
    yield from _running(tmp_path / "broker", PrivateBroker, "the broker-restart test needs a private node")


def _running(workdir: Path, make, why: str):
    """Start ``make(workdir)`` (skipping where rabbitmq-server is absent), yield it, always stop it."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        pytest.skip(f"rabbitmq-server is not installed: {why}")
    workdir.mkdir()
    nodes = make(workdir)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


class PrivateCluster:
    """Three private RabbitMQ nodes joined into one cluster (``rabbitmqctl join_cluster``), on free ports.

    ``url`` is the comma-separated list of the nodes' URLs, as ``SERQ_AMQP_URL`` takes it.
    """

    def __init__(self, workdir: Path, size: int = 3):
        self.nodes = []
        for i in range(size):
            (workdir / f"node{i}").mkdir()
            self.nodes.append(PrivateBroker(workdir / f"node{i}"))
        self.url = ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        first, *others = self.nodes
        for node in self.nodes:
            node.start()
        for node in others:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node.node)
            node.ctl("start_app")
            node.ctl("await_startup", timeout=180)

    def ctl(self, *args: str, timeout: float = 120) -> str:
        """rabbitmqctl against the first node still running; its standard output."""
        for node in self.nodes:
            if node.alive():
                done = subprocess.run([shutil.which("rabbitmqctl"), "-n", node.node.node, *args],
                                      capture_output=True, text=True, timeout=timeout)
                assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr[-1000:]}"
                return done.stdout
        raise AssertionError("no cluster node is running")

    def node_named(self, name: str) -> PrivateBroker:
        return next(node for node in self.nodes if node.node.node == name)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()



@pytest.fixture
def private_cluster(tmp_path):
    """A private 3-node RabbitMQ cluster (never the shared broker); always stopped at the end."""
    yield from _running(tmp_path / "cluster", PrivateCluster, "the cluster test needs private nodes")
