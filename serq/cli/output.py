"""Small helpers every command shares for printing results."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from serq.files import audio_files
from serq.labels import in_canonical_order
from serq.text import counts

if TYPE_CHECKING:
    from serq.schemas import EvaluationReport, TrainResult


def expand_paths(items: Iterable[str]) -> Iterator[Path]:
    """Files as given, and the audio files inside directories (recursively, sorted)."""
    for item in items:
        path = Path(item)
        if path.is_dir():
            yield from audio_files(path)
        else:
            yield path


def dump_json(obj) -> str:
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(exclude_none=False)
    return json.dumps(obj, default=str)


def print_json(obj, stream=None) -> None:
    print(dump_json(obj), file=stream or sys.stdout, flush=True)


def bar(value: float, width: int = 30) -> str:
    full = int(round(max(0.0, min(1.0, value)) * width))
    return "█" * full + "·" * (width - full)


def format_result(result: dict) -> str:
    """A classified clip for people: label, confidence, a bar per emotion, pitch."""
    name = result.get("file") or result.get("request_id") or "clip"
    if "error" in result:
        err = result["error"]
        return f"{name}: ERROR [{err['code']}] {err['message']}"
    spectral = result.get("spectral") or {}
    pitch = (spectral.get("pitch") or {}).get("median_hz")
    head = f"{name}: " + ("(silent: no emotion claimed)" if result.get("silent") else
                          f"{result['label']} ({result['confidence']:.0%})")
    head += f"  model {result.get('model_version')}"
    if pitch:
        head += f"  pitch {pitch:.0f} Hz"
    probs = result.get("probabilities") or {}
    order = in_canonical_order(probs)
    lines = [head] + [f"  {label:<10} {bar(probs[label], 24)} {probs[label]:6.1%}" for label in order]
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """An evaluation report: headline figures, per-class recall, confusion matrix."""
    lines = [
        f"{report['protocol']} ({'speaker-independent' if report['speaker_independent'] else 'SPEAKER-DEPENDENT: flatters the model'}), {report['n']} clips",
        f"  accuracy           {report['accuracy']:.3f}",
        f"  balanced accuracy  {report['balanced_accuracy']:.3f}  (unweighted average recall)",
        f"  macro F1           {report['macro_f1']:.3f}",
    ]
    folds = report.get("folds") or {}
    if folds:
        lines.append("  over folds: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in folds.items()))
    labels = report["labels"]
    width = max(len(x) for x in labels)
    lines.append("")
    lines.append(" " * (width + 2) + " ".join(f"{x[:5]:>5}" for x in labels) + "   recall")
    for label, row in zip(labels, report["confusion_matrix"]):
        recall = report["per_class"][label]["recall"]
        lines.append(f"  {label:<{width}} " + " ".join(f"{v:>5}" for v in row) + f"   {recall:.2f}")
    if report.get("skipped"):
        lines.append(f"  skipped: {counts(report['skipped'])}")
    return "\n".join(lines)


def format_profile_reports(reports: dict[str, "EvaluationReport"]) -> str:
    """The three figures of :func:`evaluate_profiles` for people, the comparison first."""
    spk, same = reports["speaker_profiles"], reports["plain_same_clips"]
    head = [f"speaker profiles: {spk.speaker_profiles}",
            f"  balanced accuracy  plain {same.balanced_accuracy:.3f} -> with profiles {spk.balanced_accuracy:.3f}"
            f"  (same {spk.n} clips; plain on all {reports['plain'].n} clips: {reports['plain'].balanced_accuracy:.3f})",
            f"  accuracy           plain {same.accuracy:.3f} -> with profiles {spk.accuracy:.3f}", ""]
    parts = [f"== {name} ==\n" + format_report(reports[name].model_dump())
             for name in ("plain", "plain_same_clips", "speaker_profiles")]
    return "\n".join(head) + "\n" + "\n\n".join(parts)


def answered_by(result) -> str:
    """Which path answered a request sent with a speaker profile, and why: one line, one wording for every command."""
    if result.normalisation == "speaker":
        return f"path: speaker-normalised (profile of {result.profile_clips} clips used)"
    why = {None: "no profile", "too_few_clips": f"profile of {result.profile_clips} clips is too few",
           "feature_version_mismatch": "profile is over other features: enroll again",
           "no_speaker_model": "no speaker-normalised model is served"}.get(result.profile_status, result.profile_status)
    return f"path: plain, fallback ({why})"


def too_few_clips(speaker: str, count: int, needed: int) -> str:
    """The warning after an enrolment that leaves a profile too small for the speaker-normalised model."""
    return (f"warning: {speaker}'s profile has {count} clip(s); the workers' speaker-normalised model uses a "
            f"profile from {needed} on, so until then the plain model answers: enrol {needed - count} more")


def show_train_result(result: "TrainResult", as_json: bool, command: str = "train") -> int:
    """Print a training (or `serq adapt`) job's result (JSON with ``as_json``), local or remote alike; the exit
    code: 0 if it succeeded, else 2. Several sources: the figures per source follow the pooled ones."""
    if as_json:
        print_json(result)
    elif result.ok:
        print(f"model {result.version} registered; activated: {result.activated} ({result.activation_reason})")
        if result.baseline:
            print(f"baseline (the active model's recipe on the same folds): "
                  f"balanced accuracy {result.baseline.balanced_accuracy:.3f}")
        if result.metrics is not None:
            print(format_report(result.metrics.model_dump()))
            for name, report in (result.metrics.sources or {}).items():
                print(f"\nsource {name}:\n" + format_report(report.model_dump()))
        if "method" in result.dataset:  # an adaptation: what it was adapted to
            print(f"adapted {result.dataset.get('source_version')} to {result.dataset.get('clips')} clips "
                  f"({result.dataset.get('duration_s', 0):.0f} s), method {result.dataset.get('method')}")
    else:
        print(f"serq {command}: error [{result.error.code}]: {result.error.message}", file=sys.stderr)
    return 0 if result.ok else 2
