"""Showing a timeline to people: a terminal strip chart, a segment list, a PNG.

Only the standard library here (matplotlib is imported by :func:`save_png` alone,
from the ``bot`` extra). The bot shows a timeline with one line::

    print(show_timeline("call.wav", png="call.png", client=client))   # client=None: computed locally

or renders one it already has with :func:`render_timeline` / :func:`save_png`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from serq.cli.output import bar
from serq.client.timeline import stream_timeline
from serq.labels import EMOTIONS, in_canonical_order
from serq.schemas.timeline import Timeline
from serq.settings import get_settings

if TYPE_CHECKING:
    from serq.schemas.profiles import SpeakerProfile
    from serq.settings import Settings

#: One colour per emotion, for the PNG (matplotlib's tab10, in EMOTIONS order).
COLOURS = dict(zip(EMOTIONS, ("#7f7f7f", "#17becf", "#ffbf00", "#1f77b4", "#d62728", "#9467bd", "#2ca02c", "#ff7f0e")))


def clock(seconds: float) -> str:
    """``75.25 -> "1:15.2"``; ``3725 -> "1:02:05"``."""
    if seconds >= 3600:
        h, rest = divmod(int(seconds), 3600)
        return f"{h}:{rest // 60:02d}:{rest % 60:02d}"
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


def _labels_in_order(timeline: Timeline) -> list[str]:
    return in_canonical_order(sorted({s.label for s in timeline.segments}))


def strip_chart(timeline: Timeline, width: int = 64) -> list[str]:
    """One row per emotion present, one column per ``duration / width`` seconds.

    A cell is ``█`` where that emotion holds most of the column's speech, ``░``
    where it holds some; silence stays blank.
    """
    duration = max(timeline.duration_s, 1e-9)
    step = duration / width
    labels = _labels_in_order(timeline)
    cover = {label: [0.0] * width for label in labels}
    for seg in timeline.segments:
        first, last = int(seg.start / step), min(width - 1, int(seg.end / step))
        for col in range(first, last + 1):
            lo, hi = max(seg.start, col * step), min(seg.end, (col + 1) * step)
            if hi > lo:
                cover[seg.label][col] += hi - lo
    rows = []
    name_w = max([len(x) for x in labels] + [4])
    rows.append(f"  {'':<{name_w}} {clock(0):<{width // 2}}{clock(duration):>{width - width // 2}}")
    for label in labels:
        cells = []
        for col in range(width):
            mine = cover[label][col]
            most = max(c[col] for c in cover.values())
            cells.append("█" if mine > 0 and mine >= most else "░" if mine > 0 else " ")
        rows.append(f"  {label:<{name_w}} {''.join(cells)}")
    return rows


def render_timeline(timeline: Timeline | dict, width: int = 64, max_segments: int = 40) -> str:
    """The whole picture for a terminal: header, strip chart, segments with a bar each, summary."""
    tl = timeline if isinstance(timeline, Timeline) else Timeline.model_validate(timeline)
    s = tl.summary
    name = tl.file or "recording"
    lines = [f"{name}: {clock(tl.duration_s)}, {len(tl.segments)} speech segment(s), "
             f"{clock(s.speech_s)} of speech, model {tl.model_version}"]
    if tl.profile_status is not None:  # a profile was sent: say whether it was used, as classify does
        lines.append("  speaker profile used (speaker-normalised model)" if tl.profile_status == "used"
                     else f"  speaker profile not used ({tl.profile_status}): plain model")
    if not tl.segments:
        lines.append("  (no speech found)")
        return "\n".join(lines)
    lines += strip_chart(tl, width)
    lines.append("")
    shown = tl.segments if len(tl.segments) <= max_segments else tl.segments[:max_segments]
    for seg in shown:
        span = f"{clock(seg.start)}–{clock(seg.end)}"
        lines.append(f"  {span:>17}  {seg.label:<10} {bar(seg.confidence, 20)} {seg.confidence:4.0%}")
    if len(shown) < len(tl.segments):
        lines.append(f"  ... {len(tl.segments) - len(shown)} more (use --json for all)")
    lines.append("")
    share = sorted(((v, k) for k, v in s.share_of_time.items() if v > 0), reverse=True)
    lines.append("  share of speech: " + ", ".join(f"{k} {v:.0%}" for v, k in share))
    if s.strongest:
        lines.append("  strongest: " + ", ".join(f"{clock(m.start)} {m.label} {m.confidence:.0%}" for m in s.strongest))
    return "\n".join(lines)


def save_png(timeline: Timeline | dict, path: str | Path, *, dpi: int = 120) -> Path:
    """A PNG of the timeline: a bar per segment on its emotion's row, shaded by confidence."""
    import matplotlib  # lazy: a second of import for the PNG only (the bot extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = timeline if isinstance(timeline, Timeline) else Timeline.model_validate(timeline)
    labels = _labels_in_order(tl) or ["neutral"]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) + 1.5))
    try:
        for row, label in enumerate(labels):
            for seg in (x for x in tl.segments if x.label == label):
                ax.broken_barh([(seg.start, seg.end - seg.start)], (row - 0.4, 0.8),
                               facecolors=COLOURS.get(label, "#444444"), alpha=0.35 + 0.65 * seg.confidence)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlim(0, max(tl.duration_s, 1e-3))
        ax.set_xlabel("time (s)")
        ax.set_title(f"{tl.file or 'recording'}: emotion over time (model {tl.model_version})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def show_timeline(path: str | Path, *, png: str | Path | None = None, client=None, profile=None) -> str:
    """What the bot's ``timeline FILE [--png OUT] [--speaker S]`` prints: compute the timeline and render it.

    With a :class:`serq.client.Client` the workers compute it (streamed through the
    broker); without one it is computed here with the active model (the ``worker``
    extra). ``profile``: a speaker profile applied to the whole recording. Writes the
    PNG too when ``png`` is given. Raises :class:`serq.errors.SerqError`.
    """
    if client is not None:
        timeline = stream_timeline(client, path, profile=profile)
    else:
        timeline = local_timeline(path, get_settings(), profile=profile)
    text = render_timeline(timeline)
    if png is not None:
        text += f"\n  wrote {save_png(timeline, png)}"
    return text


def local_timeline(path: str | os.PathLike, settings: "Settings", *, version: str | None = None,
                   on_segment=None, profile: "SpeakerProfile | None" = None) -> Timeline:
    """``serq timeline FILE``: the registry's active model (or ``version``) with the ``SERQ_TIMELINE_*`` settings;
    with ``profile``, the speaker-normalised model a worker would use (``SPEAKER_ACTIVE``, else the shipped one)."""
    # lazy: the engine (worker extra) only here; rendering or streaming a timeline needs neither.
    from serq.models.registry import Registry, load_speaker_model
    from serq.worker.engine.timeline import params_from_settings, timeline_file

    registry = Registry(settings.model_dir)
    model = registry.load(version) if version else registry.load_active()
    speaker_model = None
    if profile is not None:
        speaker_model = load_speaker_model(settings.model_dir)
    return timeline_file(path, model, params=params_from_settings(settings), max_seconds=settings.max_recording_seconds,
                         file=str(path), on_segment=on_segment, profile=profile, speaker_model=speaker_model)
