"""How the command line behaves when the world is not as it expects.

- a reader that goes away (`| head -1`) ends the command quietly with exit 0, no traceback;
- a module of a missing install extra gives an install hint and a typed code, not a traceback;
- a second `serq worker` on one host, its metrics port taken, warns once and serves on.
"""

from __future__ import annotations

import importlib.util
import os
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

from helpers.broker import free_port

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
def test_a_trainer_whose_metrics_port_is_taken_names_its_own_setting(start_trainer, prefix):
    """The warning tells a trainer about SERQ_TRAINER_METRICS_PORT, the setting it reads (it used to name the
    worker's SERQ_METRICS_PORT, which changes nothing for a trainer)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        trainer = start_trainer(env={"SERQ_TRAINER_METRICS_PORT": str(port)})
        log = Path(trainer.log_path).read_text()
    warning = next(line for line in log.splitlines() if "metrics port" in line)
    assert f"metrics port {port} is taken" in warning and "SERQ_TRAINER_METRICS_PORT" in warning, warning
    assert "SERQ_METRICS_PORT" not in warning.replace("SERQ_TRAINER_METRICS_PORT", ""), warning
    assert "serq trainer" in warning and "--processes" not in warning, warning
    assert trainer.poll() is None  # serves on


@pytest.mark.broker
def test_two_workers_on_one_host_both_serve(start_worker, amqp_url, prefix):
    port = free_port()
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


def test_human_output_holds_no_python_dicts():
    from serq.cli.output import format_report
    from serq.text import counts

    assert counts({"emotion not selected": 640, "unreadable audio": 2}) == "640 emotion not selected, 2 unreadable audio"
    import numpy as np

    from serq.worker.training.fit import score

    y = np.array(["angry", "sad", "sad"])
    report = score(y, np.array(["angry", "angry", "sad"]), ["angry", "sad"], protocol="test",
                   speaker_independent=True, skipped={"emotion not selected": 640}).model_dump()
    text = format_report(report)
    assert "skipped: 640 emotion not selected" in text and "{" not in text, text


def test_bot_help_wraps_at_words_to_the_terminal():
    done = subprocess.run([sys.executable, "-m", "serq", "bot"], input="help\nquit\n", capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, "COLUMNS": "70"})
    from serq.cli.bot import Bot

    words = {w for name in dir(Bot) if name.startswith("do_") and getattr(Bot, name).__doc__
             for text in (getattr(Bot, name).__doc__, getattr(Bot, name).__doc__.replace(": ", " "))
             for w in text.split()}
    lines = [line for line in done.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) > 10, done.stdout
    for line in lines:
        usage_only = len(line.split(" " * 2)) == 2 and len(line) > 70  # a long usage has a line of its own
        assert len(line) <= 70 or usage_only, line
        assert all(w in words for w in line.split()), line  # no word broken across lines


def test_timeline_refuses_a_directory_up_front():
    done = serq("timeline", "samples")
    assert done.returncode == 2 and "error [invalid_request]" in done.stderr and "directory" in done.stderr, done
    bot = subprocess.run([sys.executable, "-m", "serq", "bot"], input="timeline samples --local\nquit\n",
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "directory" in bot.stdout + bot.stderr and "computed here" not in bot.stdout, bot.stdout


@pytest.mark.broker
def test_enrolling_too_few_clips_warns_at_once(start_worker, amqp_url, prefix, tmp_path):
    start_worker()  # the shipped speaker model: profiles from 4 clips on
    clips = sorted(SAMPLES.glob("*.flac"))[:3]
    env = {**os.environ, "SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix}
    done = subprocess.run([sys.executable, "-m", "serq", "profiles", "enroll", "alice", *map(str, clips),
                           "--dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "warning: alice's profile has 3 clip(s)" in done.stderr and "enrol 1 more" in done.stderr, done.stderr


@pytest.mark.broker
def test_worker_processes_each_get_a_port_and_a_taken_one_costs_no_worker(amqp_url, prefix, tmp_path):
    """`serq worker --processes 2` with SERQ_METRICS_PORT taken: the first child warns and serves without
    /metrics, the second serves /healthz on the next port; both consume; SIGTERM to the parent stops both."""
    import json
    import signal
    import urllib.request

    port = free_port(consecutive=2)  # the children's ports: p (taken below) and p + 1
    taken = socket.socket()
    taken.bind(("0.0.0.0", port))
    taken.listen()
    env = {**os.environ, "SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_METRICS_PORT": str(port),
           "SERQ_MODEL_DIR": str(tmp_path / "models"), "SERQ_WORKER_ID": "multi", "SERQ_LOG_JSON": "0"}
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        parent = subprocess.Popen([sys.executable, "-m", "serq", "worker", "--processes", "2"], env=env, cwd=REPO,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while log_path.read_text().count("consuming") < 2:
            assert parent.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        text = log_path.read_text()
        assert text.count(f"metrics port {port} is taken") == 1, text
        assert "worker=multi-0" in text and "worker=multi-1" in text, text
        assert consumers(amqp_url, f"{prefix}.classify") == 2
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/healthz", timeout=10).read())
        assert health["status"] == "ok", health
        with Client(settings=Settings(amqp_url=amqp_url, prefix=prefix)) as client:
            outcomes = [o for _, o in client.classify_many(sorted(SAMPLES.glob("*.flac")), timeout=60)]
        assert all(getattr(o, "label", None) for o in outcomes), outcomes
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(60) == 0, log_path.read_text()[-3000:]
        assert log_path.read_text().count("stopped worker=multi-") == 2
    finally:
        taken.close()
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_async_client_is_importable_from_serq_client_and_hints_its_extra():
    """Issue 14 names ``serq.client.AsyncClient``: it is ``serq.client.aio.AsyncClient``, loaded only when
    asked for (``import serq.client`` stays on pika), and without aio-pika an install hint."""
    code = ("import sys\nimport serq.client\nassert 'aio_pika' not in sys.modules\n"
            "from serq.client import AsyncClient\nfrom serq.client.aio import AsyncClient as A\n"
            "assert AsyncClient is A\nprint('ok')")
    if importlib.util.find_spec("aio_pika") is not None:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    blocked = "import sys\nsys.modules['aio_pika'] = None\nfrom serq.client import AsyncClient"
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 1 and "pip install 'serq[async]'" in done.stderr, done.stderr
    import serq.client

    with pytest.raises(AttributeError):
        serq.client.NoSuchThing  # noqa: B018 - the attribute access is the test
