"""The speaker-profile recipe: how training normalises each speaker, and what the model records of it.

Training normalises every training speaker the way profiles are built at run
time: a profile from ``enrol_clips`` of the speaker's clips (neutral/calm first,
or random, or one of each: ``mixed``, the default, so that a profile enrolled from
calm speech and one later updated with every kind of clip both suit the model),
then :func:`serq.worker.engine.profiles.model_input` on all of the speaker's clips.

Its honest evaluation is :func:`serq.worker.training.evaluation.evaluate_profiles`;
the training job's branch is in :mod:`.job`, the shipped model's build in :mod:`.shipped`.
Which speaker model a worker serves is the registry's (``SPEAKER_ACTIVE``, else the
shipped ``serq/models/default_speaker``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serq.schemas import Hyperparameters, SpeakerPrior
from serq.schemas.profiles import Enrolment
from serq.worker.engine import profiles
from serq.worker.engine.features import FEATURE_VERSION
from serq.worker.training.fit import fit

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
    #: The model also reads each clip's speech level minus its speaker's (the features are level-free).
    relative_level: bool = True


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


def filled_levels(levels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``levels`` with a silent clip's NaN replaced by its speaker's median level (its relative level 0)."""
    levels = np.asarray(levels, np.float64).copy()
    for speaker in np.unique(groups[~np.isfinite(levels)]):
        rows = groups == speaker
        finite = levels[rows][np.isfinite(levels[rows])]
        levels[rows & ~np.isfinite(levels)] = np.median(finite) if len(finite) else 0.0
    return levels


def speaker_training_set(X: np.ndarray, y: np.ndarray, groups: np.ndarray, recipe: ProfileRecipe,
                         levels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, SpeakerPrior]:
    """Every training speaker's clips as model inputs ``[x, z]`` by a profile of their own enrolment clips
    (``[x, z, level - profile level]`` with ``recipe.relative_level``: ``levels`` in dB, one per row).

    Returns ``(inputs, labels, prior)``; ``inputs`` has shape ``(n * kinds, 2 * f [+ 1])``
    (``mixed`` gives each speaker one neutral/calm and one random profile).
    """
    if recipe.relative_level and levels is None:
        raise ValueError("a recipe with relative_level needs every clip's speech level")
    lv = filled_levels(levels, groups) if recipe.relative_level else None
    rng = np.random.default_rng(recipe.random_state)
    built: list[tuple[np.ndarray, object]] = []
    for speaker in np.unique(groups):
        rows = np.flatnonzero(groups == speaker)
        for kind in _kinds(recipe.enrolment):
            chosen = rows[enrolment_indices(y[rows], recipe.enrol_clips, rng, kind)]
            built.append((rows, profiles.build(str(speaker), X[chosen], FEATURE_VERSION,
                                               levels=None if lv is None else lv[chosen])))
    prior = SpeakerPrior(
        enrolment=recipe.enrolment, enrol_clips=recipe.enrol_clips, min_clips=recipe.min_clips,
        prior_clips=recipe.prior_clips, std_floor=recipe.std_floor, relative_level=recipe.relative_level,
        mean=np.mean([p.mean for _, p in built], axis=0).tolist(),
        var=np.mean([profiles.variance(p) for _, p in built], axis=0).tolist(),
    )
    inputs = np.vstack([profiles.model_input(X[rows], p, prior, None if lv is None else lv[rows])
                        for rows, p in built])
    return inputs, np.concatenate([y[rows] for rows, _ in built]), prior


def with_copies(X: np.ndarray, y: np.ndarray, groups: np.ndarray, augmented: list[np.ndarray] | None,
                levels: np.ndarray | None = None, augmented_levels: list[np.ndarray] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows plus their perturbed copies (rows aligned with ``X``), each copy of a speaker a speaker
    of its own: a faster, higher voice has its own baseline, so it gets its own profile.
    Returns ``(X, y, groups, levels)``; ``levels`` (``None`` when not given) follow the rows."""
    if not augmented:
        return X, y, groups, levels
    copies = [np.char.add(groups.astype(str), f"@copy{i}") for i in range(1, len(augmented) + 1)]
    lv = None if levels is None else np.concatenate([levels, *augmented_levels])
    return (np.concatenate([X, *augmented]), np.concatenate([y] * (len(augmented) + 1)),
            np.concatenate([groups.astype(str), *copies]), lv)


def fit_speaker_model(X, y, groups, hp: Hyperparameters | None, recipe: ProfileRecipe,
                      augmented: list[np.ndarray] | None = None, levels: np.ndarray | None = None,
                      augmented_levels: list[np.ndarray] | None = None):
    """A pipeline over ``[x, z (, relative level)]`` inputs and the prior it expects (``augmented``:
    perturbed copies; ``levels``/``augmented_levels``: their speech levels, for ``recipe.relative_level``)."""
    X, y, groups, levels = with_copies(X, np.asarray(y), np.asarray(groups), augmented, levels, augmented_levels)
    inputs, labels, prior = speaker_training_set(X, y, groups, recipe, levels)
    return fit(inputs, labels, hp), prior


CARD_NOTE = """## Speaker profiles
This model expects speaker-normalised input: `[x, z]`, the feature vector and its z-score by the
speaker's profile (see docs/profiles.md), and, when its `speaker_prior.relative_level` is true, the
clip's speech level minus the profile's `level_db` (the features themselves are level-free). Requests without a profile of at least `min_clips`
clips are answered by the plain model. Its figures are `enroll:N`: the N enrolment clips of each
test speaker build the profile and are not scored."""
