"""Training and honest evaluation: scikit-learn pipelines, speaker-grouped folds.

Every figure this module reports says how it was obtained. The default protocol
is speaker-independent (group k-fold over speakers); a random split over clips is
only available by name (``protocol="random"``) and is labelled speaker-dependent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from serq.errors import DatasetError
from serq.schemas import EvaluationReport, FoldStats, Hyperparameters

Protocol = str  # "speaker" | "random"
#: ``progress(fold_done, folds)`` during cross-validation.
FoldProgress = Callable[[int, int], None]


def make_pipeline(hp: Hyperparameters | None = None) -> Pipeline:
    """Standardise, then an MLP; ``random_state`` fixed so equal data give equal models."""
    hp = hp or Hyperparameters()
    mlp = MLPClassifier(
        hidden_layer_sizes=tuple(hp.hidden_layers),
        alpha=hp.alpha,
        learning_rate_init=hp.learning_rate_init,
        max_iter=hp.max_iter,
        early_stopping=hp.early_stopping,
        random_state=hp.random_state,
    )
    return Pipeline([("scale", StandardScaler()), ("mlp", mlp)])


def fit(X: np.ndarray, y: np.ndarray, hp: Hyperparameters | None = None,
        augmented: list[np.ndarray] | None = None, sample_weight: np.ndarray | None = None) -> Pipeline:
    """Fit on ``X`` plus its speed-perturbed copies ``augmented`` (rows aligned with ``X``).

    ``sample_weight`` (one per row of ``X``, copies weighted as their originals): how much
    each clip counts in the MLP's loss (several sources, :mod:`.sources`).
    """
    model = make_pipeline(hp)
    if augmented:
        X = np.concatenate([X, *augmented])
        y = np.concatenate([y] * (len(augmented) + 1))
        if sample_weight is not None:
            sample_weight = np.concatenate([sample_weight] * (len(augmented) + 1))
    fit_params = {} if sample_weight is None else {"mlp__sample_weight": sample_weight}
    # The MLP's matrices are small: BLAS threads only contend for the cores (7x slower
    # measured on a busy 2-core machine) and parallelism comes from joblib elsewhere.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # max_iter is a chosen budget, not an accident: do not warn about it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y, **fit_params)
    return model


def score(y_true, y_pred, labels: list[str], *, protocol: str, speaker_independent: bool,
          skipped: dict[str, int] | None = None) -> EvaluationReport:
    """Accuracy, balanced accuracy, macro-F1, per-class figures and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    present = support > 0
    return EvaluationReport(
        n=int(len(y_true)),
        protocol=protocol,
        speaker_independent=speaker_independent,
        accuracy=float(np.mean(y_true == y_pred)) if len(y_true) else 0.0,
        balanced_accuracy=float(recall[present].mean()) if present.any() else 0.0,
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        labels=list(labels),
        per_class={
            label: {"recall": float(r), "precision": float(p), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support)
        },
        confusion_matrix=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        skipped=dict(skipped or {}),
    )


def folds_for(y: np.ndarray, groups: np.ndarray, *, protocol: Protocol = "speaker", k: int = 5,
              random_state: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train/test index pairs. ``speaker``: no speaker is ever on both sides."""
    if protocol == "speaker":
        n_speakers = len(np.unique(groups))
        if n_speakers < k:
            raise DatasetError(
                f"speaker-grouped {k}-fold needs at least {k} speakers, the dataset has {n_speakers}"
            )
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=random_state)
        return list(splitter.split(y, y, groups))
    if protocol == "random":
        _, counts = np.unique(y, return_counts=True)
        if counts.min() < k:
            raise DatasetError(f"a random {k}-fold split needs {k} clips per class, the rarest has {counts.min()}")
        return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state).split(y, y))
    raise ValueError(f"unknown protocol {protocol!r}: 'speaker' or 'random'")


def describe(protocol: Protocol, k: int) -> str:
    return f"speaker-grouped {k}-fold" if protocol == "speaker" else f"random {k}-fold over clips (speaker-dependent)"


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    hp: Hyperparameters | None = None,
    *,
    labels: list[str],
    protocol: Protocol = "speaker",
    k: int = 5,
    random_state: int = 0,
    progress: FoldProgress | None = None,
    skipped: dict[str, int] | None = None,
    augmented: list[np.ndarray] | None = None,
    sample_weight: np.ndarray | None = None,
    sources: np.ndarray | None = None,
) -> EvaluationReport:
    """Pooled out-of-fold metrics plus mean/std over folds.

    ``augmented`` copies (rows aligned with ``X``) join the training folds only: a
    fold is always scored on original clips of speakers it never trained on.
    ``sample_weight`` weighs the training rows; ``sources`` (a name per row) adds the
    same out-of-fold figures per source (``report.sources``).
    """
    y = np.asarray(y)
    check_trainable(y, labels)
    splits = folds_for(y, groups, protocol=protocol, k=k, random_state=random_state)
    pred = np.empty_like(y)
    fold_of = np.empty(len(y), dtype=int)
    for i, (train, test) in enumerate(splits):
        model = fit(X[train], y[train], hp, [A[train] for A in augmented or []],
                    None if sample_weight is None else sample_weight[train])
        pred[test] = model.predict(X[test])
        fold_of[test] = i
        if progress:
            progress(i + 1, len(splits))
    report = fold_report(y, pred, fold_of, len(splits), labels, protocol=describe(protocol, k),
                         speaker_independent=protocol == "speaker", skipped=skipped)
    if sources is not None:
        report.sources = per_source(y, pred, np.asarray(sources), labels, protocol=report.protocol,
                                    speaker_independent=report.speaker_independent)
    return report


#: The figures a report gives as mean and std over folds.
FOLD_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def fold_report(y_true: np.ndarray, y_pred: np.ndarray, fold_of: np.ndarray, folds: int, labels: list[str], *,
                protocol: str, speaker_independent: bool, skipped: dict[str, int] | None = None) -> EvaluationReport:
    """Pooled out-of-fold metrics over every row, plus mean/std over the ``folds`` folds
    (``fold_of[i]``: the fold that scored row ``i``)."""
    report = score(y_true, y_pred, labels, protocol=protocol, speaker_independent=speaker_independent,
                   skipped=skipped)
    per_fold = [score(y_true[fold_of == f], y_pred[fold_of == f], labels, protocol="", speaker_independent=True)
                for f in range(folds)]
    report.folds = {key: FoldStats(mean=float(np.mean([getattr(r, key) for r in per_fold])),
                                   std=float(np.std([getattr(r, key) for r in per_fold])))
                    for key in FOLD_METRICS}
    return report


def per_source(y_true, y_pred, sources: np.ndarray, labels: list[str], *, protocol: str,
               speaker_independent: bool) -> dict[str, EvaluationReport]:
    """:func:`score` of the rows of each source (in order of first appearance)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    names = list(dict.fromkeys(sources.tolist()))
    return {name: score(y_true[sources == name], y_pred[sources == name], labels,
                        protocol=f"{protocol}, clips of source {name}", speaker_independent=speaker_independent)
            for name in names}


def check_trainable(y: np.ndarray, labels: list[str], min_per_class: int = 2) -> None:
    """Refuse data that cannot train every requested class."""
    present, counts = np.unique(y, return_counts=True)
    have = dict(zip(present.tolist(), counts.tolist()))
    missing = [label for label in labels if have.get(label, 0) < min_per_class]
    if missing:
        raise DatasetError(
            f"too few clips for {', '.join(missing)} (need at least {min_per_class} each; have "
            + ", ".join(f"{label}={have.get(label, 0)}" for label in labels) + ")"
        )
