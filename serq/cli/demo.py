"""`serq demo`: the whole service on one machine, shown by the bot, then put away.

1. A broker: the one at ``SERQ_AMQP_URL`` if it answers; else a private, throwaway
   RabbitMQ node (local ``rabbitmq-server``: own node name, port from the URL, data in
   a temp dir, no plugins), else ``docker compose up rabbitmq`` (own project name),
   else :class:`NoBroker` naming the one command that gets one.
2. A worker and a trainer as subprocesses, with a signing key pair of their own (the trainer
   signs, the worker trusts only that key), on a private ``SERQ_PREFIX``
   (``demo-<random>``) and a temp ``SERQ_MODEL_DIR``: nothing they do touches another
   deployment on the same broker.
3. The bot's script over ``samples/``: play, spectrum and classify each clip, the
   timeline of three clips joined into one recording (streamed through the broker),
   the models and the active model's honest accuracy; with ``--train`` a short training
   job on a few RAVDESS actors, activated, and the clips classified again.
4. Shutdown of everything it started, and only that: the services, the demo's queues
   and exchanges, the broker if it started one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np
import soundfile as sf

from serq.cli.output import expand_paths
from serq.errors import SerqError
from serq.models.signing import generate_keys
from serq.settings import Settings, get_settings, redact_url
from serq.transport.accounts import ACCOUNTS
from serq.transport.connection import close_quietly, connect, node_urls
from serq.transport.topology import consumer_count, delete_deployment

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "samples"
COMPOSE_FILE = REPO / "docker-compose.yml"
#: Every name suffix a deployment may create (queues and exchanges), removed at the end.
#: What to run when no broker can be had (Debian/Ubuntu starts the service on install).
INSTALL_HINT = "sudo apt-get install -y rabbitmq-server"
#: The short training job of ``--train``: 4 emotions, 6 actors (about half a minute on 2 cores).
TRAIN_ARGS = "--speakers 01,02,03,04,05,06 --emotions neutral,happy,sad,angry --folds 3 --max-iter 300 --activate always"


class NoBroker(SerqError):
    code = "no_broker"


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on now (for the private node's Erlang distribution)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def amqp_ok(settings: Settings) -> bool:
    """True if ``settings.amqp_url`` accepts an AMQP login (not just a TCP connection)."""

    try:
        connect(settings, "serq-demo-probe").close()
        return True
    except SerqError:
        return False


def docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return all(subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
                   for cmd in (["docker", "info"], ["docker", "compose", "version"]))
    except (OSError, subprocess.TimeoutExpired):
        return False


def stop_process(proc: subprocess.Popen, name: str, grace: float = 30.0) -> None:
    """SIGTERM to the process group a child leads (it was started in a session of its own), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop within {grace:.0f} s: killing it")
    # Anything left in its group (a shell's children, a helper) goes too.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


# ------------------------------------------------------------------ brokers it can start


@dataclass
class LocalBroker:
    """A private RabbitMQ node for the demo: own name, port, data directory; no plugins."""

    url: str
    workdir: Path
    proc: subprocess.Popen | None = None
    epmd_was_running: bool = True
    base: Path | None = None
    node: str = ""

    def start(self, timeout: float = 120.0) -> str:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 5672
        # Its own temp dir (not inside the 0700 workdir): the node may run as another user.
        base = self.base = Path(tempfile.mkdtemp(prefix="serq-demo-rabbitmq-"))
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")  # no management UI/ports to clash with another node
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.1 = {host}:{port}\n")
        if os.geteuid() == 0:  # Debian's wrapper runs the node as the rabbitmq user
            with contextlib.suppress(OSError, LookupError):  # no rabbitmq user: run as we are
                for path in [base, *base.rglob("*")]:
                    shutil.chown(path, "rabbitmq", "rabbitmq")
        epmd = shutil.which("epmd")
        self.epmd_was_running = not epmd or subprocess.run([epmd, "-names"], capture_output=True).returncode == 0
        node = self.node = f"serq-demo-{secrets.token_hex(3)}@localhost"
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": node, "RABBITMQ_NODE_PORT": str(port), "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_NODE_IP_ADDRESS": host, "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"), "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"), "RABBITMQ_PID_FILE": str(base / "node.pid"),
            # The URL's account, so a fresh node accepts exactly what SERQ_AMQP_URL says.
            "RABBITMQ_DEFAULT_USER": unquote(parts.username or "guest"),
            "RABBITMQ_DEFAULT_PASS": unquote(parts.password or "guest"),
            "RABBITMQ_DEFAULT_VHOST": unquote(parts.path[1:] or "/") or "/",
        })
        log = open(self.workdir / "rabbitmq-server.log", "wb")
        say(f"no broker at {redact_url(self.url)}: starting a private RabbitMQ node {node} on {host}:{port}")
        self.proc = subprocess.Popen([shutil.which("rabbitmq-server")], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        settings = Settings(amqp_url=self.url)
        deadline = time.monotonic() + timeout
        while not (port_open(host, port) and amqp_ok(settings)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.workdir / "rabbitmq-server.log").read_text(errors="replace")[-1500:]
                self.stop()
                raise NoBroker(f"rabbitmq-server did not come up on {host}:{port}:\n{tail}")
            time.sleep(0.5)
        say(f"RabbitMQ node {node} is up")
        return self.url

    def stop(self) -> None:
        if self.proc is None:
            return
        # The node may not be our child (Debian's wrapper runs it through `su` in a session of
        # its own): ask it to shut down by name, then make sure of it by the pid it wrote.
        ctl, done = shutil.which("rabbitmqctl"), False
        if ctl:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                done = subprocess.run([ctl, "-n", self.node, "shutdown"], capture_output=True, timeout=120).returncode == 0
        if not done:  # `shutdown` returns once the node's process has exited
            self._kill_node()
        stop_process(self.proc, "rabbitmq-server", grace=30)
        say(f"stopped the RabbitMQ node it started ({self.node})")
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)
        epmd = shutil.which("epmd")
        if epmd and not self.epmd_was_running:
            # Erlang started epmd for our node; it refuses to die while other nodes use it.
            subprocess.run([epmd, "-kill"], capture_output=True)


    def _kill_node(self, grace: float = 30.0) -> None:
        """SIGTERM (then SIGKILL) to the pid the node wrote, if it still runs."""
        try:
            beam = int((self.base / "node.pid").read_text().strip())
            os.kill(beam, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                os.kill(beam, 0)  # ProcessLookupError once it is gone
                time.sleep(0.1)
            os.kill(beam, signal.SIGKILL)
        except (OSError, ValueError):
            pass


@dataclass
class ComposeBroker:
    """The compose file's ``rabbitmq`` service under a project name of its own, with a fresh account."""

    url: str
    project: str = field(default_factory=lambda: f"serq-demo-{secrets.token_hex(3)}")
    started: bool = False

    def _run(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args],
                              env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)

    def start(self) -> str:
        parts = urlsplit(self.url)
        port = parts.port or 5672
        # The compose broker imports the least-privilege accounts; the demo runs everything as the operator.
        passwords = {var: secrets.token_hex(16) for var in ACCOUNTS.values()}
        user, password = "serq-operator", passwords["BROKER_OPERATOR_PASSWORD"]
        env = dict(os.environ, **passwords, BROKER_PORT=str(port), BROKER_UI_PORT="0")
        say(f"no broker at {redact_url(self.url)}: starting RabbitMQ with docker compose (project {self.project})")
        self.started = True
        proc = self._run("up", "-d", "--wait", "rabbitmq", env=env)
        if proc.returncode != 0:
            self.stop()
            raise NoBroker(f"docker compose up rabbitmq failed:\n{proc.stderr[-1500:]}")
        return urlunsplit(("amqp", f"{quote(user)}:{quote(password, safe='')}@127.0.0.1:{port}", "/%2F", "", ""))

    def stop(self) -> None:
        if self.started:
            self._run("down", "-v", "--remove-orphans", timeout=300)
            say(f"removed the RabbitMQ container it started (project {self.project})")
            self.started = False


def obtain_broker(settings: Settings, workdir: Path, stack: ExitStack) -> tuple[str, str]:
    """A broker URL that answers, and how it was had (``existing``, ``local``, ``docker``)."""
    if amqp_ok(settings):
        say(f"using the broker at {settings.redacted_amqp_url}")
        return settings.amqp_url, "existing"
    first = node_urls(settings)[0]  # a broker the demo starts itself is one node, at the first URL
    parts = urlsplit(first)
    local = (parts.hostname or "127.0.0.1") in {"127.0.0.1", "localhost", "::1"}
    if local and port_open(parts.hostname or "127.0.0.1", parts.port or 5672):
        raise NoBroker(f"something listens at {settings.redacted_amqp_url} but refuses an AMQP login: "
                       "check the credentials in SERQ_AMQP_URL")
    if local and shutil.which("rabbitmq-server"):
        broker = LocalBroker(first, workdir)
        stack.callback(broker.stop)
        return broker.start(), "local"
    if local and COMPOSE_FILE.is_file() and docker_works():
        broker = ComposeBroker(first)
        stack.callback(broker.stop)
        return broker.start(), "docker"
    raise NoBroker(f"no RabbitMQ answers at {settings.redacted_amqp_url} and none can be started here "
                   f"(no rabbitmq-server, no Docker engine). Get one with:\n    {INSTALL_HINT}\n"
                   "then run `serq demo` again (or point SERQ_AMQP_URL at a broker you have)")


# ------------------------------------------------------------------ the services


def consumers(settings: Settings, queue: str) -> int:
    """Consumers of ``queue``, 0 while it does not exist yet."""
    conn = connect(settings, "serq-demo-probe")
    try:
        return consumer_count(conn, queue)
    finally:
        close_quietly(conn)


def start_services(commands: list[str], env: dict, workdir: Path, settings: Settings, stack: ExitStack,
                   timeout: float = 180.0) -> dict[str, subprocess.Popen]:
    """`serq COMMAND` children, each in its own session, started together; returns once each consumes its queue."""
    procs: dict[str, subprocess.Popen] = {}
    for command in commands:
        with open(workdir / f"{command}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "serq", command], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        procs[command] = proc
        stack.callback(lambda c=command, p=proc: (stop_process(p, c), say(f"stopped {c} (pid {p.pid})")))
    waiting = dict(procs)
    deadline = time.monotonic() + timeout
    while waiting:
        for command, proc in list(waiting.items()):
            queue = settings.name({"worker": "classify", "trainer": "train"}[command])
            if consumers(settings, queue) >= 1:
                say(f"started {command} (pid {proc.pid}), consuming {queue}")
                del waiting[command]
            elif proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / f"{command}.log").read_text(errors="replace")[-2000:]
                raise SerqError(f"`serq {command}` did not start (exit {proc.poll()}); its log:\n{tail}",
                                code="demo_failed")
        time.sleep(0.3)
    return procs


def delete_names(settings: Settings) -> None:
    """Remove the demo deployment's queues and exchanges."""

    try:
        conn = connect(settings, "serq-demo-cleanup")
    except SerqError:
        return
    try:
        delete_deployment(conn, settings.prefix)
    finally:
        if conn.is_open:
            conn.close()
    say(f"deleted the queues and exchanges of prefix {settings.prefix}")


# ------------------------------------------------------------------ the script


def joined_recording(clips: list[Path], out: Path, pause_s: float = 2.0) -> Path | None:
    """Up to three ``clips`` (mono mixes at the first one's rate) joined by ``pause_s`` of quiet noise, as FLAC.

    A short "call" for the bot's ``timeline`` (about a second of work for the workers);
    ``None`` if no clip could be used.
    """

    parts, rate = [], None
    for clip in clips[:3]:
        try:
            x, sr = sf.read(str(clip), dtype="float32", always_2d=True)
        except (OSError, RuntimeError):  # a clip the demo cannot read is shown failing by the bot itself
            continue
        if rate in (None, sr):
            rate = sr
            # -75 dBFS noise, not digital zeros: a pause sounds like a quiet room.
            quiet = np.random.default_rng(len(parts)).standard_normal(int(pause_s * sr)) * 10 ** (-75 / 20)
            parts += [x.mean(axis=1), quiet.astype(np.float32)]
    if not parts:
        return None
    sf.write(str(out), np.concatenate(parts), rate)
    return out


def script(samples: list[Path], *, play: bool, train: bool, png_dir: Path | None,
           recording: Path | None = None) -> str:
    """The bot commands the demo runs (``recording``: a joined recording to show as a ``timeline``)."""
    lines = ["# serq demo", "list"]
    for path in samples:
        if play:
            lines.append(f"play {path.name}")
        png = f" --png {png_dir / (path.stem + '.png')}" if png_dir else ""
        lines.append(f"spectrum {path.name}{png}")
    lines.append("classify " + " ".join(p.name for p in samples))
    if recording is not None:
        png = f" --png {png_dir / (recording.stem + '-timeline.png')}" if png_dir else ""
        lines.append(f"timeline {recording}{png}")
    lines += ["models", "accuracy"]
    if train:
        lines += [f"train {TRAIN_ARGS}", "classify " + " ".join(p.name for p in samples), "accuracy"]
    return "\n".join(lines) + "\nquit\n"


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(*, samples_dir: Path | None = None, train: bool = False, play: bool = True,
        png_dir: Path | None = None, keep: bool = False) -> int:
    """The demo; returns the exit status (the bot's: 0 when every command worked)."""

    base = get_settings()
    samples_dir = Path(samples_dir or SAMPLES_DIR)
    samples = list(expand_paths([str(samples_dir)])) if samples_dir.is_dir() else []
    if not samples:
        raise SerqError(f"no sample clips in {samples_dir} (pass --samples DIR)", code="not_found")
    ravdess = base.ravdess_dir.expanduser().resolve()
    if train and not (ravdess / "Actor_01").is_dir():
        raise SerqError(f"--train needs the RAVDESS corpus at {ravdess} (SERQ_RAVDESS_DIR)", code="dataset_error")
    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)  # so `finally` runs on SIGTERM too
    workdir = Path(tempfile.mkdtemp(prefix="serq-demo-"))
    try:
        with ExitStack() as stack:
            if not keep:
                stack.callback(shutil.rmtree, workdir, True)
            url, how = obtain_broker(base, workdir, stack)
            settings = base.model_copy(update={"amqp_url": url, "prefix": f"demo-{secrets.token_hex(4)}",
                                               "model_dir": workdir / "models"})
            stack.callback(delete_names, settings)
            env = dict(os.environ)
            # Its own model signing key: the trainer signs what it activates, the worker trusts only that.
            key, pub = generate_keys(workdir / "keys")
            env.update({
                "SERQ_SIGNING_KEY": str(key), "SERQ_TRUSTED_KEYS": str(pub),
                "SERQ_AMQP_URL": url, "SERQ_PREFIX": settings.prefix, "SERQ_MODEL_DIR": str(settings.model_dir),
                "SERQ_METRICS_PORT": "0", "SERQ_TRAINER_METRICS_PORT": "0",
                "SERQ_RAVDESS_DIR": str(ravdess), "SERQ_DATA_ROOTS": str(ravdess),
                "SERQ_CACHE_DIR": str(base.cache_dir),  # warm features (and numba's cache, if set) outlive the demo
            })
            say(f"prefix {settings.prefix}, models in {settings.model_dir} (removed afterwards)")
            start_services(["worker", "trainer"], env, workdir, settings, stack)
            script_path = workdir / "demo.bot"
            recording = joined_recording(samples, workdir / "call.flac")
            script_path.write_text(script(samples, play=play, train=train, png_dir=png_dir, recording=recording))
            say(f"running the bot over {len(samples)} clips in {samples_dir}")
            bot = subprocess.run([sys.executable, "-m", "serq", "bot", str(samples_dir), "--script", str(script_path)],
                                 env=env, stdin=subprocess.DEVNULL)
            say("the bot finished " + ("cleanly" if bot.returncode == 0 else f"with failures (exit {bot.returncode})"))
            if keep:
                say(f"logs kept in {workdir}")
            say("shutting down what the demo started" + (" (the broker was already running: left alone)"
                                                         if how == "existing" else ""))
        return bot.returncode
    finally:
        signal.signal(signal.SIGTERM, previous)
