"""Benchmark: serq's feature path against the seed's recipe, speed and accuracy, same files, one run.

    python -m bench.features [--clips 120] [--no-48k] [--no-accuracy] [--json]

Speed, per clip, decode included, the two paths interleaved on the same files:
- serq: ``decode`` (to 16 kHz) -> ``analyse`` (one STFT) -> ``feature_vector`` + ``spectral_summary``;
- the seed: soundfile at the file's native rate, then librosa ``mfcc(n_mfcc=40)``,
  ``chroma_stft`` and ``melspectrogram`` (each its own STFT), time-averaged: 180 values.
Measured on the corpus files as stored here (16 kHz FLAC) and on 48 kHz WAV copies
of them, the format of the original RAVDESS the seed read.

Accuracy, RAVDESS speech, 8 classes, the same speaker-grouped 5 folds for both:
the seed's 180 features with the seed's MLP, against serq's features with serq's
default pipeline; plus the seed's own random 75/25 split, which is speaker-dependent.
Features come from caches under SERQ_CACHE_DIR (serq's feature cache, and
``bench-seed-180`` for the seed's), so only the first run extracts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import corpus_files, machine, ravdess_dir

SEED_VERSION = "bench-seed-180"  # cache key of the seed's recipe
SEED_WIDTH = 40 + 12 + 128


# ---------------------------------------------------------------- the two paths


def seed_features(path: str | Path) -> np.ndarray:
    """The seed's recipe, as it was: native-rate decode, three librosa features, time means."""
    import librosa
    import soundfile

    with soundfile.SoundFile(path) as sound_file:
        X = sound_file.read(dtype="float32")
        sample_rate = sound_file.samplerate
    stft = np.abs(librosa.stft(X))
    mfccs = np.mean(librosa.feature.mfcc(y=X, sr=sample_rate, n_mfcc=40).T, axis=0)
    chroma = np.mean(librosa.feature.chroma_stft(S=stft, sr=sample_rate).T, axis=0)
    mel = np.mean(librosa.feature.melspectrogram(y=X, sr=sample_rate).T, axis=0)
    return np.hstack([mfccs, chroma, mel]).astype(np.float32)


def serq_features(path: str | Path) -> tuple[np.ndarray, dict]:
    """serq's path, everything a prediction computes before the model: vector and spectral summary."""
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import analyse, feature_vector, spectral_summary

    audio = decode(path)
    analysis = analyse(audio.samples, audio.sample_rate)
    return feature_vector(analysis), spectral_summary(analysis, audio.original_rate)


def seed_mlp(random_state: int = 0):
    """The seed's classifier (no scaler); ``random_state`` added so the figure is reproducible."""
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(alpha=0.01, batch_size=256, epsilon=1e-08, hidden_layer_sizes=(300,),
                         learning_rate="adaptive", max_iter=500, random_state=random_state)


# ---------------------------------------------------------------- speed


def time_paths(files: list[Path], warmup: int = 5) -> dict:
    """Per-clip wall time of both paths, alternating which goes first, after warming both up.

    BLAS is held to one thread for both: one clip is a small job, a worker handles one
    at a time per core, and on a busy machine BLAS threads only add contention noise.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _time_paths(files, warmup)


def _time_paths(files: list[Path], warmup: int) -> dict:
    for path in files[:warmup]:  # librosa's numba kernels, filterbank caches, imports
        seed_features(path)
        serq_features(path)
    serq_ms, seed_ms = [], []
    for i, path in enumerate(files):
        order = ((serq_features, serq_ms), (seed_features, seed_ms))
        for fn, out in order if i % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            fn(path)
            out.append((time.perf_counter() - t0) * 1000)
    med_serq, med_seed = statistics.median(serq_ms), statistics.median(seed_ms)
    return {
        "clips": len(files),
        "serq_ms": {"median": round(med_serq, 2), "mean": round(statistics.fmean(serq_ms), 2)},
        "seed_ms": {"median": round(med_seed, 2), "mean": round(statistics.fmean(seed_ms), 2)},
        "speedup_median": round(med_seed / med_serq, 2),
        "speedup_total": round(sum(seed_ms) / sum(serq_ms), 2),
    }


def as_48k_wav(files: list[Path], folder: Path) -> list[Path]:
    """Copies of ``files`` as 48 kHz 16-bit WAV (the original RAVDESS format), resampled with soxr."""
    import soundfile as sf
    import soxr

    out = []
    for path in files:
        y, sr = sf.read(path, dtype="float32")
        target = folder / (path.stem + ".wav")
        sf.write(target, soxr.resample(y, sr, 48_000, quality="HQ"), 48_000, subtype="PCM_16")
        out.append(target)
    return out


# ---------------------------------------------------------------- accuracy


def _seed_one(path: Path) -> tuple[str, np.ndarray]:
    from serq.worker.training.extraction import file_digest

    return file_digest(path), seed_features(path)


def seed_matrix(paths: list[Path], cache_dir: Path | None) -> np.ndarray:
    """The seed's 180 features for ``paths``, from a disk cache keyed by file content."""
    from joblib import Parallel, delayed

    from serq.worker.training.extraction import FeatureCache, file_digest

    cache = FeatureCache(cache_dir, version=SEED_VERSION, width=SEED_WIDTH) if cache_dir else None
    rows: list[np.ndarray | None] = [cache.get(file_digest(p)) if cache else None for p in paths]
    todo = [i for i, row in enumerate(rows) if row is None]
    if todo:
        print(f"  extracting the seed's features for {len(todo)} clips (cached for next time)", flush=True)
        for i, (digest, vec) in zip(todo, Parallel(n_jobs=-1, batch_size=8)(delayed(_seed_one)(paths[i]) for i in todo)):
            rows[i] = vec
            if cache:
                cache.put(digest, vec)
    return np.stack(rows)


def accuracy(k: int = 5) -> dict:
    from sklearn.model_selection import train_test_split
    from threadpoolctl import threadpool_limits

    from serq.labels import EMOTIONS
    from serq.schemas import Hyperparameters
    from serq.settings import get_settings
    from serq.worker.training.datasets import scan
    from serq.worker.training.extraction import training_set
    from serq.worker.training.fit import cross_validate, folds_for, score

    settings = get_settings()
    hp = Hyperparameters()  # the shipped model's recipe, speed-perturbed training copies included
    training = training_set(scan(ravdess_dir()), settings.cache_dir, [hp],
                            max_seconds=settings.max_seconds)
    if training.skipped:
        raise SystemExit(f"files left out of the corpus: {training.skipped}")
    X_serq, y, groups = training.X, training.y, training.groups
    X_seed = seed_matrix([c.path for c in training.clips], settings.cache_dir)
    labels = list(EMOTIONS)

    # The same folds for both (folds_for is deterministic in y, groups and the seed).
    pred = np.empty_like(y)
    with threadpool_limits(limits=1, user_api="blas"):
        for train, test in folds_for(y, groups, protocol="speaker", k=k):
            pred[test] = seed_mlp().fit(X_seed[train], y[train]).predict(X_seed[test])
    seed_cv = score(y, pred, labels, protocol=f"speaker-grouped {k}-fold", speaker_independent=True)
    serq_cv = cross_validate(X_serq, y, groups, hp, labels=labels, protocol="speaker", k=k,
                             augmented=training.copies(hp))

    # The seed's own evaluation: one random 75/25 split over clips (random_state=9, as it had).
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=9)
    with threadpool_limits(limits=1, user_api="blas"):
        split_pred = seed_mlp().fit(X_seed[tr], y[tr]).predict(X_seed[te])
    seed_split = score(y[te], split_pred, labels, protocol="random 75/25 split (speaker-dependent)",
                       speaker_independent=False)

    def figures(report) -> dict:
        return {"protocol": report.protocol, "speaker_independent": report.speaker_independent, "n": report.n,
                "accuracy": round(report.accuracy, 4), "balanced_accuracy": round(report.balanced_accuracy, 4),
                "macro_f1": round(report.macro_f1, 4)}

    return {
        "clips": len(y), "speakers": len(set(groups)),
        "seed_speaker_grouped": figures(seed_cv),
        "serq_speaker_grouped": figures(serq_cv) | {"model": "default Hyperparameters()"},
        "seed_random_split": figures(seed_split),
    }


# ---------------------------------------------------------------- report


def report_text(result: dict) -> str:
    from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION

    lines = [f"machine: {result['machine']}", f"serq features: {FEATURE_VERSION}, {len(FEATURE_NAMES)} values; "
             f"seed: {SEED_WIDTH} values"]
    for key, title in (("speed_16k", "corpus files (16 kHz FLAC)"), ("speed_48k", "48 kHz WAV copies (original RAVDESS format)")):
        s = result.get(key)
        if s:
            lines.append(f"speed, {title}, {s['clips']} clips, ms/clip median (mean): "
                         f"serq {s['serq_ms']['median']:.2f} ({s['serq_ms']['mean']:.2f}), "
                         f"seed {s['seed_ms']['median']:.2f} ({s['seed_ms']['mean']:.2f}) "
                         f"-> serq is {s['speedup_median']:.1f}x faster (total time {s['speedup_total']:.1f}x)")
    acc = result.get("accuracy")
    if acc:
        lines.append(f"accuracy, RAVDESS speech, {acc['clips']} clips, {acc['speakers']} speakers, 8 classes:")
        for key, who in (("serq_speaker_grouped", "serq"), ("seed_speaker_grouped", "seed"), ("seed_random_split", "seed")):
            f = acc[key]
            lines.append(f"  {who:<5} {f['protocol']:<40} balanced acc {f['balanced_accuracy']:.3f}  "
                         f"acc {f['accuracy']:.3f}  macro-F1 {f['macro_f1']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=120, help="clips timed, spread over actors/emotions (default 120)")
    parser.add_argument("--no-48k", action="store_true", help="skip the 48 kHz WAV timing")
    parser.add_argument("--no-accuracy", action="store_true", help="speed only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    files = corpus_files(args.clips)
    result: dict = {"machine": machine(), "speed_16k": time_paths(files)}
    if not args.no_48k:
        with tempfile.TemporaryDirectory(prefix="serq-bench-") as tmp:
            result["speed_48k"] = time_paths(as_48k_wav(files, Path(tmp)))
    if not args.no_accuracy:
        result["accuracy"] = accuracy()
    print(json.dumps(result, indent=2) if args.json else report_text(result), flush=True)
    return result


if __name__ == "__main__":
    main()
