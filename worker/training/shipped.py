"""Rebuilding the default model that ships in ``serq/models/default`` (reproducibly).

``serq models build-default`` trains on every RAVDESS speech clip it finds (actors
01-20 here), with the default hyperparameters and a fixed seed, reports
speaker-grouped 5-fold metrics, and writes the artifact, metadata and card.
Same data + same seed -> the same model and figures.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from serq.models.card import model_card
from serq.models.registry import (
    DEFAULT_DIR,
    feature_names_sha256,
    serialise,
    sha256_bytes,
    weights_digest,
    write_folder,
)
from serq.schemas import Hyperparameters, ModelMetadata

#: The default model's version names its feature layout and recipe, not a timestamp,
#: so a rebuild from the same data gives the same version.
DEFAULT_VERSION_PREFIX = "default-ravdess"


def build_default(data: str | Path, out: str | Path | None = None, *, n_jobs: int = -1) -> ModelMetadata:
    from serq.progress import progress_printer
    from serq.settings import get_settings
    from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION
    from serq.worker.training.adaptation import class_statistics
    from serq.worker.training.datasets import scan
    from serq.worker.training.extraction import training_set
    from serq.worker.training.fit import cross_validate, fit

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
    data_bytes = serialise(model)
    digest = sha256_bytes(data_bytes)
    summary = dataset.training_summary(training.clips, "RAVDESS speech (Zenodo record 1188976), 16 kHz FLAC")
    meta = ModelMetadata(
        version=f"{DEFAULT_VERSION_PREFIX}-{FEATURE_VERSION}-{weights_digest(model)[:8]}",
        created=datetime.now(timezone.utc).replace(microsecond=0),
        feature_version=FEATURE_VERSION,
        feature_names_sha256=feature_names_sha256(FEATURE_NAMES),
        labels=training.labels,
        sha256=digest,
        hyperparameters=hp,
        training_data=summary,
        metrics=metrics,
        notes="The default model shipped with serq.",
        class_statistics=class_statistics(model, training.X, training.y),  # for `serq adapt`
    )
    write_folder(out, data_bytes, meta, model_card(meta, extra=REBUILD_NOTE))
    return meta


REBUILD_NOTE = """## Rebuilding
`serq models build-default --data ../shared/data/ravdess` rebuilds this model from the same
clips with the same seed: the same weights, metrics and version (named by a hash of the
weights) given the same library versions and machine type; the skops file's own sha256 differs between
rebuilds because the zip records timestamps."""
