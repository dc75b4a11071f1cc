"""Benchmark: the assistant's side, AsyncClient and the Pipecat processor, against one real worker.

    python -m bench.assistant [--clips 60] [--in-flight 8] [--turns 20] [--json]

On the same RAVDESS clips and one `serq worker` subprocess (throw-away prefix, removed afterwards):
- sync ``Client`` and ``AsyncClient``, one request at a time (latency p50/p99) and ``in_flight``
  at a time (throughput), so the asyncio client's cost is a ratio to the pika one;
- the event loop's lag while ``AsyncClient`` has ``in_flight`` requests out (a ticker sleeping
  10 ms at a time): what the other conversations of the process feel;
- ``SerqEmotionProcessor`` in a real Pipecat pipeline: from a turn's ``UserStoppedSpeakingFrame``
  leaving the processor to its ``EmotionFrame`` (``--turns`` turns of 20 ms frames, one by one).
Needs the ``pipecat`` extra (the Pipecat pass is skipped without it).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.broker import REPO, _cleanup, percentile, pick_clips, pipelined, sequential, start_worker, summary


async def async_sequential(client, clips: list[bytes]) -> tuple[dict, list]:
    """One request at a time; the figures and the results."""
    latencies, results = [], []
    started = time.perf_counter()
    for clip in clips:
        t0 = time.perf_counter()
        results.append(await client.classify(clip, timeout=120))
        latencies.append(time.perf_counter() - t0)
    return summary(latencies, time.perf_counter() - started), results


async def async_concurrent(client, clips: list[bytes], in_flight: int) -> dict:
    """``in_flight`` at a time through ``classify_many``, with a ticker measuring the loop's lag."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    sent: dict[int, float] = {}
    latencies = []

    def items():
        for i, clip in enumerate(clips):
            sent[i] = time.perf_counter()
            yield clip

    started = time.perf_counter()
    i = 0
    async for _, outcome in client.classify_many(items(), max_in_flight=in_flight, timeout=120):
        if isinstance(outcome, Exception):
            raise outcome
        latencies.append(time.perf_counter() - sent[i])
        i += 1
    out = summary(latencies, time.perf_counter() - started)
    stop.set()
    await tick
    ms = [x * 1000 for x in lags]
    out.update(loop_lag_p50_ms=round(percentile(ms, 50), 2), loop_lag_p99_ms=round(percentile(ms, 99), 2),
               loop_lag_max_ms=round(max(ms), 2))
    return out


async def pipecat_turns(settings, clips: list[bytes], turns: int) -> dict | None:
    try:  # lazy: the pipecat extra is optional, and `python -m bench` imports every benchmark to find it
        from pipecat.frames.frames import (
            EndFrame,
            Frame,
            InputAudioRawFrame,
            UserStartedSpeakingFrame,
            UserStoppedSpeakingFrame,
        )
        from pipecat.pipeline.pipeline import Pipeline
        from pipecat.pipeline.worker import PipelineWorker
        from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
        from pipecat.workers.runner import WorkerRunner

        from serq.client.pipecat import EmotionFrame, SerqEmotionProcessor
    except ImportError:
        return None

    marks: dict[str, float] = {}
    answered = asyncio.Event()

    class Stopwatch(FrameProcessor):
        """Right after serq: when a turn's end left it, and when its emotion did."""

        async def process_frame(self, frame: Frame, direction: FrameDirection):
            await super().process_frame(frame, direction)
            if isinstance(frame, UserStoppedSpeakingFrame):
                marks["stopped"] = time.perf_counter()
            elif isinstance(frame, EmotionFrame):
                marks["emotion"] = time.perf_counter()
                answered.set()
            await self.push_frame(frame, direction)

    def turn(clip: bytes) -> list:
        pcm, rate = sf.read(io.BytesIO(clip), dtype="int16", always_2d=True)
        pcm, step = pcm.mean(axis=1).astype(np.int16), rate // 50
        audio = [InputAudioRawFrame(audio=pcm[i:i + step].tobytes(), sample_rate=rate, num_channels=1)
                 for i in range(0, len(pcm), step)]
        return [UserStartedSpeakingFrame(), *audio, UserStoppedSpeakingFrame()]

    worker = PipelineWorker(Pipeline([SerqEmotionProcessor(settings=settings, preroll_s=0.0), Stopwatch()]),
                            cancel_on_idle_timeout=False)
    ready = asyncio.Event()
    latencies: list[float] = []

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        ready.set()

    async def converse():
        # One turn at a time, the next only once the last emotion is out, as in a conversation.
        await asyncio.wait_for(ready.wait(), 30)
        try:
            for clip in (clips * (turns // len(clips) + 1))[:turns]:
                answered.clear()
                await worker.queue_frames(turn(clip))
                await asyncio.wait_for(answered.wait(), 120)
                latencies.append(marks["emotion"] - marks["stopped"])
        finally:
            await worker.queue_frame(EndFrame())

    started = time.perf_counter()
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), converse())
    out = summary(latencies, time.perf_counter() - started)
    out["turns"] = out.pop("clips")
    return out


def run(n_clips: int = 60, in_flight: int = 8, turns: int = 20) -> dict:
    from serq.client import Client  # lazy, as every benchmark's (see bench/__init__.py)
    from serq.client.aio import AsyncClient
    from serq.settings import get_settings

    settings = get_settings()
    clips = pick_clips(Path(os.environ.get("SERQ_RAVDESS_DIR", REPO / settings.ravdess_dir)).resolve(), n_clips)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    logdir = Path(tempfile.mkdtemp(prefix="serq-bench-"))
    env = {**os.environ, "SERQ_PREFIX": prefix, "SERQ_METRICS_PORT": "0", "SERQ_MODEL_DIR": str(logdir / "models")}
    mine = settings.model_copy(update={"prefix": prefix})
    out: dict = {"clips": len(clips), "in_flight": in_flight}
    worker = start_worker(env, 0, logdir)
    try:
        with Client(prefix=prefix) as client:
            client.classify(clips[0], timeout=120)  # warm
            out["sync_sequential"] = sequential(client, clips)
            out["sync_pipelined"] = pipelined(client, clips, in_flight)

        async def asynchronous():
            async with AsyncClient(settings=mine) as client:
                await client.classify(clips[0], timeout=120)
                return *(await async_sequential(client, clips)), await async_concurrent(client, clips, in_flight)

        out["async_sequential"], results, out["async_concurrent"] = asyncio.run(asynchronous())
        # A clip the worker finds silent gives no EmotionFrame (by design): such turns are left out.
        voiced = [clip for clip, result in zip(clips, results, strict=True) if not result.silent]
        out["pipecat_turn_end_to_emotion"] = asyncio.run(pipecat_turns(mine, voiced, turns))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        _cleanup(settings, prefix)
    out["cpus"] = os.cpu_count()
    out["load_average_1m"] = round(os.getloadavg()[0], 2)
    out["ratios"] = {
        "latency_p50_async_over_sync": round(out["async_sequential"]["p50_ms"] / out["sync_sequential"]["p50_ms"], 3),
        "throughput_async_over_sync":
            round(out["async_concurrent"]["clips_per_s"] / out["sync_pipelined"]["clips_per_s"], 3),
    }
    return out


def report(out: dict) -> str:
    n = out["in_flight"]
    rows = [("sync Client, 1 in flight", out["sync_sequential"]),
            (f"sync Client, {n} in flight", out["sync_pipelined"]),
            ("AsyncClient, 1 in flight", out["async_sequential"]),
            (f"AsyncClient, {n} in flight", out["async_concurrent"])]
    lines = [f"{out['clips']} RAVDESS clips, 1 worker, {out['cpus']} CPUs, load average {out['load_average_1m']}", "",
             "| path | clips/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['clips_per_s']} | {r['p50_ms']} | {r['p99_ms']} |" for name, r in rows]
    c = out["async_concurrent"]
    lines += ["", f"event-loop lag with {n} in flight: p50 {c['loop_lag_p50_ms']} ms, p99 {c['loop_lag_p99_ms']} ms, "
                  f"max {c['loop_lag_max_ms']} ms"]
    p = out.get("pipecat_turn_end_to_emotion")
    lines += [f"Pipecat, turn end -> EmotionFrame over {p['turns']} turns: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms"
              if p else "Pipecat: skipped (pip install 'serq[pipecat]')"]
    lines += ["", *(f"- {k}: {v}" for k, v in out["ratios"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.assistant", description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = run(args.clips, args.in_flight, args.turns)
    print(json.dumps(out, indent=2) if args.json else report(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
