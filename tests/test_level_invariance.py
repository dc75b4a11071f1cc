"""Level invariance (issue 16): the recording gain never changes a label or its probabilities.

Within -30..+10 dB of the stored level, and after peak normalisation, a clip gets
the same label from the shipped model and probabilities within 0.01, through the
whole classification path (file bytes in, result out). The clips are the repository's
samples (always present); float WAV keeps the gain the only change.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from serq.settings import Settings
from serq.worker.engine import features as F
from serq.worker.engine.audio import decode
from serq.worker.engine.inference import classify

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*.flac"))


@pytest.fixture(scope="module")
def model():
    from serq.models.registry import load_default

    return load_default()


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    assert len(SAMPLES) == 8
    return {p.name: decode(p).samples for p in SAMPLES}


def wav(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, F.SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def probs(result) -> np.ndarray:
    return np.array(list(result.probabilities.values()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([p.name for p in SAMPLES]), gain_db=st.floats(-30.0, 10.0), peak=st.booleans())
def test_gain_and_peak_normalisation_change_neither_label_nor_probabilities(model, clips, name, gain_db, peak):
    x = clips[name]
    y = x / np.abs(x).max() if peak else x * np.float32(10 ** (gain_db / 20))
    assume(np.abs(y).max() <= 1.0)  # no clipping: that is another recording, not another gain
    settings_ = Settings()
    before, after = classify(wav(x), model, settings_), classify(wav(y), model, settings_)
    assume(not after.silent)  # speech still above the silence floor
    assert after.label == before.label
    assert np.abs(probs(after) - probs(before)).max() < 0.01
    # The summary a person reads still tells the level apart.
    assert after.spectral.rms_dbfs == pytest.approx(before.spectral.rms_dbfs + 20 * np.log10(np.abs(y).max()
                                                                                            / np.abs(x).max()), abs=0.05)


def test_the_whole_range_is_reachable_and_quiet_speech_is_not_silent(clips):
    """-30 dB is inside the property for every sample (so `assume` does not hollow it out)."""
    for name, x in clips.items():
        analysis = F.analyse(x * np.float32(10 ** (-30 / 20)))
        assert not analysis.silent, name


def test_feature_vectors_are_level_free(clips):
    """The model's input itself, not only its argmax: every entry within float32 rounding."""
    x = clips[SAMPLES[0].name]
    ref = F.extract(x)
    for gain_db in (-30.0, -18.0, -6.0, 6.0):
        vec = F.extract(x * np.float32(10 ** (gain_db / 20)))
        np.testing.assert_allclose(vec, ref, rtol=1e-3, atol=1e-3)


def test_the_property_can_fail(model, clips):
    """The level cue the old features had would be caught: a vector that moves with the gain changes labels."""
    x = clips[SAMPLES[0].name]
    vec = F.extract(x)
    rms = [i for i, n in enumerate(F.FEATURE_NAMES) if n.startswith(("rms_db", "logmel", "mfcc_00"))]
    moved = vec.copy()
    moved[rms] -= 18.0  # what turning down 18 dB did to the old, level-bound features
    from serq.worker.engine.inference import probabilities

    p0, p1 = probabilities(model, vec)[0], probabilities(model, moved)[0]
    assert np.abs(p1 - p0).max() > 0.01


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from([p.name for p in SAMPLES]), gain_db=st.floats(-30.0, 10.0))
def test_the_speech_level_the_profile_path_reads_moves_exactly_with_the_gain(clips, name, gain_db):
    """The one level serq keeps (for the speaker profile path, relative to the speaker's own level):
    a gain of g dB moves it by g dB, and training's shortcut computes the same number as serving."""
    x = clips[name]
    y = x * np.float32(10 ** (gain_db / 20))
    assume(np.abs(y).max() <= 1.0)
    a, b = F.analyse(x), F.analyse(y)
    assume(not b.silent)
    assert F.speech_level(b) - F.speech_level(a) == pytest.approx(gain_db, abs=1e-3)
    assert F.waveform_speech_level(y) == pytest.approx(F.speech_level(b), abs=1e-6)
    np.testing.assert_allclose(F.feature_vector(b), F.feature_vector(a), rtol=1e-3, atol=1e-3)  # features: none


def test_a_silent_clip_has_no_speech_level():
    quiet = np.zeros(F.SAMPLE_RATE, np.float32)
    assert F.speech_level(F.analyse(quiet)) is None and F.waveform_speech_level(quiet) is None
