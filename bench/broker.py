"""Benchmark: classification through the broker (1 and 2 workers) against in-process, same clips, one run.

    python -m bench.broker [--clips 60] [--rate 100] [--seconds 20] [--sustained-only] [--json]

Measures, on the same RAVDESS clips:
- in-process: ``classify()`` one clip after another (what `serq predict` does per clip);
- broker, 1 worker: one request at a time (latency, p50/p99) and pipelined (throughput);
- broker, 1 worker, sustained load: requests sent at a fixed rate for a fixed time whatever
  the replies do (open loop), latency p50/p99 from each request's scheduled send time,
  every request accounted for (lost = sent - answered); the worker's and the broker's CPU
  seconds per clip, bytes per request and reply, the worker's peak memory (these feed the
  capacity model in docs/deploy.md and the Kubernetes resources);
- broker, 2 workers: pipelined throughput.
Reports ratios, so the figures mean something on any machine: broker/in-process
latency per clip, and 2-worker/1-worker throughput. Workers are real
`serq worker` subprocesses on a throw-away prefix, removed afterwards. The load goes
to SERQ_AMQP_URL only, bounded in count (``--rate`` x ``--seconds`` <= 20000) and time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pika
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(latencies_s: list[float], wall_s: float) -> dict:
    ms = [x * 1000 for x in latencies_s]
    return {"clips": len(ms), "clips_per_s": round(len(ms) / wall_s, 2), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1), "mean_ms": round(statistics.fmean(ms), 1)}


def pick_clips(root: Path, n: int) -> list[bytes]:
    """``n`` clips spread over actors and emotions, as bytes (file reading is not what we measure)."""
    files = sorted(root.glob("Actor_*/*.flac"))
    if not files:
        raise SystemExit(f"no RAVDESS clips under {root} (set SERQ_RAVDESS_DIR)")
    step = max(1, len(files) // n)
    return [p.read_bytes() for p in files[::step][:n]]


def _model():
    from serq.models.registry import load_default

    global _MODEL
    if _MODEL is None:
        _MODEL = load_default()
    return _MODEL


_MODEL = None


def in_process(clips: list[bytes]) -> dict:
    from serq.settings import Settings
    from serq.worker.engine.inference import classify

    model, settings = _model(), Settings()
    classify(clips[0], model, settings)  # warm-up, as a worker does at start
    latencies = []
    started = time.perf_counter()
    for clip in clips:
        t0 = time.perf_counter()
        classify(clip, model, settings)
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - started)


def start_worker(env: dict, n: int, logdir: Path) -> subprocess.Popen:
    log = logdir / f"worker{n}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "serq", "worker"], env={**env, "SERQ_WORKER_ID": f"bench{n}"},
                                stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 120
    while "consuming" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


def sequential(client, clips: list[bytes]) -> dict:
    """One request at a time; also the worker's own compute time (its ``timings_ms``), so the
    broker's share of each round trip (latency - compute) is measured whatever the CPU load."""
    latencies, overhead = [], []
    started = time.perf_counter()
    for clip in clips:
        t0 = time.perf_counter()
        result = client.classify(clip, timeout=120)
        latencies.append(time.perf_counter() - t0)
        t = result.timings_ms
        overhead.append(latencies[-1] * 1000 - (t.decode + t.features + t.inference))
    out = summary(latencies, time.perf_counter() - started)
    out["broker_overhead_p50_ms"] = round(percentile(overhead, 50), 1)
    return out


def pipelined(client, clips: list[bytes], in_flight: int) -> dict:
    sent: dict[int, float] = {}
    latencies = []
    started = time.perf_counter()

    def items():
        for i, clip in enumerate(clips):
            sent[i] = time.perf_counter()
            yield clip

    for i, (_, outcome) in enumerate(client.classify_many(items(), max_in_flight=in_flight, timeout=120)):
        if isinstance(outcome, Exception):
            raise outcome
        latencies.append(time.perf_counter() - sent[i])
    return summary(latencies, time.perf_counter() - started)


#: Upper bound on one sustained run's requests, whatever --rate and --seconds say.
MAX_SUSTAINED_REQUESTS = 20_000


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident memory (VmHWM), MiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def broker_pid(amqp_url: str) -> int | None:
    """The pid of the local process listening on the broker's AMQP port (the RabbitMQ node), or None.

    Only for a broker on this machine; found through /proc/net/tcp's listening socket, so a
    private test node on another port is never mistaken for it."""
    parts = urlsplit(amqp_url.split(",")[0])
    if parts.hostname not in {"127.0.0.1", "localhost"}:
        return None
    port = f"{parts.port or 5672:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[1].endswith(f":{port}") and cols[3] == "0A":  # 0A = LISTEN
                inodes.add(cols[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def open_loop(settings, prefix: str, clips: list[bytes], rate: float, seconds: float,
              drain_s: float = 60.0) -> dict:
    """Send classify requests at ``rate`` per second for ``seconds``, whatever the replies do.

    Requests are the ones serq's Client sends (confirmed, mandatory, direct reply-to,
    audio/flac), published on schedule from one connection; each one's latency runs from its
    *scheduled* send time to its reply, so a stall delays the next sends' clocks too (no
    coordinated omission). Every request is accounted for: answered, error, or lost (no
    reply within ``drain_s`` after the last send)."""
    from serq.client.client import DIRECT_REPLY_TO
    from serq.schemas import ErrorReply
    from serq.schemas.contract import parse_reply
    from serq.transport.connection import connect

    total = int(rate * seconds)
    if not 0 < total <= MAX_SUSTAINED_REQUESTS:
        raise SystemExit(f"--rate x --seconds must give 1..{MAX_SUSTAINED_REQUESTS} requests, not {total}")
    queue = f"{prefix}.classify"
    scheduled: dict[str, float] = {}
    answered: dict[str, float] = {}
    errors: dict[str, str] = {}
    duplicates = 0
    reply_bytes: list[int] = []
    compute_ms: list[float] = []  # the worker's own decode + features + inference, from each reply

    def on_reply(_ch, _method, props, body: bytes) -> None:
        nonlocal duplicates
        cid = props.correlation_id or ""
        if cid in answered:
            duplicates += 1
            return
        answered[cid] = time.perf_counter()
        reply_bytes.append(len(body))
        reply = parse_reply(body, props.type)
        if isinstance(reply, ErrorReply):
            errors[cid] = f"{reply.error.code}: {reply.error.message}"
        else:
            t = reply.timings_ms
            compute_ms.append(t.decode + t.features + t.inference)

    conn = connect(settings, "serq-bench-sustained")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)
        start = time.perf_counter() + 0.05
        late = []
        for i in range(total):
            due = start + i / rate
            while (now := time.perf_counter()) < due:
                conn.process_data_events(time_limit=due - now)
            late.append(time.perf_counter() - due)
            cid = f"s{i}"
            scheduled[cid] = due
            ch.basic_publish("", queue, clips[i % len(clips)],
                             pika.BasicProperties(reply_to=DIRECT_REPLY_TO, correlation_id=cid,
                                                  content_type="audio/flac", expiration="120000"),
                             mandatory=True)
        sent_s = time.perf_counter() - start
        deadline = time.perf_counter() + drain_s
        while len(answered) < total and time.perf_counter() < deadline:
            conn.process_data_events(time_limit=0.1)
        wall_s = time.perf_counter() - start
    finally:
        if conn.is_open:
            conn.close()
    ms = sorted((answered[c] - scheduled[c]) * 1000 for c in answered)
    request_bytes = [len(clips[i % len(clips)]) for i in range(total)]
    return {
        "rate_per_s": rate, "seconds": seconds, "sent": total, "answered": len(answered),
        "errors": len(errors), "lost": total - len(answered), "duplicates": duplicates,
        "achieved_send_rate_per_s": round(total / sent_s, 1),
        "send_lag_p99_ms": round(percentile([x * 1000 for x in late], 99), 2),
        "p50_ms": round(percentile(ms, 50), 1) if ms else None,
        "p99_ms": round(percentile(ms, 99), 1) if ms else None,
        "max_ms": round(ms[-1], 1) if ms else None,
        "wall_s": round(wall_s, 2),
        "worker_compute_ms_mean": round(statistics.fmean(compute_ms), 2) if compute_ms else None,
        "request_body_bytes_mean": round(statistics.fmean(request_bytes)),
        "clip_seconds_mean": round(statistics.fmean(sf.info(io.BytesIO(c)).duration for c in clips), 2),
        "reply_body_bytes_mean": round(statistics.fmean(reply_bytes)) if reply_bytes else None,
        "error_samples": list(errors.values())[:3],
    }


def long_clip(seconds: float, rate: int = 96_000, channels: int = 2) -> bytes:
    """A 16-bit WAV of ``seconds`` of tone and noise at 96 kHz stereo (23 MB for 59 s, under
    SERQ_MAX_BYTES): about the largest clip a worker accepts, for its peak memory."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    mono = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, np.repeat(mono[:, None], channels, axis=1).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def sustained(settings, prefix: str, clips: list[bytes], worker: subprocess.Popen, rate: float, seconds: float) -> dict:
    """The open-loop run against one worker, with the worker's and the broker's CPU per clip and its memory."""
    bpid = broker_pid(settings.amqp_url)
    # The broker is shared: its idle CPU over a quiet second is subtracted from the run's.
    b0 = cpu_seconds(bpid) if bpid else None
    time.sleep(2.0)
    b1 = cpu_seconds(bpid) if bpid else None
    idle_per_s = (b1 - b0) / 2.0 if b0 is not None and b1 is not None else None
    w0, t0 = cpu_seconds(worker.pid), time.perf_counter()
    out = open_loop(settings, prefix, clips, rate, seconds)
    w1, elapsed = cpu_seconds(worker.pid), time.perf_counter() - t0
    b2 = cpu_seconds(bpid) if bpid else None
    answered = max(out["answered"], 1)
    if w0 is not None and w1 is not None:
        out["worker_cpu_ms_per_clip"] = round((w1 - w0) * 1000 / answered, 2)
        out["clips_per_worker_cpu_s"] = round(answered / (w1 - w0), 1)
        out["worker_cpu_utilisation"] = round((w1 - w0) / elapsed, 2)
    if idle_per_s is not None and b2 is not None:
        used = (b2 - b1) - idle_per_s * elapsed
        out["broker_cpu_ms_per_clip"] = round(max(used, 0.0) * 1000 / answered, 2)
        out["broker_idle_cpu_per_s"] = round(idle_per_s, 3)
    out["worker_peak_rss_mib"] = peak_rss_mib(worker.pid)
    # About the largest clip a worker accepts (just under SERQ_MAX_SECONDS, 96 kHz stereo), a prefetch's worth at once.
    from serq.client import Client

    big = long_clip(settings.max_seconds - 1)
    with Client(prefix=prefix) as client:
        for _, outcome in client.classify_many([big] * settings.prefetch, max_in_flight=settings.prefetch, timeout=120):
            if isinstance(outcome, Exception):
                raise outcome
    out["long_clip_bytes"] = len(big)
    out["worker_peak_rss_mib_after_long_clips"] = peak_rss_mib(worker.pid)
    return out


def run(n_clips: int = 60, in_flight: int = 8, rate: float = 100.0, seconds: float = 20.0,
        sustained_only: bool = False) -> dict:
    from serq.client import Client
    from serq.settings import get_settings

    settings = get_settings()
    clips = pick_clips(Path(os.environ.get("SERQ_RAVDESS_DIR", REPO / settings.ravdess_dir)).resolve(), n_clips)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    logdir = Path(tempfile.mkdtemp(prefix="serq-bench-"))
    env = {**os.environ, "SERQ_PREFIX": prefix, "SERQ_METRICS_PORT": "0",
           "SERQ_MODEL_DIR": str(logdir / "models")}  # empty registry: the shipped default, as in-process
    out = {"clips": len(clips), "in_flight": in_flight}
    workers = [start_worker(env, 0, logdir)]
    try:
        with Client(prefix=prefix) as client:
            client.classify(clips[0], timeout=120)  # connection and queue warm
            if not sustained_only:
                # Alternate in-process and broker passes and keep each one's better half: on a shared
                # machine the load drifts, and a drift must not land on one side of the ratio only.
                rounds = [(in_process(clips), sequential(client, clips)) for _ in range(3)]
                out["in_process"] = min((r[0] for r in rounds), key=lambda r: r["p50_ms"])
                out["broker_1_worker_sequential"] = min((r[1] for r in rounds), key=lambda r: r["p50_ms"])
                out["broker_1_worker_pipelined"] = pipelined(client, clips, in_flight)
        out["broker_1_worker_sustained"] = sustained(settings.model_copy(update={"prefix": prefix}), prefix, clips,
                                                     workers[0], rate, seconds)
        if not sustained_only:
            workers.append(start_worker(env, 1, logdir))
            with Client(prefix=prefix) as client:
                out["broker_2_workers_pipelined"] = pipelined(client, clips, in_flight)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(30)
        _cleanup(settings, prefix)
    out["cpus"] = os.cpu_count()
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    if sustained_only:
        return out
    base, seq = out["in_process"], out["broker_1_worker_sequential"]
    one, two = out["broker_1_worker_pipelined"], out["broker_2_workers_pipelined"]
    out["ratios"] = {
        "latency_p50_broker_over_in_process": round(seq["p50_ms"] / base["p50_ms"], 3),
        "added_ms_per_clip_p50": round(seq["p50_ms"] - base["p50_ms"], 1),
        "broker_overhead_p50_ms (latency - worker compute)": seq["broker_overhead_p50_ms"],
        "throughput_1_worker_over_in_process": round(one["clips_per_s"] / base["clips_per_s"], 3),
        "throughput_2_workers_over_1": round(two["clips_per_s"] / one["clips_per_s"], 3),
    }
    return out


def _cleanup(settings, prefix: str) -> None:
    from serq.transport.connection import connect

    conn = connect(settings, "serq-bench-cleanup")  # any node of SERQ_AMQP_URL
    ch = conn.channel()
    for suffix in ("classify", "dead", "train"):
        ch.queue_delete(f"{prefix}.{suffix}")
    for suffix in ("results", "dead", "events", "models"):
        ch.exchange_delete(f"{prefix}.{suffix}")
    conn.close()


def report(out: dict) -> str:
    rows = [("in-process (serq predict path)", out.get("in_process")),
            ("broker, 1 worker, 1 in flight", out.get("broker_1_worker_sequential")),
            (f"broker, 1 worker, {out['in_flight']} in flight", out.get("broker_1_worker_pipelined")),
            (f"broker, 2 workers, {out['in_flight']} in flight", out.get("broker_2_workers_pipelined"))]
    lines = [f"{out['clips']} RAVDESS clips, {out['cpus']} CPUs, load average {out['load_average_1m']}", ""]
    if any(r for _, r in rows):
        lines += ["| path | clips/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {r['clips_per_s']} | {r['p50_ms']} | {r['p99_ms']} |" for name, r in rows if r]
        lines += [""]
    s = out["broker_1_worker_sustained"]
    lines += [f"sustained, 1 worker: {s['rate_per_s']:g}/s for {s['seconds']:g} s (sent at {s['achieved_send_rate_per_s']}/s)",
              f"  sent {s['sent']}, answered {s['answered']}, errors {s['errors']}, lost {s['lost']}, "
              f"duplicates {s['duplicates']}",
              f"  latency p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, max {s['max_ms']} ms"]
    lines += [f"  {k}: {s[k]}" for k in ("worker_compute_ms_mean", "worker_cpu_ms_per_clip", "clips_per_worker_cpu_s", "worker_cpu_utilisation",
                                         "broker_cpu_ms_per_clip", "broker_idle_cpu_per_s", "request_body_bytes_mean", "clip_seconds_mean",
                                         "reply_body_bytes_mean", "worker_peak_rss_mib", "long_clip_bytes",
                                         "worker_peak_rss_mib_after_long_clips") if k in s]
    if s["error_samples"]:
        lines += [f"  error: {e}" for e in s["error_samples"]]
    lines += ["", *(f"- {k}: {v}" for k, v in out.get("ratios", {}).items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100.0, help="sustained run: requests per second (default 100)")
    parser.add_argument("--seconds", type=float, default=20.0, help="sustained run: how long to send (default 20)")
    parser.add_argument("--sustained-only", action="store_true", help="only the sustained run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.clips, args.in_flight, args.rate, args.seconds, args.sustained_only)
    print(json.dumps(out, indent=2) if args.json else report(out))
    lost = out["broker_1_worker_sustained"]["lost"] + out["broker_1_worker_sustained"]["errors"]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
