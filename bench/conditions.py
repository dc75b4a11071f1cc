"""Benchmark: recipes under recording conditions, zero-shot on another corpus, and feature cost, one run (issue 16).

    python -m bench.conditions [--conditions C,C,...] [--recipes seed,serq-fe-2,serq-fe-3] [--clips 120] [--json]

Three recipes on the *same* speaker-grouped 5 folds of RAVDESS (8 classes), each fold's
model scoring its unseen test speakers under every condition
(:mod:`serq.worker.training.conditions`, seeded):
- ``seed``: the student recipe serq started from (180 librosa features, the seed's MLP);
- ``serq-fe-2``: the recipe shipped before issue 16 (``bench/fe2.py``: level-bound features,
  speed copies);
- ``serq-fe-3``: the shipped recipe (level-free features, active frames over a noise floor,
  speed and channel-augmented copies).
Then each recipe fitted on all of RAVDESS scores TurEV-DB zero-shot (``SERQ_TUREV_DIR``, 4
emotions; balanced accuracy over all 8 classes and with the choice restricted to the 4).

Cost: decode + features per clip, ``serq-fe-3`` against ``serq-fe-2``, interleaved on the same
files after a warm-up, BLAS on one thread; the ratio is the figure (issue 16 allows 1.3x).

Features are cached under ``SERQ_CACHE_DIR`` per recipe and condition (keyed by file content),
so only the first run extracts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from bench import corpus_files, machine, ravdess_dir
from bench.features import SEED_VERSION, SEED_WIDTH, seed_mlp

RECIPES = ("seed", "serq-fe-2", "serq-fe-3")


# ---------------------------------------------------------------- features of each recipe, under a perturbation


def seed_vector(samples: np.ndarray, rate: int) -> np.ndarray:
    """The seed's 180 values (bench.features.seed_features) of a decoded waveform."""
    import librosa

    stft = np.abs(librosa.stft(samples))
    mfccs = np.mean(librosa.feature.mfcc(y=samples, sr=rate, n_mfcc=40).T, axis=0)
    chroma = np.mean(librosa.feature.chroma_stft(S=stft, sr=rate).T, axis=0)
    mel = np.mean(librosa.feature.melspectrogram(y=samples, sr=rate).T, axis=0)
    return np.hstack([mfccs, chroma, mel]).astype(np.float32)


def vector(recipe: str, samples: np.ndarray, rate: int) -> np.ndarray:
    if recipe == "seed":
        return seed_vector(samples, rate)
    if recipe == "serq-fe-2":
        from bench import fe2

        return fe2.extract(samples, rate)
    from serq.worker.engine.features import extract

    return extract(samples, rate)


def width(recipe: str) -> int:
    from bench import fe2
    from serq.worker.engine.features import FEATURE_NAMES

    return {"seed": SEED_WIDTH, "serq-fe-2": len(fe2.FEATURE_NAMES)}.get(recipe, len(FEATURE_NAMES))


def _one(recipe: str, path: Path, perturbation) -> tuple[str, np.ndarray]:
    from serq.worker.engine.audio import decode
    from serq.worker.training.extraction import file_digest

    digest = file_digest(path)
    audio = decode(path, max_seconds=None)
    samples = audio.samples if perturbation is None else perturbation.apply(audio.samples, digest)
    return digest, vector(recipe, samples, audio.sample_rate)


def matrix(recipe: str, paths: list[Path], perturbation, cache_dir: Path | None) -> np.ndarray:
    """``recipe``'s vectors of ``paths`` through ``perturbation`` (None: as stored), cached by file content."""
    from joblib import Parallel, delayed

    from serq.worker.training.extraction import FeatureCache, file_digest

    prefix = {"seed": SEED_VERSION, "serq-fe-2": "bench-serq-fe-2"}.get(recipe)
    if prefix is None:  # the current recipe shares serq's own cache
        from serq.worker.training.extraction import extract_clips
        from serq.worker.training.datasets import Clip

        X, ok, errors = extract_clips([Clip(p, "", "", "") for p in paths], cache_dir, max_seconds=None,
                                      perturbation=perturbation)
        if errors:
            raise SystemExit(f"unreadable clips: {errors}")
        return X
    version = prefix if perturbation is None else f"{prefix}-{perturbation.key}"
    cache = FeatureCache(cache_dir, version=version, width=width(recipe)) if cache_dir else None
    rows = [cache.get(file_digest(p)) if cache else None for p in paths]
    todo = [i for i, row in enumerate(rows) if row is None]
    if todo:
        print(f"  {recipe}: extracting {version} for {len(todo)} clips", flush=True)
        done = Parallel(n_jobs=-1, batch_size=8)(delayed(_one)(recipe, paths[i], perturbation) for i in todo)
        for i, (digest, vec) in zip(todo, done):
            rows[i] = vec
            if cache:
                cache.put(digest, vec)
    return np.stack(rows)


# ---------------------------------------------------------------- one recipe under every condition


def recipe_copies(recipe: str):
    """The training copies of a recipe (perturbations), and its hyperparameters (None: the seed's MLP)."""
    from serq.schemas import Hyperparameters
    from serq.worker.training.extraction import perturbations_for
    from serq.settings import get_settings

    if recipe == "seed":
        return [], None
    hp = Hyperparameters() if recipe == "serq-fe-3" else Hyperparameters(channel_copies=0)
    return perturbations_for(hp, cache_dir=get_settings().cache_dir), hp


def fit_recipe(recipe: str, hp, X: np.ndarray, y: np.ndarray, copies: list[np.ndarray]):
    from threadpoolctl import threadpool_limits

    from serq.worker.training.fit import fit

    if hp is None:
        with threadpool_limits(limits=1, user_api="blas"):
            return seed_mlp().fit(X, y)
    return fit(X, y, hp, copies)


def run_recipe(recipe: str, paths: list[Path], y: np.ndarray, groups: np.ndarray, conditions, turev, k: int,
               cache_dir) -> dict:
    from serq.labels import EMOTIONS
    from serq.worker.training.conditions import Conditioned
    from serq.worker.training.evaluation import condition_results
    from serq.worker.training.fit import folds_for

    labels = list(EMOTIONS)
    t0 = time.monotonic()
    matrices = {c.name: matrix(recipe, paths, Conditioned(c, 0), cache_dir) for c in conditions}
    perturbations, hp = recipe_copies(recipe)
    copies = [matrix(recipe, paths, p, cache_dir) for p in perturbations]
    extracted = time.monotonic() - t0
    proba = {name: np.zeros((len(y), len(labels))) for name in matrices}
    for train, test in folds_for(y, groups, protocol="speaker", k=k, random_state=0):
        model = fit_recipe(recipe, hp, matrices["clean"][train], y[train], [A[train] for A in copies])
        order = [list(model.classes_).index(label) for label in labels]
        for name, M in matrices.items():
            proba[name][test] = model.predict_proba(M[test])[:, order]
    out = {"copies": [p.key for p in perturbations],
           "conditions": [r.model_dump() for r in condition_results(y, proba, labels)]}
    if turev is not None:
        t_paths, t_y = turev
        model = fit_recipe(recipe, hp, matrices["clean"], y, copies)
        order = [list(model.classes_).index(label) for label in labels]
        tx = matrix(recipe, t_paths, None, cache_dir)
        (row,) = condition_results(t_y, {"clean": model.predict_proba(tx)[:, order]}, labels)
        out["turev"] = {"clips": len(t_y), "all_classes_balanced_accuracy": round(row.all_classes.balanced_accuracy, 4),
                        "present_classes_balanced_accuracy": round(row.present_classes.balanced_accuracy, 4),
                        "present_classes_accuracy": round(row.present_classes.accuracy, 4)}
    out["seconds"] = {"extract": round(extracted, 1), "total": round(time.monotonic() - t0, 1)}
    return out


# ---------------------------------------------------------------- cost


def time_features(files: list[Path], warmup: int = 5) -> dict:
    """decode + features per clip, the current engine against ``serq-fe-2``, interleaved."""
    from threadpoolctl import threadpool_limits

    from bench import fe2
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import analyse, feature_vector, spectral_summary

    def current(path):
        audio = decode(path)
        a = analyse(audio.samples, audio.sample_rate)
        return feature_vector(a), spectral_summary(a, audio.original_rate)

    def previous(path):
        audio = decode(path)
        return fe2.extract(audio.samples, audio.sample_rate)

    with threadpool_limits(limits=1, user_api="blas"):
        for path in files[:warmup]:
            current(path), previous(path)
        ms: dict[str, list[float]] = {"current": [], "previous": []}
        for i, path in enumerate(files):
            order = (("current", current), ("previous", previous))
            for name, fn in order if i % 2 == 0 else order[::-1]:
                t = time.perf_counter()
                fn(path)
                ms[name].append((time.perf_counter() - t) * 1000)
    cur, prev = statistics.median(ms["current"]), statistics.median(ms["previous"])
    return {"clips": len(files), "serq-fe-3_ms_median": round(cur, 2), "serq-fe-2_ms_median": round(prev, 2),
            "ratio_median": round(cur / prev, 3), "ratio_total": round(sum(ms["current"]) / sum(ms["previous"]), 3)}


# ---------------------------------------------------------------- report


def report_text(result: dict) -> str:
    lines = [f"machine: {result['machine']}"]
    c = result.get("cost")
    if c:
        lines.append(f"decode+features, {c['clips']} clips, ms/clip median: serq-fe-3 {c['serq-fe-3_ms_median']:.2f}, "
                     f"serq-fe-2 {c['serq-fe-2_ms_median']:.2f} -> ratio {c['ratio_median']:.2f} "
                     f"(total {c['ratio_total']:.2f})")
    for recipe, r in result.get("recipes", {}).items():
        lines.append(f"\n{recipe} (training copies: {', '.join(r['copies']) or 'none'}; {r['seconds']['total']:.0f} s)")
        clean = r["conditions"][0]["all_classes"]["accuracy"]
        lines.append(f"  {'condition':<12} {'acc':>6} {'bal':>6} {'agree':>6} {'vs clean':>9}")
        for row in r["conditions"]:
            f = row["all_classes"]
            lines.append(f"  {row['condition']:<12} {f['accuracy']:6.3f} {f['balanced_accuracy']:6.3f} "
                         f"{f['agreement']:6.2f} {f['accuracy'] - clean:+9.3f}")
        if "turev" in r:
            t = r["turev"]
            lines.append(f"  TurEV zero-shot ({t['clips']} clips): balanced accuracy {t['present_classes_balanced_accuracy']:.3f} "
                         f"over its 4 classes ({t['all_classes_balanced_accuracy']:.3f} choosing among all 8)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from serq.settings import get_settings
    from serq.worker.training.conditions import DEFAULT_CONDITIONS, parse_conditions
    from serq.worker.training.datasets import scan

    parser = argparse.ArgumentParser(prog="python -m bench.conditions", description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", default=DEFAULT_CONDITIONS)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=120, help="clips timed for the cost ratio (default 120)")
    parser.add_argument("--no-turev", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    settings = get_settings()
    result: dict = {"machine": machine(), "cost": time_features(corpus_files(args.clips))}
    data = scan(ravdess_dir())
    paths = [c.path for c in data.clips]
    y, groups = np.array([c.label for c in data.clips]), np.array([c.speaker for c in data.clips])
    turev = None
    turev_root = Path(settings.turev_dir).expanduser()
    turev_root = turev_root if turev_root.is_absolute() else (Path(__file__).resolve().parents[1] / turev_root).resolve()
    if not args.no_turev and turev_root.is_dir():
        t = scan(turev_root)
        turev = ([c.path for c in t.clips], np.array([c.label for c in t.clips]))
    conditions = parse_conditions(args.conditions)
    result["recipes"] = {}
    for recipe in args.recipes.split(","):
        result["recipes"][recipe] = run_recipe(recipe, paths, y, groups, conditions, turev, args.folds,
                                               settings.cache_dir)
    result["machine_after"] = machine()
    print(json.dumps(result, indent=2) if args.json else report_text(result), flush=True)
    return result


if __name__ == "__main__":
    main()
