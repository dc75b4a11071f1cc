"""One training job, end to end: scan, extract (cached), cross-validate, fit, register, activate.

`serq train --local` and the trainer service both run :func:`run_training`; the
trainer only adds the broker around it. A failure raises before anything is
registered or activated, so a failed job never touches the active model.

A job is bounded: files are read only if regular and within
``SERQ_TRAIN_MAX_FILE_BYTES``/``SERQ_TRAIN_MAX_FILE_SECONDS``, and between two steps
(every file, every fold) a :class:`JobGuard` stops it at ``SERQ_TRAIN_TIME_LIMIT_S``
(``time_limit``) or when its ``cancel`` event is set (:class:`~serq.errors.JobCancelled`,
raised to the caller, which hands the job back to the queue). Paths in what a job
returns (messages, ``TrainResult.dataset``, the model card and metadata) are relative
to the data root, never where the roots are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from serq.errors import DatasetError, JobCancelled, SerqError, TimeLimit
from serq.labels import EMOTIONS
from serq.models.registry import Registry, activate_speaker, current_speaker_metadata, register_model
from serq.schemas import EvaluationReport, Hyperparameters, TrainRequest, TrainResult
from serq.settings import Settings
from serq.worker.training.adaptation import class_statistics, run_adaptation
from serq.worker.training.datasets import inside, scan, shown
from serq.worker.training.evaluation import evaluate_profiles
from serq.worker.training.extraction import TrainingSet, training_set
from serq.worker.training.fit import cross_validate, fit
from serq.worker.training.sources import scan_sources
from serq.worker.training.speaker import CARD_NOTE, ProfileRecipe, fit_speaker_model

#: ``report(stage, done, total)``; ETA is derived by the caller.
Report = Callable[[str, int, int], None]


def resolve_dataset(dataset: str, roots: list[Path] | None) -> Path:
    """The dataset path, refused unless it lies inside one of ``roots`` (when given).

    Symlinks are resolved first, so a link pointing out of a root is refused too.
    """
    try:
        return _resolve_dataset(dataset, roots)
    except (OSError, ValueError, RuntimeError) as exc:  # NUL byte, name too long, ~nosuchuser: typed, not a crash
        raise DatasetError(f"dataset {dataset[:60]!r}: not a usable path ({exc.__class__.__name__})") from None


def _resolve_dataset(dataset: str, roots: list[Path] | None) -> Path:
    path = Path(dataset).expanduser()
    if roots is not None:
        if not roots:
            raise DatasetError("no data roots configured: set SERQ_DATA_ROOTS to the directories training may read")
        candidates = [path] if path.is_absolute() else [root / path for root in roots]
        escapes = False
        for candidate in candidates:  # a relative name may live under any of the roots
            real = candidate.resolve()
            if not inside(real, roots):
                escapes = True
            elif real.exists():
                return real
        if not escapes:
            raise DatasetError(f"dataset not found: {dataset}")
        raise DatasetError(f"dataset {dataset!r} is outside the data roots (SERQ_DATA_ROOTS)")
    if not path.exists():
        raise DatasetError(f"dataset not found: {dataset}")
    return path.resolve()


def confine(clips, roots: list[Path] | None) -> None:
    """Refuse clips outside ``roots``: a manifest entry or a symlinked file must not reach out either."""
    if roots is None:
        return
    outside = [c.path for c in clips if not inside(Path(c.path).resolve(), roots)]
    if outside:  # named by file name only: where it points is outside what a caller may know
        raise DatasetError(f"{len(outside)} clip(s) of the dataset lie outside the data roots, e.g. {outside[0].name}")


class JobGuard:
    """Stops a job between two steps: past ``time_limit_s`` (:class:`TimeLimit`), or once ``cancel`` is set
    (:class:`JobCancelled`). :meth:`check` is called before every progress report (every file, every fold)."""

    def __init__(self, time_limit_s: float, cancel: threading.Event | None = None, *, started: float | None = None):
        self.time_limit_s = time_limit_s
        self.cancel = cancel
        self.deadline = (time.monotonic() if started is None else started) + time_limit_s

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise JobCancelled("the trainer is stopping: the job goes back to the queue")
        if time.monotonic() > self.deadline:
            raise TimeLimit(f"the job ran longer than {self.time_limit_s:g} s (SERQ_TRAIN_TIME_LIMIT_S)")

    def guarded(self, report: "Report") -> "Report":
        """``report`` with :meth:`check` before each call."""
        def checked(stage: str, done: int, total: int) -> None:
            self.check()
            report(stage, done, total)

        return checked


def run_training(
    request: TrainRequest,
    settings: Settings,
    *,
    report: Report | None = None,
    roots: list[Path] | None = None,
    n_jobs: int = -1,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Run ``request``; returns a :class:`TrainResult` (``ok=False`` with a typed error on failure).

    ``cancel``: set it (from any thread, e.g. a SIGTERM handler) to stop the job at its next
    step; :class:`JobCancelled` is then raised, not returned, since the job did not fail.
    """
    started = time.monotonic()
    guard = JobGuard(settings.train_time_limit_s, cancel, started=started)
    report = guard.guarded(report or (lambda stage, done, total: None))
    try:
        return _run(request, settings, report, roots, n_jobs, started)
    except JobCancelled:
        raise
    except SerqError as exc:
        error = {"code": exc.code, "message": scrub(exc.message, settings, roots)}
        return TrainResult(job_id=request.job_id, ok=False, error=error, duration_s=time.monotonic() - started)


def scrub(message: str, settings: Settings, roots: list[Path] | None) -> str:
    """``message`` without the server's own folders: a data root's path becomes relative to it, the
    registry's and the cache's become their setting's name (the last line against a leak: the
    messages of this module name datasets relative to their root already)."""
    if roots is None:
        return message
    for root in sorted(roots, key=lambda r: -len(str(r))):
        message = message.replace(f"{root}/", "").replace(str(root), ".")
    for folder, setting in ((settings.model_dir, "$SERQ_MODEL_DIR"), (settings.cache_dir, "$SERQ_CACHE_DIR")):
        for form in {str(folder), str(Path(folder).expanduser().resolve())}:
            message = message.replace(form, setting)
    return message


def _run(request: TrainRequest, settings: Settings, report: Report, roots, n_jobs: int, started: float) -> TrainResult:
    if request.kind == "adapt":  # unlabelled: its own job (worker/training/adaptation.py)
        return run_adaptation(request, settings, report, n_jobs, started,
                              resolve=lambda name: resolve_dataset(name, roots),
                              confine=lambda clips: confine(clips, roots))
    labels = list(request.emotions or EMOTIONS)
    report("scanning", 0, 1)
    data = request.data_sources
    names: list[str] = []

    def open_source(dataset: str):
        path = resolve_dataset(dataset, roots)
        names.append(shown(path, roots) if roots is not None else dataset)  # never the roots' own location
        return scan(path, shown_as=names[-1], roots=roots)

    def select(dataset):
        dataset = dataset.restrict(tuple(labels))
        confine(dataset.clips, roots)
        return dataset.only_speakers(request.speakers) if request.speakers else dataset

    try:
        sources = scan_sources(data, open_source, select)
    except DatasetError as exc:
        if len(data) == 1 and str(exc).startswith("source "):  # one source: the message as before
            raise DatasetError(f"no clips of {', '.join(labels)} in {data[0].dataset}") from None
        raise
    dataset = sources.dataset
    name = ", ".join(names)
    several = len(data) > 1
    if several and request.speaker_normalisation and any(s.weight != 1 for s in data):
        raise DatasetError("source weights are not supported with speaker_normalisation (every weight must be 1)")
    report("scanning", 1, 1)

    registry = Registry(settings.model_dir)
    # Perturbed copies for this recipe and, for if_better, the active model's recipe.
    recipes = [request.hyperparameters]
    if request.activate == "if_better":
        recipes.append(registry.active_metadata().hyperparameters)
    training = training_set(dataset, settings.cache_dir, recipes, n_jobs=n_jobs,
                            max_seconds=settings.train_max_file_seconds, max_bytes=settings.train_max_file_bytes,
                            progress=lambda done, total: report("extracting", done, total),
                            levels=request.speaker_normalisation and ProfileRecipe().relative_level,
                            per_speaker_channels=request.speaker_normalisation)
    summary = dataset.training_summary(training.clips, name)
    names, weights = sources.rows(training.clips)
    if several:
        summary["sources"] = sources.summary(training.clips)
    weights = weights if several and np.any(weights != 1) else None
    names = names if several else None
    if request.speaker_normalisation:  # a model that expects speaker profiles
        return _run_speaker(request, settings, report, training, labels, summary, started)

    own = training.copies(request.hyperparameters)
    metrics = cross_validate(
        training.X, training.y, training.groups, request.hyperparameters, labels=labels, protocol=request.protocol,
        k=request.folds, progress=lambda done, total: report("cross-validating", done, total),
        skipped=training.skipped, augmented=own, sample_weight=weights, sources=names,
    )
    baseline = None
    if request.activate == "if_better":
        baseline = _baseline(registry, training, labels, request, weights)

    report("fitting", 0, 1)
    model = fit(training.X, training.y, request.hyperparameters, own, weights)
    report("fitting", 1, 1)

    report("registering", 0, 1)
    meta = register_model(model, settings, labels=labels, hyperparameters=request.hyperparameters,
                          training_data=summary, metrics=metrics,
                          class_statistics=class_statistics(model, training.X, training.y))  # for `serq adapt`
    activated, reason = _decide(request.activate, metrics, baseline)
    if activated:
        registry.activate(meta.version)
    report("registering", 1, 1)
    return TrainResult(
        job_id=request.job_id, ok=True, version=meta.version, activated=activated, activation_reason=reason,
        metrics=metrics, baseline=baseline, dataset=summary, duration_s=time.monotonic() - started,
    )


def _run_speaker(request: TrainRequest, settings: Settings, report: Report, training: TrainingSet, labels: list[str],
                 summary: dict, started: float, recipe: ProfileRecipe = ProfileRecipe()) -> TrainResult:
    """The speaker-normalised branch of :func:`run_training` (``speaker_normalisation``).

    Metrics are ``enroll:<enrol_clips>`` figures by speaker-grouped k-fold; the model
    is registered with ``normalisation="speaker"`` and its prior, and activation
    moves the speaker pointer (never the plain model's ACTIVE). A recipe trains on the
    perturbed copies its ``augment_speeds`` and ``channel_copies`` name; the channel copies are
    drawn per speaker (every clip of a speaker copy on one channel), and every clip's speech
    level is extracted for the level the model reads relative to the speaker's.
    """
    if request.protocol != "speaker":
        raise DatasetError("a speaker-normalised model is evaluated by speaker only (protocol 'speaker')")
    X, y, groups = training.X, training.y, training.groups

    def cv(hp: Hyperparameters, progress=None) -> EvaluationReport:
        return evaluate_profiles(X, y, groups, hp, labels=labels, mode=f"enroll:{recipe.enrol_clips}", recipe=recipe,
                                 k=request.folds, progress=progress, with_plain=False,
                                 augmented=training.copies(hp), levels=training.levels,
                                 augmented_levels=training.copy_levels(hp))["speaker_profiles"]

    metrics = cv(request.hyperparameters, lambda done, total: report("cross-validating", done, total))
    registry = Registry(settings.model_dir)
    baseline = None
    if request.activate == "if_better":
        current = current_speaker_metadata(registry)
        if current is not None and sorted(current.labels) == sorted(labels):
            baseline = cv(current.hyperparameters)
    report("fitting", 0, 1)
    model, prior = fit_speaker_model(X, y, groups, request.hyperparameters, recipe,
                                     training.copies(request.hyperparameters), training.levels,
                                     training.copy_levels(request.hyperparameters))
    report("fitting", 1, 1)
    report("registering", 0, 1)
    meta = register_model(model, settings, labels=labels, hyperparameters=request.hyperparameters,
                          training_data=summary, metrics=metrics, speaker_prior=prior, card_extra=CARD_NOTE)
    activated, reason = _decide(request.activate, metrics, baseline)
    if activated:
        activate_speaker(registry, meta.version)
    report("registering", 1, 1)
    return TrainResult(job_id=request.job_id, ok=True, version=meta.version, activated=activated,
                       activation_reason=reason + (" (speaker model)" if activated else ""), metrics=metrics,
                       baseline=baseline, dataset=summary, duration_s=time.monotonic() - started)


def _baseline(registry: Registry, training: TrainingSet, labels, request: TrainRequest, weights=None):
    """The active model's recipe re-fitted on the same folds (and source weights), so the comparison is like for like."""
    active = registry.active_metadata()
    if sorted(active.labels) != sorted(labels):
        return None
    return cross_validate(training.X, training.y, training.groups, active.hyperparameters, labels=labels,
                          protocol=request.protocol, k=request.folds,
                          augmented=training.copies(active.hyperparameters), sample_weight=weights)


def _decide(policy: str, metrics, baseline) -> tuple[bool, str]:
    if policy == "always":
        return True, "activation policy 'always'"
    if policy == "never":
        return False, "activation policy 'never'"
    if baseline is None:
        return False, "if_better: the active model covers other emotions, so the two cannot be compared; not activated"
    new, old = metrics.balanced_accuracy, baseline.balanced_accuracy
    if new > old:
        return True, f"if_better: balanced accuracy {new:.3f} > active recipe's {old:.3f} on the same folds"
    return False, f"if_better: balanced accuracy {new:.3f} <= active recipe's {old:.3f} on the same folds; not activated"
