"""Scoring a trained model on labelled data it was not trained on."""

from __future__ import annotations

from collections import Counter

import numpy as np

from serq.errors import DatasetError
from serq.progress import progress_printer
from serq.schemas import ConditionFigures, ConditionResult, ConditionsReport, EvaluationReport, Hyperparameters
from serq.settings import Settings
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.conditions import Condition, Conditioned
from serq.worker.training.datasets import Clip, Dataset, scan
from serq.worker.training.extraction import extract_clips, training_set
from serq.worker.training.fit import check_trainable, fit, folds_for, score


def evaluate_model(model: LoadedModel, data: str, settings: Settings, *, include_seen_speakers: bool = False,
                   progress: str | None = None) -> EvaluationReport:
    """Metrics of ``model`` on ``data``; clips of speakers it was trained on are skipped unless asked."""
    labels = list(model.meta.labels)
    dataset = scan(data)
    skipped = Counter(dataset.skipped)
    seen = set(model.meta.training_data.get("speaker_ids", []))
    clips = []
    for clip in dataset.clips:
        if clip.label not in labels:
            skipped[f"label not in model: {clip.label}"] += 1
        elif clip.speaker in seen and not include_seen_speakers:
            skipped["speaker seen in training"] += 1
        else:
            clips.append(clip)
    if not clips:
        raise DatasetError(
            f"nothing to score in {data}: {dict(skipped)}. Every usable clip is of a speaker model "
            f"{model.version} was trained on; evaluate on other speakers, read its cross-validated figures "
            "(`serq models show`), or pass --include-seen-speakers for a speaker-dependent figure"
        )
    report_progress = progress_printer("extracting") if progress == "stderr" else None
    X, ok, errors = extract_clips(clips, settings.cache_dir, max_seconds=settings.max_seconds, progress=report_progress)
    if errors:
        skipped["unreadable audio"] += len(errors)
    kept = [c for c, good in zip(clips, ok) if good]
    y = np.array([c.label for c in kept])
    pred = np.array(labels)[probabilities(model, X).argmax(axis=1)] if len(kept) else np.array([], dtype=str)
    speakers = {c.speaker for c in kept}
    overlap = speakers & seen
    protocol = (f"held-out data: {len(speakers)} speakers"
                + (f", {len(overlap)} of them seen in training" if overlap else ", none seen in training"))
    return score(y, pred, labels, protocol=protocol, speaker_independent=not overlap, skipped=dict(skipped))


# ---------------------------------------------------------------- under recording conditions (issue 16)


def condition_figures(y: np.ndarray, pred: np.ndarray, clean: np.ndarray) -> ConditionFigures:
    """Accuracy, balanced accuracy (over the classes present in ``y``) and agreement with ``clean`` labels."""
    recalls = [float(np.mean(pred[y == c] == c)) for c in np.unique(y)]
    return ConditionFigures(accuracy=float(np.mean(pred == y)) if len(y) else 0.0,
                            balanced_accuracy=float(np.mean(recalls)) if recalls else 0.0,
                            agreement=float(np.mean(pred == clean)) if len(y) else 0.0)


def condition_results(y: np.ndarray, proba: dict[str, np.ndarray], labels: list[str]) -> list[ConditionResult]:
    """Per condition (``proba[name]``: shape ``(n, len(labels))``, rows aligned with ``y``, ``"clean"`` among
    them): figures with the model's full choice, and restricted to the classes present when some are absent."""
    labels_arr = np.array(labels)
    present = [i for i, label in enumerate(labels) if label in set(y.tolist())]
    restricted = len(present) < len(labels)

    def predict(p: np.ndarray, columns: list[int]) -> np.ndarray:
        return labels_arr[np.asarray(columns)[p[:, columns].argmax(axis=1)]] if len(p) else np.array([], str)

    everything = list(range(len(labels)))
    clean_all, clean_present = predict(proba["clean"], everything), predict(proba["clean"], present)
    return [ConditionResult(
        condition=name, n=len(y),
        all_classes=condition_figures(y, predict(p, everything), clean_all),
        present_classes=condition_figures(y, predict(p, present), clean_present) if restricted else None,
    ) for name, p in proba.items()]


def _condition_matrices(clips: list[Clip], conditions: list[Condition], settings: Settings, seed: int,
                        progress: str | None) -> tuple[list[Clip], dict[str, np.ndarray], int]:
    """Features of ``clips`` under each condition (cached per condition and seed), on the clips readable under all."""
    matrices, oks = {}, []
    for condition in conditions:
        report = progress_printer(f"extracting {condition.name}") if progress == "stderr" else None
        X, ok, _ = extract_clips(clips, settings.cache_dir, max_seconds=settings.max_seconds, progress=report,
                                 perturbation=Conditioned(condition, seed))
        full = np.zeros((len(clips), X.shape[1]), np.float32)
        full[ok] = X
        matrices[condition.name], oks = full, oks + [ok]
    keep = np.logical_and.reduce(oks)
    return [c for c, k in zip(clips, keep) if k], {n: M[keep] for n, M in matrices.items()}, int((~keep).sum())


def evaluate_conditions(model: LoadedModel, data: str, settings: Settings, conditions: list[Condition], *,
                        folds: int = 5, seed: int = 0, progress: str | None = None) -> ConditionsReport:
    """``serq evaluate --conditions``: ``model`` on ``data``'s clips under each condition, speaker-independently.

    On speakers ``model`` never heard, the model itself is scored. When ``data``
    holds speakers it was trained on (the shipped model on RAVDESS), its recipe is
    refitted by speaker-grouped ``folds``-fold instead (training folds with the
    recipe's perturbed copies, clean), and each fold's model scores its unseen test
    speakers under every condition: the same protocol as the model card's table.
    """
    labels = list(model.meta.labels)
    dataset = scan(data).restrict(tuple(labels))
    if not dataset.clips:
        raise DatasetError(f"no clips of {', '.join(labels)} in {data}")
    seen = set(model.meta.training_data.get("speaker_ids", []))
    refit = bool(seen & set(dataset.speakers))
    clips, matrices, unreadable = _condition_matrices(dataset.clips, conditions, settings, seed, progress)
    skipped = Counter(dataset.skipped)
    if unreadable:
        skipped["unreadable audio"] += unreadable
    y = np.array([c.label for c in clips])
    groups = np.array([c.speaker for c in clips])
    if refit:
        hp = model.meta.hyperparameters
        report = progress_printer("extracting training copies") if progress == "stderr" else None
        training = training_set(Dataset(clips), settings.cache_dir, [hp], max_seconds=settings.max_seconds,
                                progress=report)
        if len(training.clips) != len(clips):
            raise DatasetError("some clips became unreadable between two reads; run again")
        proba = conditions_by_fold(matrices, training.y, training.groups, hp, labels, training.copies(hp),
                                   k=folds, random_state=hp.random_state,
                                   progress=progress_printer("cross-validating") if progress == "stderr" else None)
        protocol = f"speaker-grouped {folds}-fold, the recipe of {model.version} refitted per fold"
    else:
        proba = {name: probabilities(model, X) if len(X) else np.zeros((0, len(labels))) for name, X in matrices.items()}
        protocol = f"held-out data: {len(set(groups))} speakers, none seen in training"
    return ConditionsReport(
        model_version=model.version, protocol=protocol, speaker_independent=True, seed=seed, n=len(y),
        speakers=len(set(groups)), labels=labels, present=[l for l in labels if l in set(y.tolist())],
        conditions=condition_results(y, proba, labels), skipped=dict(skipped))


def conditions_by_fold(matrices: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray, hp: Hyperparameters,
                       labels: list[str], copies: list[np.ndarray], *, k: int = 5, random_state: int = 0,
                       progress=None) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities per condition: each speaker-grouped fold's model (fitted on the clean training
    rows ``matrices["clean"]`` plus ``copies``, rows aligned) on its test speakers under every condition."""
    X = matrices["clean"]
    check_trainable(y, labels)
    splits = folds_for(y, groups, protocol="speaker", k=k, random_state=random_state)
    proba = {name: np.zeros((len(y), len(labels))) for name in matrices}
    for i, (train, test) in enumerate(splits):
        model = fit(X[train], y[train], hp, [A[train] for A in copies])
        order = [list(model.classes_).index(label) for label in labels]
        for name, M in matrices.items():
            proba[name][test] = model.predict_proba(M[test])[:, order]
        if progress:
            progress(i + 1, len(splits))
    return proba
