"""Unlabelled adaptation on another corpus: `serq adapt` on half of TurEV's speakers, the other half scored.

For each of four splits of TurEV's 6 speakers (first/last three, odd/even, both ways),
the active model (else the shipped one) is scored zero-shot on one half, then adapted
with each method on the other half's clips *without their labels* (a temp folder of
symlinks named ``clipNNNN``) and scored again. Balanced accuracy with the choice
restricted to the 4 classes TurEV has (chance 0.25). Optionally also on a folder skewed
to one emotion (``--skew calm:0.75``), as "mostly neutral" traffic is.

TurEV is for evaluation only: the adapted models live in a temp registry that is deleted.

    python -m bench adapt -- --turev ../shared/data/turev [--skew calm:0.75]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def turev_dataset(root: Path):
    """TurEV's clips by folder (emotion) and first name token (speaker)."""
    from serq.worker.training.datasets import Clip, Dataset  # lazy, as every benchmark's (bench/__init__.py)

    clips = [Clip(p, p.parent.name.lower(), f"turev:{p.name.split('_')[0]}", "turev")
             for p in sorted(root.glob("*/*.flac"))]
    return Dataset(clips)


def restricted_balanced_accuracy(model, X, y) -> float:
    from sklearn.metrics import balanced_accuracy_score

    from serq.worker.engine.inference import probabilities

    present = sorted(set(y))
    cols = [list(model.meta.labels).index(c) for c in present]
    return float(balanced_accuracy_score(y, np.array(present)[probabilities(model, X)[:, cols].argmax(axis=1)]))


def splits(speakers: list[str]) -> list[tuple[list[str], list[str]]]:
    first, last, odd, even = speakers[:3], speakers[3:], speakers[::2], speakers[1::2]
    return [(first, last), (last, first), (odd, even), (even, odd)]


def skewed(idx: np.ndarray, y: np.ndarray, major: str, share: float, rng) -> np.ndarray:
    mine, rest = idx[y[idx] == major], idx[y[idx] != major]
    keep = min(len(rest), int(len(mine) * (1 - share) / share))
    return np.concatenate([mine, np.sort(rng.choice(rest, keep, replace=False))])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench adapt", description=__doc__.splitlines()[0])
    parser.add_argument("--turev", type=Path, default=None, help="TurEV-DB folder (default SERQ_TUREV_DIR)")
    parser.add_argument("--model", help="version to adapt (default: the active model)")
    parser.add_argument("--skew", metavar="EMOTION:SHARE", help="also adapt on folders skewed to EMOTION")
    args = parser.parse_args(argv)
    from serq.models.registry import Registry  # lazy: the training stack, for this benchmark only
    from serq.schemas import TrainRequest
    from serq.settings import Settings, get_settings
    from serq.worker.training.adaptation import choose_method
    from serq.worker.training.extraction import training_set
    from serq.worker.training.job import run_training

    settings = get_settings()
    root = (args.turev or settings.turev_dir).expanduser()
    if not (root / "Angry").is_dir():
        print(f"adapt: TurEV not found at {root} (set SERQ_TUREV_DIR); skipped")
        return 0
    data = training_set(turev_dataset(root), settings.cache_dir, n_jobs=1)
    X, y, g = data.X, data.y, data.groups
    paths = np.array([str(c.path) for c in data.clips])
    source = Registry(settings.model_dir)
    model = source.load(args.model) if args.model else source.load_active()
    methods = ["reweighted", "plain", "robust"] + (["mixture"] if model.meta.class_statistics else [])
    print(f"model {model.version}: methods {', '.join(methods)} (auto = {choose_method('auto', model.meta.class_statistics)})")
    rng = np.random.default_rng(0)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A throwaway registry holding a copy of the model, so nothing is registered in the user's.
        scratch = Settings(model_dir=tmp / "models", cache_dir=settings.cache_dir)
        Registry(scratch.model_dir).register(source.artifact_bytes(model.version), model.meta)
        for n, (adapt_on, test_on) in enumerate(splits(sorted(set(g)))):
            ia, ib = np.flatnonzero(np.isin(g, adapt_on)), np.flatnonzero(np.isin(g, test_on))
            rows.setdefault("zero-shot", []).append(restricted_balanced_accuracy(model, X[ib], y[ib]))
            folders = {"": ia}
            if args.skew:
                emotion, share = args.skew.split(":")
                folders[f" ({emotion} {float(share):.0%})"] = skewed(ia, y, emotion, float(share), rng)
            for suffix, sel in folders.items():
                folder = tmp / f"split{n}{suffix.strip() or 'all'}".replace(" ", "_").replace("%", "")
                folder.mkdir()
                for i, p in enumerate(paths[sel]):
                    (folder / f"clip{i:04d}.flac").symlink_to(p)
                for method in methods:
                    result = run_training(TrainRequest(kind="adapt", dataset=str(folder), model=model.version,
                                                       adaptation=method, activate="never"), scratch, n_jobs=1)
                    if not result.ok:
                        raise SystemExit(f"adapt failed: {result.error}")
                    adapted = Registry(scratch.model_dir).load(result.version)
                    rows.setdefault(method + suffix, []).append(restricted_balanced_accuracy(adapted, X[ib], y[ib]))
    print("\n| TurEV other half, balanced accuracy (4 classes) | mean | splits |\n|---|---:|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.3f} | {' '.join(f'{v:.3f}' for v in values)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
