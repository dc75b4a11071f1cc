"""`serq evaluate --speaker-profiles MODE` on speakers the models never heard: score them as they are.

When none of a dataset's speakers is in the training data of the plain model or of its
speaker-normalised counterpart (the profile path's model: ``SPEAKER_ACTIVE``, else the
shipped one), refitting by fold would measure a recipe, not the models a user has. Here
the two models are scored directly, with no refit and no folds, so one speaker is enough:

- ``enroll:N``: per speaker, a profile from N of their clips (neutral/calm first), which
  are then not scored; the speaker model answers the rest;
- ``online``: per speaker, clips in a random order, each normalised only by the clips before
  it; the plain model answers until the profile has ``min_clips``.

The figures are the same three as the refit (``plain``, ``plain_same_clips``,
``speaker_profiles``), so they read the same way.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from serq.errors import DatasetError, InvalidRequest
from serq.models.registry import Registry, load_speaker_model
from serq.progress import progress_printer
from serq.schemas import EvaluationReport
from serq.worker.engine import profiles
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.datasets import Dataset, scan
from serq.worker.training.evaluation import enrol_plan, evaluate_profiles_on, level_rows, online_inputs, parse_mode
from serq.worker.training.extraction import training_set
from serq.worker.training.fit import score
from serq.worker.training.speaker import filled_levels


def evaluate_speaker_profiles(model: LoadedModel, data: str, settings, mode: str, *, folds: int = 5,
                              progress: str | None = None) -> dict[str, EvaluationReport]:
    """``serq evaluate --speaker-profiles MODE``: the models themselves on new speakers, else their recipe by fold.

    When no speaker of ``data`` was heard in training by ``model`` or its counterpart
    (:func:`counterparts`), both are scored as they are (:func:`score_new_speakers`; one
    speaker is enough). Otherwise :func:`serq.worker.training.evaluation.evaluate_profiles_on`
    refits ``model``'s recipe by speaker-grouped ``folds``-fold on ``data``.
    """
    try:
        parse_mode(mode)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    pair = counterparts(model, settings)
    dataset = scan(data).restrict(tuple(model.meta.labels))
    if pair is None or not unseen(dataset, *pair):
        return evaluate_profiles_on(model, data, settings, mode, folds=folds, progress=progress)
    training = training_set(dataset, settings.cache_dir, (), max_seconds=settings.max_seconds,
                            progress=progress_printer("extracting") if progress == "stderr" else None,
                            levels=pair[1].meta.speaker_prior.relative_level)
    return score_new_speakers(*pair, training.X, training.y, training.groups, mode, skipped=training.skipped,
                              levels=training.levels)


def counterparts(model: LoadedModel, settings) -> tuple[LoadedModel, LoadedModel] | None:
    """``(plain, speaker-normalised)`` for ``model``: itself and the profile path's model (``SPEAKER_ACTIVE``,
    else the shipped one), or, for a speaker model, the active plain model and itself. ``None`` when no
    speaker model is usable."""
    if model.meta.normalisation == "speaker":
        return Registry(settings.model_dir).load_active(), model
    speaker = load_speaker_model(settings.model_dir)
    return None if speaker is None else (model, speaker)


def seen_speakers(*models: LoadedModel) -> set[str]:
    """Every speaker id any of ``models`` was trained on."""
    return {s for m in models for s in m.meta.training_data.get("speaker_ids", [])}


def unseen(dataset: Dataset, *models: LoadedModel) -> bool:
    """True when no speaker of ``dataset`` is in the training data of any of ``models``."""
    return not set(dataset.speakers) & seen_speakers(*models)


def score_new_speakers(plain: LoadedModel, speaker: LoadedModel, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
                       mode: str, *, random_state: int = 0, skipped: dict[str, int] | None = None,
                       levels: np.ndarray | None = None) -> dict[str, EvaluationReport]:
    """Plain vs speaker-profile figures of the two models as they are, on rows ``X`` of new speakers.

    Returns ``{"plain", "plain_same_clips", "speaker_profiles"}`` as
    :func:`serq.worker.training.speaker.evaluate_profiles` does; a speaker with no clip
    left to score after enrolment is counted in ``skipped``. ``levels``: the rows' speech levels
    (for a speaker model that reads the level relative to the speaker's).
    """
    kind, n = parse_mode(mode)
    labels = list(plain.meta.labels)
    if sorted(speaker.meta.labels) != sorted(labels):
        raise InvalidRequest(f"the speaker model {speaker.version} knows {speaker.meta.labels}, the plain model "
                             f"{plain.version} {labels}: they cannot be compared")
    prior = speaker.meta.speaker_prior
    y, groups = np.asarray(y), np.asarray(groups)
    if levels is not None:
        levels = filled_levels(levels, groups)
    plain_pred = _predict(plain, X)
    speaker_pred = np.empty(len(y), dtype=object)
    scored = np.zeros(len(y), dtype=bool)
    rng = np.random.default_rng(random_state)
    skipped = Counter(skipped or {})
    for who in np.unique(groups):
        rows = np.flatnonzero(groups == who)
        if kind == "enroll":
            keep, profile = enrol_plan(X[rows], y[rows], n, rng, level_rows(levels, rows))
            if not len(keep):
                skipped[f"speaker with {n} clips or fewer (enroll:{n} leaves none to score)"] += len(rows)
                continue
            speaker_pred[rows[keep]] = _predict(speaker, profiles.model_input(
                X[rows[keep]], profile, prior, level_rows(levels, rows[keep])))
            scored[rows[keep]] = True
        else:
            for row, inp in zip(rows, online_inputs(X[rows], prior, rng, level_rows(levels, rows))):
                speaker_pred[row] = plain_pred[row] if inp is None else _predict(speaker, inp[None, :])[0]
            scored[rows] = True
    if not scored.any():
        raise DatasetError(f"nothing to score with {mode}: every speaker has {n} clips or fewer")
    count = len(np.unique(groups))
    protocol = f"held-out data: {count} speaker{'s' if count != 1 else ''}, none seen in training; models as they are"
    how = (f"enroll:{n}: profile from {n} clips per speaker (neutral/calm first), those clips not scored; "
           f"speaker model {speaker.version}, no refit" if kind == "enroll" else
           f"online: random order, each clip normalised only by the clips before it (plain model for the first "
           f"{prior.min_clips}); speaker model {speaker.version}, no refit")

    def report(pred: np.ndarray, sel: np.ndarray, protocol: str) -> EvaluationReport:
        return score(y[sel].astype(str), pred[sel].astype(str), labels, protocol=protocol, speaker_independent=True,
                     skipped=dict(skipped))

    everything = np.ones(len(y), dtype=bool)
    out = {"plain": report(plain_pred, everything, f"{protocol}, plain model {plain.version}"),
           "plain_same_clips": report(plain_pred, scored, f"{protocol}, plain model, the clips {mode} scored"),
           "speaker_profiles": report(speaker_pred, scored, f"{protocol}, {mode}")}
    out["plain"].speaker_profiles = out["plain_same_clips"].speaker_profiles = "none"
    out["speaker_profiles"].speaker_profiles = how
    return out


def _predict(model: LoadedModel, inputs: np.ndarray) -> np.ndarray:
    return np.array(model.meta.labels)[probabilities(model, inputs).argmax(axis=1)]
