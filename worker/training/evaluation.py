"""Scoring a trained model on labelled data it was not trained on."""

from __future__ import annotations

from collections import Counter

import numpy as np

from serq.errors import DatasetError, InvalidRequest
from serq.progress import progress_printer
from serq.schemas import ConditionFigures, ConditionResult, ConditionsReport, EvaluationReport, FoldStats, Hyperparameters
from serq.settings import Settings
from serq.text import counts
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.conditions import Condition, Conditioned
from serq.worker.training.datasets import Clip, scan
from serq.worker.training.extraction import TrainingSet, extract_clips, training_set
from serq.worker.training.fit import check_trainable, describe, fit, folds_for, score


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
            f"nothing to score in {data} (skipped: {counts(skipped)}). Every usable clip is of a speaker model "
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


def condition_matrices(clips: list[Clip], conditions: list[Condition], settings: Settings, seed: int,
                       progress: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features of ``clips`` under each condition (cached per condition and seed): ``(keep, {name: rows})``,
    the rows of the clips readable under every condition (``keep``, bool per clip)."""
    matrices, oks = {}, []
    for condition in conditions:
        report = progress_printer(f"extracting {condition.name}") if progress == "stderr" else None
        X, ok, _ = extract_clips(clips, settings.cache_dir, max_seconds=settings.max_seconds, progress=report,
                                 perturbation=None if condition.kind == "clean" else Conditioned(condition, seed))
        full = np.zeros((len(clips), X.shape[1]), np.float32)
        full[ok] = X
        matrices[condition.name], oks = full, oks + [ok]
    keep = np.logical_and.reduce(oks)
    return keep, {name: M[keep] for name, M in matrices.items()}


def evaluate_conditions(model: LoadedModel, data: str, settings: Settings, conditions: list[Condition], *,
                        folds: int = 5, seed: int = 0, progress: str | None = None) -> ConditionsReport:
    """``serq evaluate --conditions``: ``model`` on ``data``'s clips under each condition, speaker-independently.

    On speakers ``model`` never heard, the model itself is scored. When ``data``
    holds speakers it was trained on (the shipped model on RAVDESS), its recipe is
    refitted by speaker-grouped ``folds``-fold instead (training folds with the
    recipe's perturbed copies, clean), and each fold's model scores its unseen test
    speakers under every condition: the same protocol as the model card's table
    (refitted models choose among the classes the data hold).
    """
    if model.meta.normalisation != "none":
        raise InvalidRequest(f"model {model.version} expects speaker profiles: its conditions table (enrolled and "
                             "scored under each condition) is in its model card; evaluate a plain model here")
    labels = list(model.meta.labels)
    dataset = scan(data).restrict(tuple(labels))
    seen = set(model.meta.training_data.get("speaker_ids", []))
    skipped = Counter(dataset.skipped)
    if seen & set(dataset.speakers):
        hp = model.meta.hyperparameters
        training = training_set(dataset, settings.cache_dir, [hp], max_seconds=settings.max_seconds,
                                progress=progress_printer("extracting") if progress == "stderr" else None)
        # Refitted models can only learn the classes the data hold: the choice is among those.
        present = [label for label in labels if label in set(training.labels)]
        return conditions_report(training, hp, present, conditions, settings, k=folds, seed=seed, progress=progress,
                                 version=model.version)[1]
    keep, matrices = condition_matrices(dataset.clips, conditions, settings, seed, progress)
    if (~keep).any():
        skipped["unreadable audio"] += int((~keep).sum())
    clips = [c for c, k in zip(dataset.clips, keep) if k]
    y = np.array([c.label for c in clips])
    proba = {name: probabilities(model, X) if len(X) else np.zeros((0, len(labels))) for name, X in matrices.items()}
    speakers = len({c.speaker for c in clips})
    return ConditionsReport(
        model_version=model.version, protocol=f"held-out data: {speakers} speakers, none seen in training",
        speaker_independent=True, seed=seed, n=len(y), speakers=speakers, labels=labels,
        present=[label for label in labels if label in set(y.tolist())],
        conditions=condition_results(y, proba, labels), skipped=dict(skipped))


def conditions_report(training: TrainingSet, hp: Hyperparameters, labels: list[str], conditions: list[Condition],
                      settings: Settings, *, k: int = 5, seed: int = 0, random_state: int = 0,
                      progress: str | None = None, version: str | None = None
                      ) -> tuple[EvaluationReport, ConditionsReport]:
    """Speaker-grouped ``k``-fold of recipe ``hp`` on ``training`` (its perturbed copies in the training folds),
    each fold's model scoring its test speakers clean and under every condition.

    Returns the clean figures (as :func:`serq.worker.training.fit.cross_validate` reports them: the same
    folds and fits give the same predictions) and the conditions table: one set of fits for both.
    """
    keep, matrices = condition_matrices(training.clips, conditions, settings, seed, progress)
    y, groups = training.y[keep], training.groups[keep]
    matrices["clean"] = training.X[keep]  # the very rows training uses
    copies = [A[keep] for A in training.copies(hp)]
    check_trainable(y, labels)
    splits = folds_for(y, groups, protocol="speaker", k=k, random_state=random_state)
    proba = {name: np.zeros((len(y), len(labels))) for name in matrices}
    fold_of = np.zeros(len(y), dtype=int)
    report = progress_printer("cross-validating") if progress == "stderr" else None
    for f, (train, test) in enumerate(splits):
        model = fit(matrices["clean"][train], y[train], hp, [A[train] for A in copies])
        order = [list(model.classes_).index(label) for label in labels]
        for name, M in matrices.items():
            proba[name][test] = model.predict_proba(M[test])[:, order]
        fold_of[test] = f
        if report:
            report(f + 1, len(splits))
    skipped = dict(training.skipped)
    if (~keep).any():
        skipped["unreadable audio"] = skipped.get("unreadable audio", 0) + int((~keep).sum())
    pred = np.array(labels)[proba["clean"].argmax(axis=1)]
    clean = score(y, pred, labels, protocol=describe("speaker", k), speaker_independent=True, skipped=skipped)
    per_fold = [score(y[fold_of == f], pred[fold_of == f], labels, protocol="", speaker_independent=True)
                for f in range(len(splits))]
    clean.folds = {key: FoldStats(mean=float(np.mean([getattr(r, key) for r in per_fold])),
                                  std=float(np.std([getattr(r, key) for r in per_fold])))
                   for key in ("accuracy", "balanced_accuracy", "macro_f1")}
    table = ConditionsReport(
        model_version=version,
        protocol=f"speaker-grouped {k}-fold" + (f", the recipe of {version} refitted per fold" if version else ""),
        speaker_independent=True, seed=seed, n=len(y), speakers=len(set(groups.tolist())), labels=labels,
        present=[label for label in labels if label in set(y.tolist())],
        conditions=condition_results(y, proba, labels), skipped=skipped)
    return clean, table
