"""Scoring a trained model on labelled data it was not trained on."""

from __future__ import annotations

from collections import Counter

import numpy as np

from serq.errors import DatasetError
from serq.progress import progress_printer
from serq.schemas import EvaluationReport
from serq.settings import Settings
from serq.text import counts
from serq.worker.engine.inference import probabilities
from serq.worker.engine.model import LoadedModel
from serq.worker.training.datasets import scan
from serq.worker.training.extraction import extract_clips
from serq.worker.training.fit import score


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
