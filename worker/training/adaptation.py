"""Unlabelled domain adaptation (`serq adapt`): a model that reads features relative to a new domain.

A plain model is ``StandardScaler -> MLP``: the MLP sees features standardised by the
statistics of its training corpus (RAVDESS's studio, microphone and gain). A user's own
audio (their calls, their device, their language) sits elsewhere in feature space.
Adapting keeps the MLP and replaces the scaler's statistics with the domain's, estimated
from a folder of the user's unlabelled clips, so the MLP sees the new domain standardised
the way it saw its own.

The catch is the emotion mix. Real traffic is mostly neutral, so the domain's plain mean
and spread are not the channel's: they carry the mix (a mostly-neutral folder would make
neutral look "average", and everything else look extreme). The first method written,
``mixture``, models the domain's clips as a mix of the source model's classes (their
per-class statistics, recorded at training time in ``ModelMetadata.class_statistics``),
shifted and scaled per feature by the channel: it estimates the mix by EM and removes
what the mix explains before standardising. With the level-free features ``serq-fe-3``
that EM collapses onto one class (docs/training.md), so the default (``auto``) is now
``reweighted``: the source model's own posteriors on the domain's clips estimate the
domain's emotion mix (the EM of Saerens et al., 2002, for a shift in class priors), and
each clip is weighted so that the weighted folder has the source's training mix before
its mean and spread are taken. It needs only the model (its training mix comes from its
class statistics or its cross-validated per-class supports), so it also adapts models
that record no class statistics, such as the shipped one.

The functions of the statistics are pure (numpy in, numpy out); :func:`run_adaptation`
is the job (scan, extract, estimate, register, activate) that `serq adapt --local` and the
trainer both run.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import soundfile as sf

from serq.errors import DatasetError, ModelError
from serq.files import audio_files
from serq.models.card import model_card
from serq.models.registry import Registry, new_version, register_artifact, serialise, sha256_bytes
from serq.schemas import ClassStatistics, DomainAdaptation, ModelMetadata, TrainRequest, TrainResult
from serq.settings import Settings
from serq.worker.training.datasets import Clip
from serq.worker.training.extraction import extract_clips

#: Fewer unlabelled clips than this give statistics too noisy to standardise by.
MIN_CLIPS = 20
#: EM steps of :func:`mixture_moments`; it settles within about 20 on every corpus tried.
MIXTURE_STEPS = 30
#: Floor of a class's per-feature variance in the mixture's likelihood (standardised units).
VARIANCE_FLOOR = 1e-2
#: A domain spread below this (a constant feature) keeps the source's scale.
MIN_SPREAD = 1e-8
#: EM steps of :func:`prior_shift_mix` (Saerens et al.'s EM; it settles well within these).
PRIOR_STEPS = 100
#: An estimated class share below this counts as this when clips are weighted (no division by ~0).
MIN_SHARE = 1e-3


# ---------------------------------------------------------------- statistics (pure)


def class_statistics(pipeline, X: np.ndarray, y: np.ndarray) -> ClassStatistics:
    """Per-class mean and variance of ``X`` standardised by ``pipeline``'s scaler, and the class mix.

    Recorded with a trained model so that it can later be adapted with :func:`mixture_moments`.
    """
    scaler = pipeline.named_steps["scale"]
    Z = (np.asarray(X, np.float64) - scaler.mean_) / scaler.scale_
    y = np.asarray(y)
    labels = [str(c) for c in pipeline.classes_]
    present = [label for label in labels if np.any(y == label)]
    return ClassStatistics(
        labels=present,
        priors=[float(np.mean(y == label)) for label in present],
        means=[_rounded(Z[y == label].mean(axis=0)) for label in present],
        variances=[_rounded(Z[y == label].var(axis=0)) for label in present],
    )


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def robust_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(median, IQR / 1.349)`` per feature: a centre and a spread that a minority of odd clips cannot move."""
    q25, median, q75 = np.percentile(np.asarray(X, np.float64), [25, 50, 75], axis=0)
    return median, (q75 - q25) / 1.349


def plain_moments(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, np.float64)
    return X.mean(axis=0), X.std(axis=0)


def mixture_moments(X: np.ndarray, stats: ClassStatistics, steps: int = MIXTURE_STEPS
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The domain's channel statistics with its emotion mix taken out: ``(mean, scale, mix)``.

    Model: a domain clip is a clip of one of the source's classes (mean ``m_k``, variance
    ``v_k`` per feature, standardised units), shifted and scaled per feature by the
    channel. Given a mix ``pi``, the domain's own mean and variance fix the channel
    (moment matching: the domain mean is ``pi @ m`` and its variance ``pi @ (v + m**2) -
    (pi @ m)**2`` in standardised units); given the channel, each clip's class
    responsibilities (diagonal Gaussians) re-estimate ``pi``. Starting from the
    training mix, EM (damped by half) alternates the two. With a mostly-neutral folder, the
    neutral-heavy mean is then read as "neutral", not as "the average clip".

    Returns the scaler's ``mean`` and ``scale`` for this domain, and the estimated mix
    (in ``stats.labels`` order).
    """
    X = np.asarray(X, np.float64)
    m = np.asarray(stats.means, np.float64)  # (k, f)
    v = np.asarray(stats.variances, np.float64)
    prior = np.asarray(stats.priors, np.float64)
    prior = prior / prior.sum()
    mu, sd = X.mean(axis=0), np.maximum(X.std(axis=0), MIN_SPREAD)
    centre = prior @ m  # ~0: the training mix is what the scaler centred
    floor = np.maximum(v, VARIANCE_FLOOR)
    inv = 1.0 / floor
    const = (m * m * inv).sum(axis=1) + np.log(floor).sum(axis=1)  # (k,)
    pi = prior.copy()
    for _ in range(steps):
        mean, scale = _channel(mu, sd, pi, m, v, centre)
        U = (X - mean) / scale
        # -2 log N(u; m_k, v_k) up to a constant, without an (n, k, f) array
        d2 = (U * U) @ inv.T - 2.0 * U @ (m * inv).T + const
        loglik = -0.5 * d2 + np.log(np.maximum(pi, 1e-6))
        loglik -= loglik.max(axis=1, keepdims=True)
        resp = np.exp(loglik)
        resp /= resp.sum(axis=1, keepdims=True)
        pi = 0.5 * pi + 0.5 * resp.mean(axis=0)
    mean, scale = _channel(mu, sd, pi, m, v, centre)
    return mean, scale, pi


def _channel(mu, sd, pi, m, v, centre) -> tuple[np.ndarray, np.ndarray]:
    """The scaler that maps a domain of raw mean ``mu``, spread ``sd`` and mix ``pi`` onto the source's space."""
    expected_mean = pi @ m
    expected_var = np.maximum(pi @ (v + m * m) - expected_mean**2, 1e-3)
    scale = sd / np.sqrt(expected_var)
    return mu - scale * (expected_mean - centre), scale


def prior_shift_mix(proba: np.ndarray, source_mix: np.ndarray, steps: int = PRIOR_STEPS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The domain's class mix from a model's posteriors on it: ``(mix, adjusted posteriors)``.

    Saerens, Latinne & Decaestecker (2002): posteriors trained under the mix ``source_mix``
    are re-weighted by ``mix / source_mix`` and renormalised; ``mix`` is the mean of the
    re-weighted posteriors; repeat. ``proba``: shape ``(n, k)``, columns as ``source_mix``.
    """
    proba = np.asarray(proba, np.float64)
    source_mix = np.asarray(source_mix, np.float64) / np.sum(source_mix)
    mix, adjusted = source_mix.copy(), proba
    for _ in range(steps):
        adjusted = proba * (mix / source_mix)
        adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-300)
        mix = adjusted.mean(axis=0)
    return mix, adjusted


def reweighted_moments(pipeline, X: np.ndarray, source_mix: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The domain's mean and spread as if its clips came in the source's class mix: ``(mean, scale, mix)``.

    ``pipeline`` (the source model, unchanged) gives each clip's class posteriors; they
    estimate the domain's mix (:func:`prior_shift_mix`), and clip ``i`` weighs
    ``sum_k p_ik * source_k / mix_k``: the importance weight that turns the domain's mix
    into the source's. A mostly-neutral folder then counts its neutral clips down, so its
    mean is the channel's, not neutral's. ``source_mix`` is in ``pipeline.classes_`` order.
    The posteriors come from the source model before any adaptation: with level-free,
    channel-augmented features it is already the least biased judge of the mix.
    """
    X = np.asarray(X, np.float64)
    source_mix = np.asarray(source_mix, np.float64) / np.sum(source_mix)
    mix, adjusted = prior_shift_mix(pipeline.predict_proba(X), source_mix)
    weights = adjusted @ (source_mix / np.maximum(mix, MIN_SHARE))
    mean = np.average(X, axis=0, weights=weights)
    scale = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=weights))
    return mean, scale, mix


def source_mix(pipeline, meta: ModelMetadata) -> np.ndarray:
    """The class mix ``pipeline`` was trained under, in ``pipeline.classes_`` order.

    From its class statistics when recorded, else from its cross-validated per-class
    supports (every clip is scored once), else uniform.
    """
    classes = [str(c) for c in pipeline.classes_]
    shares: dict[str, float] = {}
    if meta.class_statistics is not None:
        shares = dict(zip(meta.class_statistics.labels, meta.class_statistics.priors))
    elif meta.metrics is not None and meta.metrics.per_class:
        shares = {label: float(v.get("support", 0)) for label, v in meta.metrics.per_class.items()}
    mix = np.array([shares.get(c, 0.0) for c in classes], np.float64)
    return mix / mix.sum() if mix.sum() > 0 and (mix > 0).all() else np.full(len(classes), 1.0 / len(classes))


def domain_moments(X: np.ndarray, method: str, stats: ClassStatistics | None, *, pipeline=None,
                   mix: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, float] | None]:
    """``(mean, scale, estimated mix or None)`` of the domain ``X`` by ``method`` (see :class:`DomainAdaptation`).

    ``reweighted`` needs the source ``pipeline`` and its training ``mix`` (:func:`source_mix`).
    """
    if method == "reweighted":
        if pipeline is None or mix is None:
            raise ValueError("method 'reweighted' needs the source pipeline and its training mix")
        mean, scale, estimated = reweighted_moments(pipeline, X, mix)
        return mean, scale, {str(c): round(float(p), 4) for c, p in zip(pipeline.classes_, estimated)}
    if method == "mixture":
        if stats is None:
            raise ModelError("method 'mixture' needs the model's class statistics (models trained since "
                             "`serq adapt` exists record them); use 'robust'")
        mean, scale, mix = mixture_moments(X, stats)
        return mean, scale, {label: round(float(p), 4) for label, p in zip(stats.labels, mix)}
    if method == "robust":
        return (*robust_moments(X), None)
    if method == "plain":
        return (*plain_moments(X), None)
    raise ValueError(f"unknown adaptation method {method!r}")


def adapted_pipeline(pipeline, mean: np.ndarray, scale: np.ndarray):
    """A copy of ``pipeline`` whose scaler standardises by ``mean`` and ``scale`` (same MLP, same classes).

    A feature whose domain spread is (nearly) zero keeps the source's scale, so it is
    never divided by zero.
    """
    out = copy.deepcopy(pipeline)
    scaler = out.named_steps["scale"]
    scale = np.where(scale > MIN_SPREAD, scale, scaler.scale_)
    scaler.mean_ = np.asarray(mean, np.float64)
    scaler.scale_ = np.asarray(scale, np.float64)
    scaler.var_ = scaler.scale_**2
    return out


def choose_method(requested: str, stats: ClassStatistics | None = None) -> str:
    """``auto``: ``reweighted``, for every plain model (it needs only the model; ``stats`` are not needed)."""
    return "reweighted" if requested == "auto" else requested


# ---------------------------------------------------------------- the job


def unlabelled_clips(folder: Path) -> list[Clip]:
    """Every audio file under ``folder`` as a :class:`Clip` without label or speaker (names are never read)."""
    return [Clip(path, "", "", "unlabelled") for path in audio_files(folder)]


def total_duration(paths: list[Path]) -> float:
    """Seconds of audio in ``paths`` from their headers (0 for a header that does not say)."""
    seconds = 0.0
    for path in paths:
        try:
            seconds += float(sf.info(str(path)).duration)
        except (sf.LibsndfileError, RuntimeError, OSError):  # MP3 on an old libsndfile: count it as 0
            continue
    return seconds


def run_adaptation(request: TrainRequest, settings: Settings, report, n_jobs: int, started: float, *,
                   resolve: Callable[[str], Path], confine: Callable[[list[Clip]], None]) -> TrainResult:
    """The ``kind == "adapt"`` branch of :func:`serq.worker.training.job.run_training`.

    ``resolve`` and ``confine`` are the job's data-root checks (the folder, then each clip
    in it). Registers a new version (the source's MLP, the domain's scaler) and applies
    the activation policy: ``always`` activates, ``never`` does not, and ``if_better``
    cannot compare without labels, so it does not activate and says why.
    """
    report("scanning", 0, 1)
    folder = resolve(request.dataset)
    if not folder.is_dir():
        raise DatasetError("`serq adapt` reads a directory of audio clips, not a file")
    registry = Registry(settings.model_dir)
    source = registry.load(request.model) if request.model else registry.load_active()
    if source.meta.normalisation == "speaker":
        raise ModelError(f"model {source.version} is speaker-normalised: its profiles already normalise each "
                         "speaker; adapt a plain model")
    clips = unlabelled_clips(folder)
    confine(clips)
    if len(clips) < MIN_CLIPS:
        raise DatasetError(f"adaptation needs at least {MIN_CLIPS} audio clips, the folder has {len(clips)}")
    report("scanning", 1, 1)

    X, ok, errors = extract_clips(clips, settings.cache_dir, n_jobs=n_jobs, max_seconds=settings.train_max_file_seconds,
                                  max_bytes=settings.train_max_file_bytes,
                                  progress=lambda done, total: report("extracting", done, total))
    skipped = Counter({"unreadable audio": len(errors)} if errors else {})
    if len(X) < MIN_CLIPS:
        raise DatasetError(f"adaptation needs at least {MIN_CLIPS} readable clips, {len(X)} of {len(clips)} were")

    report("fitting", 0, 1)
    stats = source.meta.class_statistics
    method = choose_method(request.adaptation, stats)
    mean, scale, mix = domain_moments(X, method, stats, pipeline=source.pipeline,
                                      mix=source_mix(source.pipeline, source.meta))
    pipeline = adapted_pipeline(source.pipeline, mean, scale)
    report("fitting", 1, 1)

    report("registering", 0, 1)
    used = [c.path for c, good in zip(clips, ok) if good]
    adaptation = DomainAdaptation(source_version=source.version, method=method, clips=len(used),
                                  duration_s=round(total_duration(used), 1), skipped=dict(skipped),
                                  estimated_mix=mix)
    data = serialise(pipeline)
    digest = sha256_bytes(data)
    meta = source.meta.model_copy(update={
        "version": new_version(digest), "created": datetime.now(timezone.utc), "sha256": digest,
        "adaptation": adaptation, "metrics": None,  # the source's figures belong to the source's domain
        "notes": f"Adapted from {source.version} to unlabelled clips ({method} statistics).",
    })
    activated, reason = _decide(request.activate)
    meta = register_artifact(settings, data, meta, model_card(meta, extra=adaptation_card(adaptation, source.meta)),
                             activate=activated)  # signed like every registered model
    report("registering", 1, 1)
    summary = adaptation.model_dump(mode="json")
    return TrainResult(job_id=request.job_id, ok=True, version=meta.version, activated=activated,
                       activation_reason=reason, metrics=None, dataset=summary,
                       duration_s=time.monotonic() - started)


def _decide(policy: str) -> tuple[bool, str]:
    if policy == "always":
        return True, "activation policy 'always'"
    if policy == "never":
        return False, "activation policy 'never'"
    return False, "if_better: adaptation has no labels to compare the two models on; not activated (use 'always')"


def adaptation_card(adaptation: DomainAdaptation, source: ModelMetadata) -> str:
    """The model card's section on what the model was adapted to: counts and method, never file names."""
    lines = [
        "## Adapted to a domain (unlabelled)",
        f"Made by `serq adapt` from model `{adaptation.source_version}`: the same network, with its feature "
        f"standardisation re-estimated on {adaptation.clips} unlabelled clips ({adaptation.duration_s:.0f} s of "
        f"audio) by the `{adaptation.method}` method.",
    ]
    if adaptation.estimated_mix:
        mix = ", ".join(f"{k} {v:.2f}" for k, v in sorted(adaptation.estimated_mix.items(), key=lambda kv: -kv[1]))
        lines += ["", f"Estimated emotion mix of those clips (taken out of the statistics): {mix}."]
    if source.metrics:
        lines += ["", f"The source model's figure in its own domain: balanced accuracy "
                  f"{source.metrics.balanced_accuracy:.3f} ({source.metrics.protocol}). This one is not evaluated "
                  "(its clips have no labels): measure it on labelled clips of the new domain with `serq evaluate`."]
    return "\n".join(lines)
