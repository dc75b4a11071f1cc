"""Benchmark: classification through the broker (1 and 2 workers) against in-process, same clips, one run.

    python -m bench.broker [--clips 60] [--json]

Measures, on the same RAVDESS clips:
- in-process: ``classify()`` one clip after another (what `serq predict` does per clip);
- broker, 1 worker: one request at a time (latency, p50/p99) and pipelined (throughput);
- broker, 2 workers: pipelined throughput.
Reports ratios, so the figures mean something on any machine: broker/in-process
latency per clip, and 2-worker/1-worker throughput. Workers are real
`serq worker` subprocesses on a throw-away prefix, removed afterwards.
"""

from __future__ import annotations

import argparse
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


def run(n_clips: int = 60, in_flight: int = 8) -> dict:
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
            # Alternate in-process and broker passes and keep each one's better half: on a shared
            # machine the load drifts, and a drift must not land on one side of the ratio only.
            rounds = [(in_process(clips), sequential(client, clips)) for _ in range(3)]
            out["in_process"] = min((r[0] for r in rounds), key=lambda r: r["p50_ms"])
            out["broker_1_worker_sequential"] = min((r[1] for r in rounds), key=lambda r: r["p50_ms"])
            out["broker_1_worker_pipelined"] = pipelined(client, clips, in_flight)
            workers.append(start_worker(env, 1, logdir))
            out["broker_2_workers_pipelined"] = pipelined(client, clips, in_flight)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(30)
        _cleanup(settings, prefix)
    base, seq = out["in_process"], out["broker_1_worker_sequential"]
    one, two = out["broker_1_worker_pipelined"], out["broker_2_workers_pipelined"]
    out["ratios"] = {
        "latency_p50_broker_over_in_process": round(seq["p50_ms"] / base["p50_ms"], 3),
        "added_ms_per_clip_p50": round(seq["p50_ms"] - base["p50_ms"], 1),
        "broker_overhead_p50_ms (latency - worker compute)": seq["broker_overhead_p50_ms"],
        "throughput_1_worker_over_in_process": round(one["clips_per_s"] / base["clips_per_s"], 3),
        "throughput_2_workers_over_1": round(two["clips_per_s"] / one["clips_per_s"], 3),
    }
    out["cpus"] = os.cpu_count()
    return out


def _cleanup(settings, prefix: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    ch = conn.channel()
    for suffix in ("classify", "dead", "train"):
        ch.queue_delete(f"{prefix}.{suffix}")
    for suffix in ("results", "dead", "events", "models"):
        ch.exchange_delete(f"{prefix}.{suffix}")
    conn.close()


def report(out: dict) -> str:
    rows = [("in-process (serq predict path)", out["in_process"]),
            ("broker, 1 worker, 1 in flight", out["broker_1_worker_sequential"]),
            (f"broker, 1 worker, {out['in_flight']} in flight", out["broker_1_worker_pipelined"]),
            (f"broker, 2 workers, {out['in_flight']} in flight", out["broker_2_workers_pipelined"])]
    lines = [f"{out['clips']} RAVDESS clips, {out['cpus']} CPUs", "",
             "| path | clips/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['clips_per_s']} | {r['p50_ms']} | {r['p99_ms']} |" for name, r in rows]
    lines += ["", *(f"- {k}: {v}" for k, v in out["ratios"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.clips, args.in_flight)
    print(json.dumps(out, indent=2) if args.json else report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
