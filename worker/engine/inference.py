"""bytes -> audio -> features -> probabilities -> result: the one classification path.

``serq predict`` (in-process), the AMQP worker and the bot all go through
:func:`classify`, so a clip gets the same answer whichever way it arrives.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from serq.schemas import PredictionResult, SpectralSummary, Timings
from serq.worker.engine.audio import decode
from serq.worker.engine.features import (
    FEATURE_VERSION,
    analyse,
    feature_vector,
    spectral_summary,
    speech_level,
)
from serq.worker.engine.profiles import route, updated

if TYPE_CHECKING:
    from serq.schemas import SpeakerProfile
    from serq.settings import Settings
    from serq.worker.engine.model import LoadedModel


def probabilities(model: "LoadedModel", vectors: np.ndarray) -> np.ndarray:
    """Class probabilities, shape ``(n, len(model.meta.labels))``, columns in ``meta.labels`` order."""
    proba = model.pipeline.predict_proba(np.atleast_2d(vectors))
    classes = [str(c) for c in model.pipeline.classes_]
    order = [classes.index(label) for label in model.meta.labels]
    return proba[:, order]


def classify(source, model: "LoadedModel", settings: "Settings", *, file: str | None = None,
             profile: "SpeakerProfile | None" = None, speaker_model: "LoadedModel | None" = None) -> PredictionResult:
    """Classify one clip (bytes or a path). Raises :class:`serq.errors.AudioError` on bad audio.

    With a speaker ``profile`` of enough clips and a ``speaker_model``, the speaker-normalised
    model answers; otherwise ``model`` does, and the result says which and why (docs/profiles.md).
    """
    t0 = time.perf_counter()
    audio = decode(source, max_bytes=settings.max_bytes, max_seconds=settings.max_seconds)
    t1 = time.perf_counter()
    analysis = analyse(audio.samples, audio.sample_rate)
    vector = feature_vector(analysis)
    spectral = spectral_summary(analysis, audio.original_rate)
    t2 = time.perf_counter()
    level = speech_level(analysis)
    speaker_input, profile_status = route(vector, profile, speaker_model, FEATURE_VERSION,
                                          level if level is not None else 0.0)  # silent: not classified anyway
    if speaker_input is not None:
        model = speaker_model
    labels = list(model.meta.labels)
    if analysis.silent:
        # No speech energy: claim no emotion rather than a confident guess.
        label, confidence, probs = None, 0.0, {name: 1.0 / len(labels) for name in labels}
    else:
        p = probabilities(model, vector if speaker_input is None else speaker_input)[0]
        best = int(np.argmax(p))
        label, confidence = labels[best], float(p[best])
        probs = {name: round(float(v), 6) for name, v in zip(labels, p)}
    t3 = time.perf_counter()
    return PredictionResult(
        file=file,
        label=label,
        confidence=round(confidence, 6),
        probabilities=probs,
        silent=analysis.silent,
        spectral=SpectralSummary.model_validate(spectral),
        model_version=model.version,
        timings_ms=Timings(
            decode=round((t1 - t0) * 1000, 3),
            features=round((t2 - t1) * 1000, 3),
            inference=round((t3 - t2) * 1000, 3),
        ),
        normalisation="none" if speaker_input is None else "speaker",
        profile_status=profile_status,
        profile_clips=None if profile is None else profile.count,
        profile=updated(profile, vector, silent=analysis.silent, status=profile_status, level=level),
    )
