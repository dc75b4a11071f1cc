"""Honest figures beyond the training job's cross-validation.

:func:`evaluate_model` scores a trained model on labelled data it was not trained
on. :func:`evaluate_profiles` compares the plain and the speaker-profile path by
speaker-grouped k-fold: the models of a fold never saw its test speakers; a test
speaker's profile is built only from clips that are then *not* scored (``enroll:N``),
or, in ``online`` mode, each clip is normalised only by the clips before it in a
random order.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from serq.errors import DatasetError, InvalidRequest
from serq.progress import progress_printer
from serq.schemas import (
    ConditionFigures, ConditionResult, ConditionsReport, EvaluationReport, FoldStats, Hyperparameters, SpeakerPrior,
)
from serq.settings import Settings
from serq.text import counts
from serq.worker.engine import profiles
from serq.worker.engine.features import FEATURE_VERSION
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.conditions import DEFAULT_CONDITIONS, Condition, Conditioned, parse_conditions
from serq.worker.training.datasets import Clip, scan
from serq.worker.training.extraction import TrainingSet, extract_clips, extract_levels, training_set
from serq.worker.training.fit import FoldProgress, check_trainable, describe, fit, fold_report, folds_for, score
from serq.worker.training.speaker import ProfileRecipe, enrolment_indices, filled_levels, fit_speaker_model


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


# ---------------------------------------------------------------- the speaker-profile path


def enrol_plan(X_s: np.ndarray, y_s: np.ndarray, n: int, rng: np.random.Generator,
               levels_s: np.ndarray | None = None) -> tuple[np.ndarray, "profiles.SpeakerProfile"]:
    """``enroll:N`` for one test speaker: ``(scored indices, profile)``; the profile's clips are never scored.
    ``levels_s``: the speaker's clips' speech levels (the profile then carries its level)."""
    chosen = enrolment_indices(y_s, n, rng, "neutral_calm")
    scored = np.setdiff1d(np.arange(len(y_s)), chosen)
    return scored, profiles.build("eval", X_s[chosen], FEATURE_VERSION,
                                  levels=None if levels_s is None else levels_s[chosen])


def level_rows(levels: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    """``levels[rows]`` (``None`` stays ``None``)."""
    return None if levels is None else levels[rows]


def online_inputs(X_s: np.ndarray, prior: SpeakerPrior, rng: np.random.Generator,
                  levels_s: np.ndarray | None = None) -> list[np.ndarray | None]:
    """``online`` for one test speaker: clips in a random order, each normalised only by the clips before it.

    Returns, per clip (in the speaker's original order), its model input, or
    ``None`` when fewer than ``prior.min_clips`` clips came before it (the plain
    model answers, as a worker would). ``levels_s``: the clips' speech levels, which the profile
    carries along as a worker's does.
    """
    out: list[np.ndarray | None] = [None] * len(X_s)
    profile = profiles.new_profile("eval", X_s.shape[1], FEATURE_VERSION)
    for i in rng.permutation(len(X_s)):
        level = None if levels_s is None else levels_s[i]
        if profile.count >= prior.min_clips:
            out[i] = profiles.model_input(X_s[i], profile, prior, level)[0]
        profile = profiles.add(profile, X_s[i], level)  # only after the clip was classified
    return out


def parse_mode(text: str) -> tuple[str, int]:
    """``"enroll:8" -> ("enroll", 8)``, ``"online" -> ("online", 0)``; :class:`ValueError` otherwise."""
    kind, _, n = text.partition(":")
    if kind == "online" and not n:
        return "online", 0
    if kind == "enroll" and n.isdigit() and int(n) >= 1:
        return "enroll", int(n)
    raise ValueError(f"--speaker-profiles {text!r}: use enroll:N (N >= 1 clips per speaker) or online")


def evaluate_profiles(X: np.ndarray, y: np.ndarray, groups: np.ndarray, hp: Hyperparameters | None, *,
                      labels: list[str], mode: str, recipe: ProfileRecipe = ProfileRecipe(), k: int = 5,
                      random_state: int = 0, progress: FoldProgress | None = None,
                      skipped: dict[str, int] | None = None, with_plain: bool = True,
                      augmented: list[np.ndarray] | None = None, levels: np.ndarray | None = None,
                      augmented_levels: list[np.ndarray] | None = None) -> dict[str, EvaluationReport]:
    """Plain vs speaker-profile figures by speaker-grouped ``k``-fold.

    Returns ``{"plain": all clips, "plain_same_clips": the clips the profile path
    scored, "speaker_profiles": the profile path}``; the last two are on exactly
    the same clips. In ``enroll:N`` mode a test speaker's ``N`` enrolment clips
    (neutral/calm first) build the profile and are not scored; in ``online`` mode
    every clip is scored, clips before ``recipe.min_clips`` by the plain model.
    ``with_plain=False`` (``enroll`` only) skips the plain model: only ``speaker_profiles``.
    ``augmented``: speed-perturbed copies of ``X`` (rows aligned), for the training folds only.
    ``levels``/``augmented_levels``: their speech levels (needed by ``recipe.relative_level``).
    """
    return evaluate_modes(X, y, groups, hp, labels=labels, modes=[mode], recipe=recipe, k=k,
                          random_state=random_state, progress=progress, skipped=skipped, with_plain=with_plain,
                          augmented=augmented, levels=levels, augmented_levels=augmented_levels)[mode]


def evaluate_modes(X: np.ndarray, y: np.ndarray, groups: np.ndarray, hp: Hyperparameters | None, *,
                   labels: list[str], modes: list[str], recipe: ProfileRecipe = ProfileRecipe(), k: int = 5,
                   random_state: int = 0, progress: FoldProgress | None = None,
                   skipped: dict[str, int] | None = None, with_plain: bool = True,
                   augmented: list[np.ndarray] | None = None, levels: np.ndarray | None = None,
                   augmented_levels: list[np.ndarray] | None = None) -> dict[str, dict[str, EvaluationReport]]:
    """:func:`evaluate_profiles` for several modes on the same folds and fitted models: ``{mode: reports}``."""
    parsed = {mode: parse_mode(mode) for mode in modes}
    if not with_plain and any(kind == "online" for kind, _ in parsed.values()):
        raise ValueError("online mode needs the plain model for a speaker's first clips")
    y, groups = np.asarray(y), np.asarray(groups)
    check_trainable(y, labels)
    if levels is not None:  # a silent clip reads as its speaker's level
        levels = filled_levels(levels, groups)
    splits = folds_for(y, groups, protocol="speaker", k=k, random_state=random_state)
    plain_pred = np.empty(len(y), dtype=object)
    speaker_pred = {mode: np.empty(len(y), dtype=object) for mode in modes}
    scored = {mode: np.zeros(len(y), dtype=bool) for mode in modes}
    rngs = {mode: np.random.default_rng(random_state) for mode in modes}
    fold_of = np.empty(len(y), dtype=int)
    for f, (train, test) in enumerate(splits):
        fold_of[test] = f
        copies = [A[train] for A in augmented or []]  # training folds only: scored clips are originals
        if with_plain:
            plain_pred[test] = fit(X[train], y[train], hp, copies).predict(X[test])
        model, prior = fit_speaker_model(X[train], y[train], groups[train], hp, recipe, copies, level_rows(levels, train),
                                         [A[train] for A in augmented_levels] if augmented_levels else None)
        for speaker in np.unique(groups[test]):
            rows = np.flatnonzero(groups == speaker)
            lv = level_rows(levels, rows)
            for mode, (kind, n) in parsed.items():
                pred, rng = speaker_pred[mode], rngs[mode]
                if kind == "enroll":
                    keep, profile = enrol_plan(X[rows], y[rows], n, rng, lv)
                    if len(keep):
                        pred[rows[keep]] = model.predict(profiles.model_input(X[rows[keep]], profile, prior,
                                                                              level_rows(lv, keep)))
                    scored[mode][rows[keep]] = True
                else:
                    for row, inp in zip(rows, online_inputs(X[rows], prior, rng, lv)):
                        pred[row] = plain_pred[row] if inp is None else model.predict(inp[None, :])[0]
                    scored[mode][rows] = True
        if progress:
            progress(f + 1, len(splits))
    protocol = f"speaker-grouped {k}-fold"

    def report(pred: np.ndarray, sel: np.ndarray, how: str) -> EvaluationReport:
        """Pooled metrics over the ``sel`` rows, with mean/std over folds like :func:`cross_validate`."""
        return fold_report(y[sel].astype(str), pred[sel].astype(str), fold_of[sel], len(splits), labels,
                           protocol=how, speaker_independent=True, skipped=skipped)

    out: dict[str, dict[str, EvaluationReport]] = {}
    everything = np.ones(len(y), dtype=bool)
    for mode, (kind, n) in parsed.items():
        sel = scored[mode]
        spk = report(speaker_pred[mode], sel, f"{protocol}, {mode}")
        spk.speaker_profiles = (
            f"enroll:{n}: profile from {n} clips per test speaker (neutral/calm first), those clips not scored"
            if kind == "enroll" else
            f"online: random order, each clip normalised only by the clips before it (plain model for the "
            f"first {recipe.min_clips})")
        out[mode] = {"speaker_profiles": spk}
        if with_plain:
            out[mode]["plain"] = report(plain_pred, everything, protocol)
            out[mode]["plain_same_clips"] = report(plain_pred, sel, f"{protocol}, the clips {mode} scored")
            out[mode]["plain"].speaker_profiles = out[mode]["plain_same_clips"].speaker_profiles = "none"
    return out


def evaluate_profiles_on(model: LoadedModel, data: str, settings, mode: str, *, folds: int = 5,
                     progress: str | None = None, recipe: ProfileRecipe = ProfileRecipe()) -> dict[str, EvaluationReport]:
    """``serq evaluate --speaker-profiles MODE``: :func:`evaluate_profiles` on ``data`` with ``model``'s recipe.

    Speaker-grouped ``folds``-fold on ``data`` (fresh models per fold, with the
    hyperparameters and labels of ``model``), so no test speaker is ever heard in
    training, whichever speakers ``model`` itself was fitted on.
    """
    try:
        parse_mode(mode)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    labels = list(model.meta.labels)
    dataset = scan(data).restrict(tuple(labels))
    hp = model.meta.hyperparameters
    training = training_set(dataset, settings.cache_dir, [hp], max_seconds=settings.max_seconds,
                            progress=progress_printer("extracting") if progress == "stderr" else None,
                            levels=recipe.relative_level, per_speaker_channels=True)
    return evaluate_profiles(training.X, training.y, training.groups, hp, labels=labels, mode=mode, recipe=recipe,
                             k=folds, progress=progress_printer("cross-validating") if progress == "stderr" else None,
                             skipped=training.skipped, augmented=training.copies(hp), levels=training.levels,
                             augmented_levels=training.copy_levels(hp))


# ---------------------------------------------------------------- the speaker path under recording conditions


def conditions_by_enrolment(training: TrainingSet, matrices: dict[str, np.ndarray], hp: Hyperparameters,
                            recipe: ProfileRecipe, labels: list[str], *, k: int = 5, random_state: int = 0,
                            progress: FoldProgress | None = None, levels: dict[str, np.ndarray] | None = None
                            ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``enroll:<recipe.enrol_clips>`` under recording conditions, by speaker-grouped ``k``-fold.

    Each test speaker is enrolled and scored under the *same* condition (a user enrols
    on the line they call from): the same enrolment clips (neutral/calm first) under
    every condition, never scored. ``matrices[name]`` are the rows of ``training.X``
    under each condition (``"clean"`` among them). Returns ``(scored, proba)``: the
    rows scored (bool) and, per condition, probabilities in ``labels`` order. ``levels[name]``: the
    rows' speech levels under each condition (needed by ``recipe.relative_level``).
    """
    y, groups = training.y, training.groups
    levels = {name: filled_levels(lv, groups) for name, lv in (levels or {}).items()}
    check_trainable(y, labels)
    splits = folds_for(y, groups, protocol="speaker", k=k, random_state=random_state)
    scored = np.zeros(len(y), dtype=bool)
    proba = {name: np.zeros((len(y), len(labels))) for name in matrices}
    for f, (train, test) in enumerate(splits):
        copy_levels = training.copy_levels(hp)
        model, prior = fit_speaker_model(training.X[train], y[train], groups[train], hp, recipe,
                                         [A[train] for A in training.copies(hp)],
                                         level_rows(levels.get("clean"), train),
                                         [A[train] for A in copy_levels] if copy_levels is not None else None)
        order = [list(model.classes_).index(label) for label in labels]
        for speaker in np.unique(groups[test]):
            rows = np.flatnonzero(groups == speaker)
            rng = np.random.default_rng([random_state, int(rows[0])])
            chosen = enrolment_indices(y[rows], recipe.enrol_clips, rng, "neutral_calm")
            keep = rows[np.setdiff1d(np.arange(len(rows)), chosen)]
            scored[keep] = True
            for name, M in matrices.items():
                lv = levels.get(name)
                profile = profiles.build("eval", M[rows[chosen]], FEATURE_VERSION,
                                         levels=level_rows(lv, rows[chosen]))
                proba[name][keep] = model.predict_proba(
                    profiles.model_input(M[keep], profile, prior, level_rows(lv, keep)))[:, order]
        if progress:
            progress(f + 1, len(splits))
    return scored, {name: p[scored] for name, p in proba.items()}


def speaker_conditions_report(training: TrainingSet, hp: Hyperparameters, recipe: ProfileRecipe, labels: list[str],
                              settings, *, k: int = 5, seed: int = 0, progress: FoldProgress | None = None
                              ) -> ConditionsReport:
    """:func:`conditions_by_enrolment` under the default conditions, as a :class:`ConditionsReport`."""
    keep, matrices = condition_matrices(training.clips, parse_conditions(DEFAULT_CONDITIONS), settings, seed)
    if not keep.all():
        raise DatasetError(f"{int((~keep).sum())} clips became unreadable under a condition")
    matrices["clean"] = training.X
    levels = None
    if recipe.relative_level:
        levels = {c.name: extract_levels(training.clips, settings.cache_dir, max_seconds=settings.max_seconds,
                                         perturbation=None if c.kind == "clean" else Conditioned(c, seed))
                  for c in parse_conditions(DEFAULT_CONDITIONS)}
        levels["clean"] = training.levels if training.levels is not None else \
            extract_levels(training.clips, settings.cache_dir, max_seconds=settings.max_seconds)
    scored, proba = conditions_by_enrolment(training, matrices, hp, recipe, labels, k=k, progress=progress,
                                            levels=levels)
    y = training.y[scored]
    return ConditionsReport(
        protocol=f"speaker-grouped {k}-fold, enroll:{recipe.enrol_clips} (enrolled and scored under the same "
                 "condition; enrolment clips not scored)",
        speaker_independent=True, seed=seed, n=len(y), speakers=len(set(training.groups.tolist())), labels=labels,
        present=[label for label in labels if label in set(y.tolist())],
        conditions=condition_results(y, proba, labels), skipped=dict(training.skipped))
