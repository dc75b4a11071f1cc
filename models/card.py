"""Model cards: what a model is, how it was measured, and its data licence."""

from __future__ import annotations

from serq.schemas import ConditionsReport, EvaluationReport, ModelMetadata

RAVDESS_ATTRIBUTION = (
    "Trained on RAVDESS speech: Livingstone, S. R., & Russo, F. A. (2018). The Ryerson Audio-Visual "
    "Database of Emotional Speech and Song (RAVDESS). PLoS ONE 13(5): e0196391. "
    "https://doi.org/10.1371/journal.pone.0196391. Data licence CC BY-NC-SA 4.0: non-commercial use only; "
    "derivatives, including this model, carry the same licence."
)


RAVDESS_CONTEXT = (
    "Where this stands on RAVDESS speech, 8 classes, speakers never heard in training (chance 12.5 %): "
    "the recipe serq started from (an MLP on time-averaged MFCC, chroma and mel, 180 values) reaches "
    "about 34-39 % (it showed about 50 % on a random split over clips, which lets every speaker into "
    "training and test); statistics over active frames from one STFT with this MLP, and speed "
    "perturbation, bring it to the figures above, still short of the 60 % the project aims for; "
    "published speaker-independent results reach about 72-75 % unweighted recall with large "
    "self-supervised models. A speaker profile (a few enrolment clips, `serq profiles`) adds several points."
)


CONDITIONS_NOTE = (
    "The same test clips of speakers never heard in training, recorded differently: gain:-18 turned down "
    "18 dB, peak normalised to -1 dBFS, phone an 8 kHz 300-3400 Hz mu-law line, noise:N white noise N dB "
    "below the speech, reverb:T a simulated room with that RT60 (not one of the training rooms), mp3:K an "
    "MP3 round trip at K kbit/s. Agreement is the share of clips given the label they got clean. The features "
    "are level-free by construction (the waveform is scaled to one speech level first), so gain and peak "
    "normalisation cannot change a label."
)


def metrics_table(report: EvaluationReport) -> str:
    lines = [f"Protocol: **{report.protocol}** ({'speaker-independent' if report.speaker_independent else 'speaker-DEPENDENT: flatters the model'}), {report.n} clips.", ""]
    lines += ["| metric | pooled | mean ± std over folds |", "|---|---:|---:|"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        fold = report.folds.get(key) if report.folds else None
        spread = f"{fold.mean:.3f} ± {fold.std:.3f}" if fold else "–"
        lines.append(f"| {key} | {getattr(report, key):.3f} | {spread} |")
    lines += ["", "| class | recall | precision | f1 | clips |", "|---|---:|---:|---:|---:|"]
    for label, row in report.per_class.items():
        lines.append(f"| {label} | {row['recall']:.3f} | {row['precision']:.3f} | {row['f1']:.3f} | {int(row['support'])} |")
    lines += ["", "Confusion matrix (rows true, columns predicted):", "", "| | " + " | ".join(report.labels) + " |",
              "|---|" + "---:|" * len(report.labels)]
    for label, row in zip(report.labels, report.confusion_matrix):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def conditions_table(report: ConditionsReport) -> str:
    """The figures under each recording condition as a Markdown table (the model card's, `serq evaluate`'s)."""
    restricted = any(r.present_classes for r in report.conditions)
    lines = [f"Protocol: **{report.protocol}** ({'speaker-independent' if report.speaker_independent else 'speaker-DEPENDENT'}), "
             f"{report.n} clips of {report.speakers} speakers, conditions seeded with {report.seed}.", ""]
    head = "| condition | accuracy | balanced accuracy | agreement with clean |"
    rule = "|---|---:|---:|---:|"
    if restricted:
        head += f" accuracy, {len(report.present)} classes | balanced, {len(report.present)} classes | agreement, {len(report.present)} classes |"
        rule += "---:|---:|---:|"
        lines.insert(1, f"Classes present: {', '.join(report.present)}; the last three columns restrict the choice to them.")
    lines += [head, rule]
    for row in report.conditions:
        cells = [row.all_classes] + ([row.present_classes] if restricted and row.present_classes else [])
        lines.append(f"| {row.condition} | " + " | ".join(
            f"{c.accuracy:.3f} | {c.balanced_accuracy:.3f} | {c.agreement:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def model_card(meta: ModelMetadata, extra: str = "") -> str:
    hp = meta.hyperparameters
    data = meta.training_data
    parts = [
        f"# serq model {meta.version}",
        "",
        "## What it is",
        f"A scikit-learn pipeline (StandardScaler + MLPClassifier, hidden layers {hp.hidden_layers}, "
        f"alpha {hp.alpha}, random_state {hp.random_state}"
        + (f"; trained with speed-perturbed copies at {', '.join(f'{x:g}x' for x in hp.augment_speeds)}"
           if hp.augment_speeds else "")
        + (f"; and {hp.channel_copies} channel-augmented copies of each clip (noise, phone line, codec, "
           "room, gain, pitch)" if hp.channel_copies else "")
        + f") over serq's acoustic features "
        f"`{meta.feature_version}` (statistics of MFCC, deltas, chroma, log-mel, spectral contrast, "
        "spectral shape, vocal effort and YIN pitch over the active frames of a clip, after scaling it "
        "to one speech level).",
        f"Classes: {', '.join(meta.labels)}. Created {meta.created:%Y-%m-%d %H:%M} UTC. "
        f"Artifact sha256 `{meta.sha256}`.",
        "",
        "## Training data",
        f"{data.get('clips', '?')} clips from {data.get('speakers', '?')} speakers"
        + (f" ({data.get('path')})" if data.get("path") else "") + ".",
        "",
        "## How well it works",
    ]
    parts.append(metrics_table(meta.metrics) if meta.metrics else "Not evaluated.")
    if meta.conditions:
        parts += ["", "### Under other recording conditions (`serq evaluate --conditions`)", "",
                  conditions_table(meta.conditions), "", CONDITIONS_NOTE]
    if meta.metrics and meta.metrics.speaker_independent and set(data.get("corpora", {})) == {"ravdess"}:
        parts += ["", RAVDESS_CONTEXT]
    parts += [
        "",
        "## Limits",
        "Acted English speech from studio recordings. Expect lower accuracy on spontaneous speech, other "
        "languages, telephone audio and noisy rooms; emotion labels are a coarse proxy for what a person feels. "
        "Do not use it to make decisions about people.",
    ]
    if extra:
        parts += ["", extra]
    if any(c == "ravdess" for c in data.get("corpora", {})):
        parts += ["", "## Licence and attribution", RAVDESS_ATTRIBUTION]
    return "\n".join(parts) + "\n"
