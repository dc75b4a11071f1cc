"""Rebuilding the models that ship in ``serq/models/default`` and ``serq/models/default_speaker`` (reproducibly).

``serq models build-default`` trains on every RAVDESS speech clip it finds (actors
01-20 here), with the default hyperparameters and a fixed seed, reports
speaker-grouped 5-fold metrics, and writes the artifact, metadata and card.
Same data + same seed -> the same model and figures. ``serq profiles build-model``
does the same for the speaker-normalised model (:func:`build_default_speaker`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from serq.models.card import metrics_table
from serq.models.registry import DEFAULT_DIR, DEFAULT_SPEAKER_DIR, ship_model, weights_digest
from serq.progress import progress_printer
from serq.schemas import EvaluationReport, Hyperparameters, ModelMetadata
from serq.settings import get_settings
from serq.worker.engine.features import FEATURE_VERSION
from serq.worker.training.adaptation import class_statistics
from serq.worker.training.datasets import scan
from serq.worker.training.evaluation import evaluate_modes
from serq.worker.training.extraction import training_set
from serq.worker.training.fit import cross_validate, fit
from serq.worker.training.speaker import CARD_NOTE, ProfileRecipe, fit_speaker_model

#: The default model's version names its feature layout and recipe, not a timestamp,
#: so a rebuild from the same data gives the same version.
DEFAULT_VERSION_PREFIX = "default-ravdess"


def build_default(data: str | Path, out: str | Path | None = None, *, n_jobs: int = -1) -> ModelMetadata:
    """Rebuild ``serq/models/default`` from RAVDESS (every clip, default hyperparameters, fixed seed)."""
    out = Path(out) if out else DEFAULT_DIR
    settings = get_settings()
    dataset = scan(data)
    hp = Hyperparameters()
    training = training_set(dataset, settings.cache_dir, hp.augment_speeds, n_jobs=n_jobs,
                            progress=progress_printer("extracting"))
    copies = training.copies(hp.augment_speeds)
    metrics = cross_validate(training.X, training.y, training.groups, hp, labels=training.labels, protocol="speaker",
                             k=5, progress=progress_printer("cross-validating"), skipped=training.skipped,
                             augmented=copies)
    model = fit(training.X, training.y, hp, copies)
    summary = dataset.training_summary(training.clips, "RAVDESS speech (Zenodo record 1188976), 16 kHz FLAC")
    return ship_model(model, out, version=f"{DEFAULT_VERSION_PREFIX}-{FEATURE_VERSION}-{weights_digest(model)[:8]}",
                      labels=training.labels, hyperparameters=hp, training_data=summary, metrics=metrics,
                      notes="The default model shipped with serq.", card_extra=REBUILD_NOTE,
                      class_statistics=class_statistics(model, training.X, training.y))  # for `serq adapt`


REBUILD_NOTE = """## Rebuilding
`serq models build-default --data ../shared/data/ravdess` rebuilds this model from the same
clips with the same seed: the same weights, metrics and version (named by a hash of the
weights) given the same library versions and machine type; the skops file's own sha256 differs between
rebuilds because the zip records timestamps."""


def build_default_speaker(data: str | Path, out: str | Path | None = None, *, recipe: ProfileRecipe = ProfileRecipe(),
                          folds: int = 5, progress: Callable[[str], Callable[[int, int], None]] | None = None
                          ) -> tuple[ModelMetadata, dict[str, EvaluationReport]]:
    """Rebuild ``serq/models/default_speaker`` from RAVDESS (every clip, default hyperparameters, fixed seeds).

    Returns the metadata and the ``enroll:<enrol_clips>`` and ``online`` evaluations
    (both also in the model card).
    """
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
    summary = dataset.training_summary(training.clips, "RAVDESS speech (Zenodo record 1188976), 16 kHz FLAC")
    enrol = evaluations[f"enroll:{recipe.enrol_clips}"]
    extra = [CARD_NOTE, "", "## Beside the plain model (same folds, same clips)"]
    for mode, reports in evaluations.items():
        for name in ("plain", "plain_same_clips", "speaker_profiles"):
            extra += ["", f"### {mode}: {name}", "", metrics_table(reports[name])]
    extra += ["", "## Rebuilding", "`serq profiles build-model --data ../shared/data/ravdess` rebuilds it "
              "from the same clips with the same seeds: the same weights, metrics and version (named by "
              "a hash of the weights) given the same library versions and machine type."]
    meta = ship_model(model, out, version=f"speaker-ravdess-{FEATURE_VERSION}-{weights_digest(model)[:8]}",
                      labels=labels, hyperparameters=hp, training_data=summary, metrics=enrol["speaker_profiles"],
                      speaker_prior=prior, notes="The speaker-normalised model shipped with serq.",
                      card_extra="\n".join(extra))
    return meta, evaluations
