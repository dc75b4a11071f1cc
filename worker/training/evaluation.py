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
from serq.schemas import EvaluationReport, Hyperparameters, SpeakerPrior
from serq.settings import Settings
from serq.text import counts
from serq.worker.engine import profiles
from serq.worker.engine.features import FEATURE_VERSION
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.datasets import scan
from serq.worker.training.extraction import extract_clips, training_set
from serq.worker.training.fit import FoldProgress, check_trainable, fit, fold_report, folds_for, score
from serq.worker.training.speaker import ProfileRecipe, enrolment_indices, fit_speaker_model


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


# ---------------------------------------------------------------- the speaker-profile path


def enrol_plan(X_s: np.ndarray, y_s: np.ndarray, n: int, rng: np.random.Generator
               ) -> tuple[np.ndarray, "profiles.SpeakerProfile"]:
    """``enroll:N`` for one test speaker: ``(scored indices, profile)``; the profile's clips are never scored."""
    chosen = enrolment_indices(y_s, n, rng, "neutral_calm")
    scored = np.setdiff1d(np.arange(len(y_s)), chosen)
    return scored, profiles.build("eval", X_s[chosen], FEATURE_VERSION)


def online_inputs(X_s: np.ndarray, prior: SpeakerPrior, rng: np.random.Generator) -> list[np.ndarray | None]:
    """``online`` for one test speaker: clips in a random order, each normalised only by the clips before it.

    Returns, per clip (in the speaker's original order), its model input, or
    ``None`` when fewer than ``prior.min_clips`` clips came before it (the plain
    model answers, as a worker would).
    """
    out: list[np.ndarray | None] = [None] * len(X_s)
    profile = profiles.new_profile("eval", X_s.shape[1], FEATURE_VERSION)
    for i in rng.permutation(len(X_s)):
        if profile.count >= prior.min_clips:
            out[i] = profiles.model_input(X_s[i], profile, prior)[0]
        profile = profiles.add(profile, X_s[i])  # only after the clip was classified
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
                      augmented: list[np.ndarray] | None = None) -> dict[str, EvaluationReport]:
    """Plain vs speaker-profile figures by speaker-grouped ``k``-fold.

    Returns ``{"plain": all clips, "plain_same_clips": the clips the profile path
    scored, "speaker_profiles": the profile path}``; the last two are on exactly
    the same clips. In ``enroll:N`` mode a test speaker's ``N`` enrolment clips
    (neutral/calm first) build the profile and are not scored; in ``online`` mode
    every clip is scored, clips before ``recipe.min_clips`` by the plain model.
    ``with_plain=False`` (``enroll`` only) skips the plain model: only ``speaker_profiles``.
    ``augmented``: speed-perturbed copies of ``X`` (rows aligned), for the training folds only.
    """
    return evaluate_modes(X, y, groups, hp, labels=labels, modes=[mode], recipe=recipe, k=k,
                          random_state=random_state, progress=progress, skipped=skipped, with_plain=with_plain,
                          augmented=augmented)[mode]


def evaluate_modes(X: np.ndarray, y: np.ndarray, groups: np.ndarray, hp: Hyperparameters | None, *,
                   labels: list[str], modes: list[str], recipe: ProfileRecipe = ProfileRecipe(), k: int = 5,
                   random_state: int = 0, progress: FoldProgress | None = None,
                   skipped: dict[str, int] | None = None, with_plain: bool = True,
                   augmented: list[np.ndarray] | None = None) -> dict[str, dict[str, EvaluationReport]]:
    """:func:`evaluate_profiles` for several modes on the same folds and fitted models: ``{mode: reports}``."""
    parsed = {mode: parse_mode(mode) for mode in modes}
    if not with_plain and any(kind == "online" for kind, _ in parsed.values()):
        raise ValueError("online mode needs the plain model for a speaker's first clips")
    y, groups = np.asarray(y), np.asarray(groups)
    check_trainable(y, labels)
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
        model, prior = fit_speaker_model(X[train], y[train], groups[train], hp, recipe, copies)
        for speaker in np.unique(groups[test]):
            rows = np.flatnonzero(groups == speaker)
            for mode, (kind, n) in parsed.items():
                pred, rng = speaker_pred[mode], rngs[mode]
                if kind == "enroll":
                    keep, profile = enrol_plan(X[rows], y[rows], n, rng)
                    if len(keep):
                        pred[rows[keep]] = model.predict(profiles.model_input(X[rows[keep]], profile, prior))
                    scored[mode][rows[keep]] = True
                else:
                    for row, inp in zip(rows, online_inputs(X[rows], prior, rng)):
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
    training = training_set(dataset, settings.cache_dir, hp.augment_speeds, max_seconds=settings.max_seconds,
                            progress=progress_printer("extracting") if progress == "stderr" else None)
    return evaluate_profiles(training.X, training.y, training.groups, hp, labels=labels, mode=mode, recipe=recipe,
                             k=folds, progress=progress_printer("cross-validating") if progress == "stderr" else None,
                             skipped=training.skipped, augmented=training.copies(hp.augment_speeds))
