"""How the command line behaves when the world is not as it expects (issue 14's frictions).

- a reader that goes away (`| head -1`) ends the command quietly with exit 0, no traceback;
- a module of a missing install extra gives an install hint and a typed code, not a traceback;
- a second `serq worker` on one host, its metrics port taken, warns once and serves on.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from serq.client import Client
from serq.extras import EXTRA_OF_MODULE
from serq.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def serq(*args: str, blocked: tuple[str, ...] = (), **kw) -> subprocess.CompletedProcess:
    """Run `serq ARGS` in a fresh interpreter where the modules ``blocked`` cannot be imported (a base install)."""
    code = (f"import sys\nfor m in {list(blocked)!r}: sys.modules[m] = None\n"
            "from serq.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, **kw)


def test_a_closed_pipe_ends_the_command_quietly():
    # Read one line, then close our end while serq still has clips to print, as `head -1` does.
    proc = subprocess.Popen([sys.executable, "-m", "serq", "predict", "--json", str(SAMPLES)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert first.startswith(b"{"), first
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode == 0


@pytest.mark.parametrize(("args", "module", "extra"), [
    (("predict", "samples/angry-03-01-05-02-02-01-16.flac"), "scipy", "worker"),
    (("timeline", "samples/angry-03-01-05-02-02-01-16.flac"), "scipy", "worker"),
    (("worker",), "prometheus_client", "worker"),
])
def test_a_missing_extra_is_an_install_hint(args, module, extra):
    done = serq(*args, blocked=(module,))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "error [missing_extra]" in done.stderr and f"pip install 'serq[{extra}]'" in done.stderr, done.stderr


def test_the_bot_names_the_extra_it_misses():
    script = "spectrum samples/angry-03-01-05-02-02-01-16.flac\nquit\n"
    code = ("import sys\nsys.modules['matplotlib'] = None\nsys.modules['scipy'] = None\n"
            "from serq.cli import main\nsys.exit(main(['bot']))")
    done = subprocess.run([sys.executable, "-c", code], input=script, capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    out = done.stdout + done.stderr
    assert "[missing_extra]" in out and "pip install 'serq[worker]'" in out, out
    assert "[internal]" not in out, out


def test_every_extra_module_is_named():
    # The hint table must know every import an extra brings that the code uses.
    for module in ("librosa", "scipy", "sklearn", "soxr", "skops", "prometheus_client", "matplotlib", "plotext"):
        assert module in EXTRA_OF_MODULE, module


def consumers(amqp_url: str, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as conn:
        return conn.channel().queue_declare(queue, passive=True).method.consumer_count


@pytest.mark.broker
def test_two_workers_on_one_host_both_serve(start_worker, amqp_url, prefix):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = start_worker(env={"SERQ_METRICS_PORT": str(port), "SERQ_WORKER_ID": "first"})
    second = start_worker(env={"SERQ_METRICS_PORT": str(port), "SERQ_WORKER_ID": "second"})
    log = Path(second.log_path).read_text()
    assert "metrics port" in log and "SERQ_METRICS_PORT" in log, log
    assert first.poll() is None and second.poll() is None
    # Both consume: the broker lists two consumers on the classify queue, and requests are answered.
    deadline = time.monotonic() + 30
    while consumers(amqp_url, f"{prefix}.classify") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert consumers(amqp_url, f"{prefix}.classify") == 2
    with Client(settings=Settings(amqp_url=amqp_url, prefix=prefix)) as client:
        result = client.classify(SAMPLES / "angry-03-01-05-02-02-01-16.flac", timeout=60)
    assert result.label
