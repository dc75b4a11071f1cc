"""Benchmark: emotion timeline of a ten-minute recording, in seconds of audio per second, on one core.

    python -m bench.timeline [--minutes 10] [--window S --hop S] [--json]

Two recordings made from RAVDESS clips (trimmed to their speech) and room noise,
written to a temporary 16-bit WAV and analysed by ``timeline_file`` (reading and
resampling included), pinned to one CPU core with one BLAS/OpenMP thread:

- ``call``: clips with 1-2.5 s pauses (about half the time is speech, like a call);
- ``dense``: clips with 0.3 s pauses (one long segment: a window every hop; the worst case).

Also reports the voice-activity pass alone (no classification) and the cost per
classified window, which is what the real-time factor is made of. ``--window``/``--hop``
measure other parameters, e.g. the costliest ones allowed (``window_s = 4 x hop_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RATE = 16_000


@contextmanager
def one_core():
    """Pin this process to one CPU and one BLAS/OpenMP thread while inside; yields which CPU."""
    from threadpoolctl import threadpool_limits

    before = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    with threadpool_limits(1):
        if before is None:
            yield "unpinned"
            return
        cpu = min(before)
        os.sched_setaffinity(0, {cpu})
        try:
            yield f"cpu {cpu}"
        finally:
            os.sched_setaffinity(0, before)  # other benchmarks in this process get every core back


def clips(root: Path, n: int = 24) -> list[np.ndarray]:
    """``n`` RAVDESS clips over actors and emotions, trimmed to frames within 25 dB of their peak."""
    import soundfile as sf

    files = sorted(root.glob("Actor_*/*.flac"))
    if not files:
        raise SystemExit(f"no RAVDESS clips under {root} (set SERQ_RAVDESS_DIR)")
    out = []
    for path in files[:: max(1, len(files) // n)][:n]:
        x, _ = sf.read(path, dtype="float32")
        k = len(x) // 160
        level = 10 * np.log10((x[: k * 160].reshape(k, 160).astype(np.float64) ** 2).mean(axis=1) + 1e-10)
        active = np.flatnonzero(level > level.max() - 25)
        out.append(x[active[0] * 160 : (active[-1] + 1) * 160])
    return out


def write_recording(path: Path, pieces: list[np.ndarray], seconds: float, pauses: tuple[float, float], seed: int) -> None:
    """Clips with random pauses of -75 dBFS noise, ``seconds`` long, written block by block."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total, written, i = int(seconds * RATE), 0, 0
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as out:
        while written < total:
            pause = rng.standard_normal(int(rng.uniform(*pauses) * RATE)) * 10 ** (-75 / 20)
            for block in (pause, pieces[i % len(pieces)]):
                block = block[: total - written].astype(np.float32)
                out.write(block)
                written += len(block)
            i += 1


def measure(path: Path, model, params=None) -> dict:
    from serq.worker.engine.timeline import (
        TimelineProcessor,
        read_blocks,
        timeline_file,
    )

    started = time.perf_counter()
    timeline = timeline_file(path, model, params=params)
    wall = time.perf_counter() - started
    windows = sum(s.windows for s in timeline.segments)

    # The voice-activity pass alone: a processor whose windows are never long enough to classify.
    vad_started = time.perf_counter()
    from serq.schemas import TimelineParams

    proc = TimelineProcessor.new(model, TimelineParams(window_s=30.0, hop_s=30.0, max_pause_s=0.1, min_speech_s=10.0))
    for block in read_blocks(path, RATE):
        proc.feed(block)
    vad = time.perf_counter() - vad_started
    return {
        "audio_s": round(timeline.duration_s, 1),
        "speech_s": timeline.summary.speech_s,
        "segments": len(timeline.segments),
        "windows": windows,
        "wall_s": round(wall, 2),
        "x_realtime": round(timeline.duration_s / wall, 1),
        "ms_per_window": round((wall - vad) * 1000 / max(windows, 1), 1),
        "read_and_vad_x_realtime": round(timeline.duration_s / vad, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=None, help="window_s (default SERQ_TIMELINE_WINDOW_S)")
    parser.add_argument("--hop", type=float, default=None, help="hop_s (default SERQ_TIMELINE_HOP_S)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv if argv is not None else [])
    params = None
    if args.window or args.hop:
        from serq.schemas import TimelineParams

        defaults = TimelineParams()
        params = TimelineParams(window_s=args.window or defaults.window_s, hop_s=args.hop or defaults.hop_s)
    with one_core() as where:
        results = run(args.minutes, where, params)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"timeline of a {args.minutes:g}-minute recording, one core ({where}), model {results['model']}, "
              f"window {results['window_s']:g} s, hop {results['hop_s']:g} s")
        for name in ("call", "dense"):
            r = results[name]
            print(f"  {name:<6} {r['audio_s']:>6.0f} s audio ({r['speech_s']:.0f} s speech, {r['segments']} segments, "
                  f"{r['windows']} windows): {r['wall_s']:.1f} s = {r['x_realtime']:.0f}x real time; "
                  f"{r['ms_per_window']:.0f} ms/window; read+VAD alone {r['read_and_vad_x_realtime']:.0f}x")
    return results


def run(minutes: float, where: str, params=None) -> dict:
    from serq.models.registry import load_default
    from serq.settings import Settings
    from serq.worker.engine.timeline import window_probabilities

    settings = Settings()
    root = settings.ravdess_dir if settings.ravdess_dir.is_absolute() else (REPO / settings.ravdess_dir).resolve()
    pieces = clips(root)
    model = load_default()
    window_probabilities(pieces[0], model)  # warm-up: imports, filterbanks
    from serq.schemas import TimelineParams

    used = params or TimelineParams()
    results = {"pinned": where, "model": model.version, "window_s": used.window_s, "hop_s": used.hop_s}
    with tempfile.TemporaryDirectory(prefix="serq-bench-") as tmp:
        for name, pauses in (("call", (1.0, 2.5)), ("dense", (0.3, 0.3))):
            path = Path(tmp) / f"{name}.wav"
            write_recording(path, pieces, minutes * 60, pauses, seed=1)
            results[name] = measure(path, model, params)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
