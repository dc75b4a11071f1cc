"""What a clip sounds like, for people: the log spectrum, the pitch contour, the summary.

The numbers come from the engine's own analysis (:func:`serq.worker.engine.features.analyse`
and :func:`~serq.worker.engine.features.spectral_summary`, the ``spectral`` field of every
reply), so the picture and the classifier see the same thing. The terminal view is
plain text (it works in any console and in a log); ``--png`` draws a matplotlib
figure. Needs the ``worker`` extra (analysis) and, for PNG, the ``bot`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serq.cli.output import bar
from serq.settings import get_settings
from serq.worker.engine.audio import decode
from serq.worker.engine.features import HOP, SAMPLE_RATE, analyse, spectral_summary

BLOCKS = " ▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class ClipView:
    """One analysed clip.

    Attributes:
        name: the file's name.
        summary: :class:`serq.schemas.SpectralSummary` as a dict (levels dBFS, frequencies Hz).
        f0: pitch per analysis frame in Hz, 0 where unvoiced, shape ``(T,)``.
        logmel: log-mel power in dB, shape ``(T, n_mels)``.
        hop_s: seconds between frames.
    """

    name: str
    summary: dict
    f0: np.ndarray
    logmel: np.ndarray
    hop_s: float

    @property
    def times(self) -> np.ndarray:
        """Frame times in seconds from the first frame with speech energy (leading silence is trimmed)."""
        return np.arange(len(self.f0)) * self.hop_s


def analyse_file(path: str | Path, settings=None) -> ClipView:
    """Decode and analyse ``path`` exactly as the worker does (same limits, same features)."""
    settings = settings or get_settings()
    audio = decode(Path(path), max_bytes=settings.max_bytes, max_seconds=settings.max_seconds)
    analysis = analyse(audio.samples, audio.sample_rate)
    return ClipView(
        name=Path(path).name,
        summary=spectral_summary(analysis, audio.original_rate),
        f0=np.asarray(analysis.frame["f0"], dtype=float),
        logmel=np.asarray(analysis.logmel_dbfs, dtype=float),
        hop_s=HOP / SAMPLE_RATE,
    )


def _hz(value: float) -> str:
    return f"{value / 1000:.1f} kHz" if value >= 1000 else f"{value:.0f} Hz"


def render_spectrum(summary: dict, rows: int = 16, width: int = 40) -> str:
    """The mean log spectrum as horizontal bars, low frequencies at the bottom.

    ``rows`` groups of neighbouring mel bands (power-averaged); bar length spans the
    quietest to the loudest group.
    """
    freqs = np.asarray(summary["spectrum"]["freqs_hz"], dtype=float)
    db = np.asarray(summary["spectrum"]["db"], dtype=float)
    groups = np.array_split(np.arange(len(db)), min(rows, len(db)))
    level = np.array([10 * np.log10(np.mean(10 ** (db[g] / 10))) for g in groups])
    centre = np.array([freqs[g].mean() for g in groups])
    lo, hi = float(level.min()), float(level.max())
    span = max(hi - lo, 1e-9)
    lines = [f"log spectrum (mean power of active frames, dB; {lo:.0f} .. {hi:.0f} dB)"]
    for c, v in zip(centre[::-1], level[::-1]):
        lines.append(f"  {_hz(c):>8} {bar((v - lo) / span, width)} {v:6.1f} dB")
    return "\n".join(lines)


def render_pitch(f0: np.ndarray, hop_s: float, width: int = 60, height: int = 8) -> str:
    """The pitch contour as a dot plot: ``width`` time columns, ``height`` rows of Hz.

    Every voiced frame is drawn (a column marks each row its frames fall in), and the axis spans
    the lowest to the highest voiced frame: the summary's ``pitch range``, the same frames.
    """
    f0 = np.asarray(f0, dtype=float)
    voiced = f0 > 0
    if not voiced.any():
        return "pitch contour: no voiced frames"
    cols = np.array_split(np.arange(len(f0)), min(width, len(f0)))
    lo, hi = float(f0[voiced].min()), float(f0[voiced].max())
    span = max(hi - lo, 1.0)
    rows_of = [set(np.round((f0[c][voiced[c]] - lo) / span * (height - 1)).astype(int).tolist()) for c in cols]
    lines = [f"pitch contour (Hz over {len(f0) * hop_s:.2f} s of speech; blank = unvoiced)"]
    for r in range(height - 1, -1, -1):
        label = f"{lo + span * r / max(height - 1, 1):6.0f}" if r in (0, height - 1, (height - 1) // 2) else " " * 6
        lines.append(f"  {label} |" + "".join("•" if r in rows else " " for rows in rows_of))
    lines.append("         +" + "-" * len(cols))
    lines.append(f"          0 s{'':{max(len(cols) - 12, 1)}}{len(f0) * hop_s:.2f} s")
    return "\n".join(lines)


def render_table(summary: dict) -> str:
    """The spectral summary as a two-column table with units."""
    p = summary["pitch"]

    def hz(v):
        return "-" if v is None else f"{v:.1f} Hz"

    rows = [
        ("duration", f"{summary['duration_s']:.2f} s"),
        ("sample rate", f"{summary['sample_rate']} Hz"),
        ("level (RMS / peak)", f"{summary['rms_dbfs']:.1f} / {summary['peak_dbfs']:.1f} dBFS"),
        ("speech activity", f"{summary['active_fraction']:.0%} of frames"),
        ("pitch median", hz(p["median_hz"])),
        ("pitch range", "-" if p["min_hz"] is None else f"{p['min_hz']:.0f} .. {p['max_hz']:.0f} Hz (sd {p['std_hz']:.0f})"),
        ("voiced", f"{p['voiced_fraction']:.0%} of active frames"),
        ("dominant frequency", hz(summary["dominant_hz"])),
        ("spectral centroid", hz(summary["centroid_hz"])),
        ("bandwidth", hz(summary["bandwidth_hz"])),
        ("roll-off (85 %)", hz(summary["rolloff_hz"])),
        ("flatness", f"{summary['flatness']:.3f} (0 tonal .. 1 noise)"),
        ("zero-crossing rate", f"{summary['zcr']:.3f} per sample"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def render(view: ClipView, width: int = 60) -> str:
    """Everything the terminal shows for ``spectrum FILE``."""
    return "\n\n".join([
        f"{view.name}",
        render_spectrum(view.summary, width=max(10, width - 30)),
        render_pitch(view.f0, view.hop_s, width=width),
        render_table(view.summary),
    ])


def write_png(view: ClipView, out: str | Path) -> Path:
    """A figure of the clip (log-mel spectrogram, mean spectrum, pitch contour) as a PNG file."""
    import matplotlib  # lazy: a second of import for the PNG only (the bot extra)

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    s = view.summary
    freqs = np.asarray(s["spectrum"]["freqs_hz"])
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), constrained_layout=True)
    ax = axes[0]
    extent = (0, len(view.f0) * view.hop_s, 0, len(freqs))
    im = ax.imshow(view.logmel.T, origin="lower", aspect="auto", extent=extent, cmap="magma")
    ticks = np.linspace(0, len(freqs) - 1, 6).astype(int)
    ax.set_yticks(ticks + 0.5, [_hz(freqs[t]) for t in ticks])
    ax.set(title=f"{view.name}: log-mel spectrogram", xlabel="time from speech onset (s)", ylabel="frequency")
    fig.colorbar(im, ax=ax, label="dB")
    ax = axes[1]
    ax.semilogx(freqs, s["spectrum"]["db"], color="tab:blue")
    ax.axvline(s["dominant_hz"], color="tab:red", ls="--", label=f"dominant {_hz(s['dominant_hz'])}")
    ax.axvline(s["centroid_hz"], color="tab:green", ls=":", label=f"centroid {_hz(s['centroid_hz'])}")
    ax.set(title="mean power spectrum of active frames", xlabel="frequency (Hz)", ylabel="dB")
    ax.legend(loc="upper right")
    ax = axes[2]
    f0 = np.where(view.f0 > 0, view.f0, np.nan)
    ax.plot(view.times, f0, ".", ms=3, color="tab:purple")
    median = s["pitch"]["median_hz"]
    if median:
        ax.axhline(median, color="grey", ls="--", label=f"median {median:.0f} Hz")
        ax.legend(loc="upper right")
    ax.set(title="pitch contour (voiced frames)", xlabel="time from speech onset (s)", ylabel="f0 (Hz)")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
