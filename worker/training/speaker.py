"""Speaker-normalised models: training, honest evaluation, and which one a worker serves.

Training normalises every training speaker the way profiles are built at run
time: a profile from ``enrol_clips`` of the speaker's clips (neutral/calm first,
or random, or one of each: ``mixed``, the default, so that a profile enrolled from
calm speech and one later updated with every kind of clip both suit the model),
then :func:`serq.worker.engine.profiles.model_input` on all of the speaker's clips.

Evaluation (:func:`evaluate_profiles`) is speaker-grouped k-fold: the models of
a fold never saw its test speakers; a test speaker's profile is built only from
clips that are then *not* scored (``enroll:N``), or, in ``online`` mode, each clip
is normalised only by the clips before it in a random order.

A worker serves two models: the plain one (the registry's ACTIVE, else the
shipped default) and the speaker model: the version named in
``<SERQ_MODEL_DIR>/SPEAKER_ACTIVE`` (:func:`activate_speaker`), else the shipped
``serq/models/default_speaker``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from serq.errors import DatasetError
from serq.models.registry import (
    DEFAULT_SPEAKER_DIR,
    Registry,
    activate_speaker,
    current_speaker_metadata,
    feature_names_sha256,
    forget_speaker_models,
    new_version,
    serialise,
    sha256_bytes,
    weights_digest,
    write_folder,
)
from serq.schemas import (
    EvaluationReport,
    FoldStats,
    Hyperparameters,
    ModelMetadata,
    SpeakerPrior,
    TrainRequest,
    TrainResult,
)
from serq.schemas.profiles import Enrolment
from serq.worker.engine import profiles
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION
from serq.worker.engine.model import LoadedModel
from serq.worker.training.extraction import TrainingSet, training_set
from serq.worker.training.fit import (
    FoldProgress,
    check_trainable,
    fit,
    folds_for,
    score,
)

logger = logging.getLogger("serq.profiles")

#: Labels a dataset uses for speech "talking normally": enrolment prefers them.
ENROL_LABELS = ("neutral", "calm")


@dataclass(frozen=True)
class ProfileRecipe:
    """How training builds profiles and how a model applies them (stored as its :class:`SpeakerPrior`)."""

    enrolment: Enrolment = "mixed"
    enrol_clips: int = 8
    min_clips: int = 4
    prior_clips: float = 8.0
    std_floor: float = 0.1
    random_state: int = 0


def enrolment_indices(labels: np.ndarray, n: int, rng: np.random.Generator, kind: str = "neutral_calm") -> np.ndarray:
    """Indices of the ``n`` clips a profile is built from, among one speaker's clips with ``labels``.

    ``neutral_calm``: the neutral/calm clips first (in random order), topped up with
    random others; ``random``: any ``n``.
    """
    order = rng.permutation(len(labels))
    if kind == "neutral_calm":
        calm = np.isin(np.asarray(labels)[order], ENROL_LABELS)
        order = np.concatenate([order[calm], order[~calm]])
    return order[:n]


def _kinds(enrolment: str) -> tuple[str, ...]:
    return ("neutral_calm", "random") if enrolment == "mixed" else (enrolment,)


def speaker_training_set(X: np.ndarray, y: np.ndarray, groups: np.ndarray, recipe: ProfileRecipe
                         ) -> tuple[np.ndarray, np.ndarray, SpeakerPrior]:
    """Every training speaker's clips as model inputs ``[x, z]`` by a profile of their own enrolment clips.

    Returns ``(inputs, labels, prior)``; ``inputs`` has shape ``(n * kinds, 2 * f)``
    (``mixed`` gives each speaker one neutral/calm and one random profile).
    """
    rng = np.random.default_rng(recipe.random_state)
    built: list[tuple[np.ndarray, object]] = []
    for speaker in np.unique(groups):
        rows = np.flatnonzero(groups == speaker)
        for kind in _kinds(recipe.enrolment):
            chosen = rows[enrolment_indices(y[rows], recipe.enrol_clips, rng, kind)]
            built.append((rows, profiles.build(str(speaker), X[chosen], FEATURE_VERSION)))
    prior = SpeakerPrior(
        enrolment=recipe.enrolment, enrol_clips=recipe.enrol_clips, min_clips=recipe.min_clips,
        prior_clips=recipe.prior_clips, std_floor=recipe.std_floor,
        mean=np.mean([p.mean for _, p in built], axis=0).tolist(),
        var=np.mean([profiles.variance(p) for _, p in built], axis=0).tolist(),
    )
    inputs = np.vstack([profiles.model_input(X[rows], p, prior) for rows, p in built])
    return inputs, np.concatenate([y[rows] for rows, _ in built]), prior


def with_copies(X: np.ndarray, y: np.ndarray, groups: np.ndarray, augmented: list[np.ndarray] | None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows plus their speed-perturbed copies (rows aligned with ``X``), each copy of a speaker a speaker
    of its own: a faster, higher voice has its own baseline, so it gets its own profile."""
    if not augmented:
        return X, y, groups
    copies = [np.char.add(groups.astype(str), f"@copy{i}") for i in range(1, len(augmented) + 1)]
    return (np.concatenate([X, *augmented]), np.concatenate([y] * (len(augmented) + 1)),
            np.concatenate([groups.astype(str), *copies]))


def fit_speaker_model(X, y, groups, hp: Hyperparameters | None, recipe: ProfileRecipe,
                      augmented: list[np.ndarray] | None = None):
    """A pipeline over ``[x, z]`` inputs and the prior it expects (``augmented``: speed-perturbed copies)."""
    X, y, groups = with_copies(X, np.asarray(y), np.asarray(groups), augmented)
    inputs, labels, prior = speaker_training_set(X, y, groups, recipe)
    return fit(inputs, labels, hp), prior


# ---------------------------------------------------------------- honest evaluation


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
        rep = score(y[sel].astype(str), pred[sel].astype(str), labels, protocol=how, speaker_independent=True,
                    skipped=skipped)
        per_fold = [score(y[sel & (fold_of == f)].astype(str), pred[sel & (fold_of == f)].astype(str), labels,
                          protocol="", speaker_independent=True) for f in range(len(splits))]
        rep.folds = {key: FoldStats(mean=float(np.mean([getattr(r, key) for r in per_fold])),
                                    std=float(np.std([getattr(r, key) for r in per_fold])))
                     for key in ("accuracy", "balanced_accuracy", "macro_f1")}
        return rep

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


# ---------------------------------------------------------------- training jobs and the served model


def train_speaker_model(request: TrainRequest, settings, report, training: TrainingSet, labels: list[str],
                        summary: dict, started: float, recipe: ProfileRecipe = ProfileRecipe()) -> TrainResult:
    """The speaker-normalised branch of :func:`serq.worker.training.job.run_training` (``speaker_normalisation``).

    Metrics are ``enroll:<enrol_clips>`` figures by speaker-grouped k-fold; the model
    is registered with ``normalisation="speaker"`` and its prior, and activation
    moves the speaker pointer (never the plain model's ACTIVE). A recipe trains on the
    perturbed copies its ``augment_speeds`` name.
    """
    from serq.models.card import model_card
    from serq.worker.training.job import _decide

    if request.protocol != "speaker":
        raise DatasetError("a speaker-normalised model is evaluated by speaker only (protocol 'speaker')")
    X, y, groups = training.X, training.y, training.groups

    def cv(hp: Hyperparameters, progress=None) -> EvaluationReport:
        return evaluate_profiles(X, y, groups, hp, labels=labels, mode=f"enroll:{recipe.enrol_clips}", recipe=recipe,
                                 k=request.folds, progress=progress, with_plain=False,
                                 augmented=training.copies(hp.augment_speeds))["speaker_profiles"]

    metrics = cv(request.hyperparameters, lambda done, total: report("cross-validating", done, total))
    registry = Registry(settings.model_dir)
    baseline = None
    if request.activate == "if_better":
        current = current_speaker_metadata(registry)
        if current is not None and sorted(current.labels) == sorted(labels):
            baseline = cv(current.hyperparameters)
    report("fitting", 0, 1)
    model, prior = fit_speaker_model(X, y, groups, request.hyperparameters, recipe,
                                     training.copies(request.hyperparameters.augment_speeds))
    report("fitting", 1, 1)
    report("registering", 0, 1)
    data = serialise(model)
    digest = sha256_bytes(data)
    meta = _metadata(new_version(digest), digest, labels, request.hyperparameters, prior, summary, metrics)
    meta = registry.register(data, meta, model_card(meta, extra=CARD_NOTE))
    activated, reason = _decide(request.activate, metrics, baseline)
    if activated:
        activate_speaker(registry, meta.version)
    report("registering", 1, 1)
    return TrainResult(job_id=request.job_id, ok=True, version=meta.version, activated=activated,
                       activation_reason=reason + (" (speaker model)" if activated else ""), metrics=metrics,
                       baseline=baseline, dataset=summary, duration_s=time.monotonic() - started)


def _metadata(version, digest, labels, hp, prior, summary, metrics, notes="") -> ModelMetadata:
    return ModelMetadata(
        version=version, created=datetime.now(timezone.utc).replace(microsecond=0),
        feature_version=FEATURE_VERSION, feature_names_sha256=feature_names_sha256(FEATURE_NAMES),
        labels=labels, sha256=digest, hyperparameters=hp, normalisation="speaker", speaker_prior=prior,
        training_data=summary, metrics=metrics, notes=notes,
    )


CARD_NOTE = """## Speaker profiles
This model expects speaker-normalised input: `[x, z]`, the feature vector and its z-score by the
speaker's profile (see docs/profiles.md). Requests without a profile of at least `min_clips`
clips are answered by the plain model. Its figures are `enroll:N`: the N enrolment clips of each
test speaker build the profile and are not scored."""


def build_default_speaker(data: str | Path, out: str | Path | None = None, *, recipe: ProfileRecipe = ProfileRecipe(),
                          folds: int = 5, progress: Callable[[str], Callable[[int, int], None]] | None = None
                          ) -> tuple[ModelMetadata, dict[str, EvaluationReport]]:
    """Rebuild ``serq/models/default_speaker`` from RAVDESS (every clip, default hyperparameters, fixed seeds).

    Returns the metadata and the ``enroll:<enrol_clips>`` and ``online`` evaluations
    (both also in the model card).
    """
    from serq.models.card import metrics_table, model_card
    from serq.settings import get_settings
    from serq.worker.training.datasets import scan

    out = Path(out) if out else DEFAULT_SPEAKER_DIR
    progress = progress or (lambda stage: None)
    dataset = scan(data)
    hp = Hyperparameters()
    training = training_set(dataset, get_settings().cache_dir, hp.augment_speeds, progress=progress("extracting"))
    labels, copies = training.labels, training.copies(hp.augment_speeds)
    evaluations = evaluate_modes(training.X, training.y, training.groups, hp, labels=labels,
                                 modes=[f"enroll:{recipe.enrol_clips}", "online"], recipe=recipe, k=folds,
                                 progress=progress("cross-validating"), skipped=training.skipped, augmented=copies)
    model, prior = fit_speaker_model(training.X, training.y, training.groups, hp, recipe, copies)
    data_bytes = serialise(model)
    digest = sha256_bytes(data_bytes)
    summary = dataset.training_summary(training.clips, "RAVDESS speech (Zenodo record 1188976), 16 kHz FLAC")
    enrol = evaluations[f"enroll:{recipe.enrol_clips}"]
    meta = _metadata(f"speaker-ravdess-{FEATURE_VERSION}-{weights_digest(model)[:8]}", digest, labels, hp, prior, summary,
                     enrol["speaker_profiles"], notes="The speaker-normalised model shipped with serq.")
    extra = [CARD_NOTE, "", "## Beside the plain model (same folds, same clips)"]
    for mode, reports in evaluations.items():
        for name in ("plain", "plain_same_clips", "speaker_profiles"):
            extra += ["", f"### {mode}: {name}", "", metrics_table(reports[name])]
    extra += ["", "## Rebuilding", "`serq profiles build-model --data ../shared/data/ravdess` rebuilds it "
              "from the same clips with the same seeds: the same weights, metrics and version (named by "
              "a hash of the weights) given the same library versions and machine type."]
    write_folder(out, data_bytes, meta, model_card(meta, extra="\n".join(extra)))
    forget_speaker_models()
    return meta, evaluations


def evaluate_dataset(model: LoadedModel, data: str, settings, mode: str, *, folds: int = 5,
                     progress: str | None = None, recipe: ProfileRecipe = ProfileRecipe()) -> dict[str, EvaluationReport]:
    """``serq evaluate --speaker-profiles MODE``: the models themselves on new speakers, else their recipe by fold.

    When no speaker of ``data`` was heard in training by ``model`` or its counterpart
    (plain <-> speaker-normalised), both are scored as they are, with no refit
    (:mod:`serq.worker.training.new_speakers`; one speaker is enough). Otherwise,
    speaker-grouped ``folds``-fold on ``data`` (fresh models per fold, with the
    hyperparameters and labels of ``model``), so no test speaker is ever heard in
    training, whichever speakers ``model`` itself was fitted on.
    """
    from serq.progress import progress_printer
    from serq.worker.training.datasets import scan
    from serq.worker.training.new_speakers import score_new_speakers, unseen

    try:
        parse_mode(mode)
    except ValueError as exc:
        from serq.errors import InvalidRequest

        raise InvalidRequest(str(exc)) from None
    labels = list(model.meta.labels)
    dataset = scan(data).restrict(tuple(labels))
    pair = counterparts(model, settings)
    if pair is not None and unseen(dataset, *pair):
        training = training_set(dataset, settings.cache_dir, (), max_seconds=settings.max_seconds,
                                progress=progress_printer("extracting") if progress == "stderr" else None)
        return score_new_speakers(*pair, training.X, training.y, training.groups, mode, skipped=training.skipped)
    hp = model.meta.hyperparameters
    training = training_set(dataset, settings.cache_dir, hp.augment_speeds, max_seconds=settings.max_seconds,
                            progress=progress_printer("extracting") if progress == "stderr" else None)
    return evaluate_profiles(training.X, training.y, training.groups, hp, labels=labels, mode=mode, recipe=recipe,
                             k=folds, progress=progress_printer("cross-validating") if progress == "stderr" else None,
                             skipped=training.skipped, augmented=training.copies(hp.augment_speeds))


def counterparts(model: LoadedModel, settings) -> tuple[LoadedModel, LoadedModel] | None:
    """``(plain, speaker-normalised)`` for ``model``: itself and the profile path's model (``SPEAKER_ACTIVE``,
    else the shipped one), or, for a speaker model, the active plain model and itself. ``None`` when no
    speaker model is usable."""
    from serq.models.registry import load_speaker_model

    if model.meta.normalisation == "speaker":
        return Registry(settings.model_dir).load_active(), model
    speaker = load_speaker_model(settings.model_dir)
    return None if speaker is None else (model, speaker)
