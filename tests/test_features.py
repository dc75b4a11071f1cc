"""Features: the vector's layout, determinism, and descriptors that match known signals.

Expected values come from the signals (a 220 Hz tone has f0 220 Hz), never from a
previous run, so the lead can retune features without touching these tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serq.schemas import SpectralSummary
from serq.worker.engine import features as F
from serq.worker.engine.audio import ANALYSIS_RATE, decode

SR = F.SAMPLE_RATE


def tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechlike(seed: int = 0) -> np.ndarray:
    """Half a second of silence, a 1.2 s harmonic 'vowel' with gliding pitch and noise, silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(1.2 * SR)) / SR
    f0 = 180 + 40 * t  # Hz, rising
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 8)) * np.hanning(len(t))
    voice = 0.3 * voice / np.abs(voice).max() + 0.01 * rng.standard_normal(len(t))
    pad = np.zeros(SR // 2)
    return np.concatenate([pad, voice, pad]).astype(np.float32)


def test_layout_names_are_unique_and_match_the_vector():
    assert len(F.FEATURE_NAMES) == len(set(F.FEATURE_NAMES))
    assert all(isinstance(n, str) and n for n in F.FEATURE_NAMES)
    vec = F.extract(speechlike())
    assert vec.shape == (len(F.FEATURE_NAMES),)
    assert vec.dtype == np.float32
    assert F.FEATURE_VERSION  # models store it; it must exist


@pytest.mark.parametrize("signal", [
    speechlike(), tone(220.0), np.zeros(SR, dtype=np.float32),
    np.random.default_rng(1).uniform(-1, 1, SR).astype(np.float32), np.full(SR, 0.5, dtype=np.float32),
], ids=["speechlike", "tone", "silence", "noise", "dc"])
def test_vector_is_finite_for_any_signal(signal):
    assert np.all(np.isfinite(F.extract(signal)))


def test_deterministic():
    signal = speechlike(3)
    a, b = F.extract(signal), F.extract(signal.copy())
    np.testing.assert_array_equal(a, b)
    assert F.spectral_summary(F.analyse(signal), SR) == F.spectral_summary(F.analyse(signal.copy()), SR)


def test_different_signals_give_different_vectors():
    assert not np.allclose(F.extract(speechlike(0)), F.extract(tone(220.0)))


def test_extract_is_analyse_then_feature_vector():
    signal = speechlike()
    np.testing.assert_array_equal(F.extract(signal, SR), F.feature_vector(F.analyse(signal, SR)))


def test_other_rates_are_refused_not_misread():
    with pytest.raises(ValueError, match="16000"):
        F.analyse(tone(220.0), 44_100)


@pytest.mark.parametrize("freq", [110.0, 220.0, 330.0])
def test_tone_pitch_and_dominant_frequency(freq):
    summary = F.spectral_summary(F.analyse(tone(freq, 1.0)), SR)
    pitch = summary["pitch"]
    assert pitch["median_hz"] == pytest.approx(freq, rel=0.02)
    assert pitch["mean_hz"] == pytest.approx(freq, rel=0.02)
    assert pitch["voiced_fraction"] > 0.9
    assert summary["dominant_hz"] == pytest.approx(freq, abs=5.0)


def test_220_hz_tone_in_the_feature_vector():
    # f0 statistics are stored in semitones relative to 100 Hz.
    vec = dict(zip(F.FEATURE_NAMES, F.extract(tone(220.0))))
    assert vec["f0_p50"] == pytest.approx(12 * np.log2(220 / 100), abs=0.3)
    assert vec["f0_std"] < 0.3
    assert vec["voiced_fraction"] > 0.9


def test_spectral_summary_shape_and_contract():
    summary = F.spectral_summary(F.analyse(speechlike()), 48_000)
    SpectralSummary.model_validate(summary)  # what every reply carries
    spectrum = summary["spectrum"]
    assert len(spectrum["freqs_hz"]) == len(spectrum["db"]) == F.N_SPECTRUM_BANDS == 64
    assert np.all(np.diff(spectrum["freqs_hz"]) > 0)
    assert 0 < spectrum["freqs_hz"][0] and spectrum["freqs_hz"][-1] <= SR / 2
    assert summary["sample_rate"] == 48_000  # the file's own rate is reported, not the analysis rate
    assert summary["duration_s"] == pytest.approx(2.2, abs=0.01)


def test_levels_in_dbfs():
    summary = F.spectral_summary(F.analyse(tone(440.0, amp=0.5)), SR)
    assert summary["peak_dbfs"] == pytest.approx(20 * np.log10(0.5), abs=0.1)
    assert summary["rms_dbfs"] == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)


def test_brighter_sound_has_higher_centroid():
    low, high = (F.spectral_summary(F.analyse(tone(f)), SR)["centroid_hz"] for f in (300.0, 3000.0))
    assert high > low + 1000


def test_leading_and_trailing_silence_do_not_change_the_statistics():
    voice = speechlike()[SR // 2 : -SR // 2]
    padded = np.concatenate([np.zeros(SR, np.float32), voice, np.zeros(2 * SR, np.float32)])
    a, b = dict(zip(F.FEATURE_NAMES, F.extract(voice))), dict(zip(F.FEATURE_NAMES, F.extract(padded)))
    for name in ("mfcc_00_mean", "centroid_mean", "rms_db_mean", "f0_p50"):
        assert b[name] == pytest.approx(a[name], rel=0.05, abs=0.5), name
    assert b["active_seconds"] == pytest.approx(a["active_seconds"], abs=0.05)


def test_silence_is_flagged():
    assert F.analyse(np.zeros(SR, dtype=np.float32)).silent
    assert not F.analyse(speechlike()).silent


def test_features_of_a_decoded_corpus_clip(ravdess_dir):
    from conftest import ravdess_clip

    audio = decode(ravdess_clip(actor=3, emotion=5))
    assert audio.sample_rate == ANALYSIS_RATE
    analysis = F.analyse(audio.samples, audio.sample_rate)
    vec = F.feature_vector(analysis)
    assert vec.shape == (len(F.FEATURE_NAMES),) and np.all(np.isfinite(vec))
    summary = F.spectral_summary(analysis, audio.original_rate)
    assert 60 < summary["pitch"]["median_hz"] < 600  # a human voice
    assert 0 < summary["active_fraction"] < 1  # RAVDESS clips carry leading/trailing silence


@pytest.mark.parametrize("shape", [(1,), (2,), (7,), (6, 1), (6, 2), (6, 317)])
def test_percentiles_match_numpy(shape):
    x = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    qs = (0, 10, 50, 90, 100)
    np.testing.assert_allclose(F.percentiles(x, qs), np.percentile(x, qs, axis=-1), rtol=1e-6, atol=1e-6)



def test_the_stored_filterbanks_are_librosas():
    """worker/engine/filterbanks.npz spares every process librosa's import; it must stay librosa's output
    (after a layout change: ``python -c "from serq.worker.engine.features import write_filterbanks; write_filterbanks()"``)."""
    mel, chroma, _, centres = F._filterbanks()
    reference = F.librosa_filterbanks()
    np.testing.assert_array_equal(mel, reference["mel"])
    np.testing.assert_array_equal(chroma, reference["chroma"])
    # The centres (Hz) are arithmetic on top: numpy releases may move them by an ulp.
    np.testing.assert_allclose(centres, reference["centres"], rtol=1e-12, atol=0)


SAMPLE_CLIPS = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*.flac"))


@pytest.mark.parametrize("clip", SAMPLE_CLIPS, ids=lambda p: p.name.split("-")[0])
def test_the_spectrum_and_its_dominant_frequency_agree(clip):
    # The summary's dominant frequency is the energy peak; the spectrum it ships for plotting
    # must show it at (or within a decibel of) its top, as the table and the chart sit side by side.
    from serq.cli.spectrum_view import analyse_file, render_pitch

    view = analyse_file(clip)
    s = view.summary
    freqs, db = np.array(s["spectrum"]["freqs_hz"]), np.array(s["spectrum"]["db"])
    at_dominant = db[np.argmin(np.abs(freqs - s["dominant_hz"]))]
    assert db.max() - at_dominant <= 1.0, (s["dominant_hz"], freqs[np.argmax(db)])
    # The pitch contour spans exactly the summary's pitch range, and draws both ends.
    lines = render_pitch(view.f0, view.hop_s).splitlines()[1:9]
    assert lines[0].split("|")[0].strip() == f"{s['pitch']['max_hz']:.0f}" and "•" in lines[0]
    assert lines[-1].split("|")[0].strip() == f"{s['pitch']['min_hz']:.0f}" and "•" in lines[-1]
