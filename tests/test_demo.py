"""`serq demo` end to end: real broker, real worker and trainer, real playback path.

Each run must leave nothing behind: its services' pids are gone, its queues and
exchanges are deleted, and a broker it found running is still running (one it
started is stopped).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serq.cli.demo import free_port

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def demo(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env)
    return subprocess.run([sys.executable, "-m", "serq", "demo", *args], env=full, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def started_pids(out: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"\[demo\] started (\w+) \(pid (\d+)\)", out)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; the demo reaps its children, so none should be left.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def names_left(url: str, prefix: str) -> list[str]:
    """Which of the deployment's queues/exchanges still exist (passive declares)."""
    import pika

    from serq.transport.topology import NAME_SUFFIXES

    left = []
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for suffix in NAME_SUFFIXES:
            for kind in ("queue", "exchange"):
                ch = conn.channel()
                try:
                    if kind == "queue":
                        ch.queue_declare(f"{prefix}.{suffix}", passive=True)
                    else:
                        ch.exchange_declare(f"{prefix}.{suffix}", passive=True)
                    left.append(f"{kind} {prefix}.{suffix}")
                except pika.exceptions.ChannelClosedByBroker:
                    pass
                finally:
                    if ch.is_open:
                        ch.close()
    finally:
        conn.close()
    return left


@pytest.mark.broker
@pytest.mark.slow
def test_demo_on_the_running_broker(amqp_url, tmp_path):
    from serq.models.registry import default_metadata

    played = tmp_path / "played.wav"
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.!default {{ type file; slave.pcm {{ type null }}; file "{played}"; format "wav" }}\n')
    proc = demo("--png", str(tmp_path / "png"), env={"SERQ_AMQP_URL": amqp_url, "ALSA_CONFIG_PATH": str(conf)})
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "using the broker" in out and "(the broker was already running: left alone)" in out
    clips = sorted(SAMPLES.glob("*.flac"))
    meta = default_metadata()
    for clip in clips:
        assert f"played {clip.name}" in out
        assert f"serq> spectrum {clip.name}" in out
        assert re.search(rf"^{re.escape(clip.name)}: \w+ \(\d+%\)  model {re.escape(meta.version)}", out, re.M)
        assert (tmp_path / "png" / f"{clip.stem}.png").stat().st_size > 10_000
    assert played.stat().st_size > 0
    assert f"/{len(clips)} agree with the label in the file name" in out
    assert f"balanced accuracy  {meta.metrics.balanced_accuracy:.3f}" in out
    assert "Traceback" not in out + proc.stderr
    pids = started_pids(out)
    assert set(pids) == {"worker", "trainer"}
    assert not [name for name, pid in pids.items() if alive(pid)]
    prefix = re.search(r"\[demo\] prefix (demo-[0-9a-f]+)", out).group(1)
    assert names_left(amqp_url, prefix) == []
    assert f"stopped worker (pid {pids['worker']})" in out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_starts_and_stops_its_own_broker(tmp_path):
    """No broker at SERQ_AMQP_URL: a private node is started for the demo and stopped after it."""
    if not shutil.which("rabbitmq-server"):
        pytest.skip("rabbitmq-server is not installed")
    # A high port on purpose: the node's Erlang distribution port must not be derived as port + 20000.
    port = next((p for p in (free_port() for _ in range(200)) if p > 45535), free_port())
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    one = tmp_path / "clips"
    one.mkdir()
    shutil.copy(next(SAMPLES.glob("sad-*.flac")), one)
    proc = demo("--samples", str(one), "--no-play", env={"SERQ_AMQP_URL": url})
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    node = re.search(r"starting a private RabbitMQ node (serq-demo-[0-9a-f]+)@localhost", out).group(1)
    assert f"stopped the RabbitMQ node it started ({node}@localhost)" in out
    assert re.search(r"^sad-\S+\.flac: \w+ \(\d+%\)", out, re.M)
    pids = started_pids(out)
    assert set(pids) == {"worker", "trainer"} and not any(alive(p) for p in pids.values())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the demo's broker still listens"
    names = subprocess.run(["epmd", "-names"], capture_output=True, text=True).stdout if shutil.which("epmd") else ""
    assert node not in names


def test_demo_without_a_broker_prints_the_one_command(tmp_path):
    """Nothing answers and nothing can start one (empty PATH): a clear error naming the command, exit non-zero."""
    from serq.cli.demo import INSTALL_HINT

    empty = tmp_path / "bin"
    empty.mkdir()
    proc = demo(env={"SERQ_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F", "PATH": str(empty)},
                timeout=120)
    assert proc.returncode != 0
    assert "error [no_broker]" in proc.stderr and INSTALL_HINT in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "started" not in proc.stdout


def test_demo_script_covers_every_clip():
    from serq.cli.demo import script

    clips = sorted(SAMPLES.glob("*.flac"))
    text = script(clips, play=True, train=True, png_dir=None)
    lines = text.splitlines()
    for clip in clips:
        assert f"play {clip.name}" in lines and f"spectrum {clip.name}" in lines
    assert lines.count("classify " + " ".join(c.name for c in clips)) == 2
    assert lines.count("accuracy") == 2 and any(line.startswith("train ") for line in lines)
    assert lines[-1] == "quit"
    assert not any(line.startswith("play") for line in script(clips, play=False, train=False, png_dir=None).splitlines())
