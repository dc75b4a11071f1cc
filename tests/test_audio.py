"""Audio in: every format from bytes and from a path, resampling, mixdown, and every bad input.

Clips are written here with soundfile (libsndfile), the same library that decodes
them, so each case is a real file of that format.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from serq.errors import (
    AudioError,
    BadAudio,
    EmptyAudio,
    TooLarge,
    TooLong,
    TooShort,
    UnsupportedFormat,
)
from serq.worker.engine.audio import ANALYSIS_RATE, MIN_SAMPLES, decode

FORMATS = {  # name -> (soundfile format, subtype)
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(freq: float = 440.0, seconds: float = 1.0, rate: int = ANALYSIS_RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int = ANALYSIS_RATE, fmt: str = "wav", subtype: str | None = None) -> bytes:
    container, default_subtype = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=container, subtype=subtype or default_subtype)
    return buf.getvalue()


def dominant_hz(samples: np.ndarray, rate: int = ANALYSIS_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def can_write_mp3() -> bool:
    try:
        encode(tone(seconds=0.1), fmt="mp3")
        return True
    except (sf.LibsndfileError, ValueError, TypeError):
        return False


def format_param(name: str):
    if name == "mp3" and not can_write_mp3():
        return pytest.param(name, marks=pytest.mark.skip(reason=f"libsndfile {sf.__libsndfile_version__} cannot write MP3 (needs >= 1.1 with LAME)"))
    return name


ALL_FORMATS = [format_param(name) for name in FORMATS]


# ---------------------------------------------------------------- good input


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_every_format_decodes_from_bytes_and_from_a_path(fmt, tmp_path):
    data = encode(tone(440.0, 1.0), fmt=fmt)
    path = tmp_path / f"clip.{fmt}"
    path.write_bytes(data)
    from_bytes, from_path = decode(data), decode(path)
    for audio in (from_bytes, from_path):
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
        assert audio.sample_rate == ANALYSIS_RATE and audio.original_rate == ANALYSIS_RATE
        assert audio.format == FORMATS[fmt][0]
        # Lossy codecs add encoder delay/padding; a second of audio stays about a second.
        assert audio.duration == pytest.approx(1.0, abs=0.1)
        assert dominant_hz(audio.samples) == pytest.approx(440.0, abs=3.0)
    np.testing.assert_array_equal(from_bytes.samples, from_path.samples)
    # The path form accepts str too.
    np.testing.assert_array_equal(decode(str(path)).samples, from_path.samples)


def test_lossless_decode_is_faithful():
    samples = tone(300.0, 0.5)
    audio = decode(encode(samples, fmt="flac"))
    np.testing.assert_allclose(audio.samples, samples, atol=1 / 2**15)


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000, 96_000])
def test_other_rates_are_resampled_to_16k(rate):
    seconds, freq = 1.5, 440.0
    audio = decode(encode(tone(freq, seconds, rate), rate, fmt="wav", subtype="FLOAT"))
    assert audio.original_rate == rate
    assert audio.sample_rate == ANALYSIS_RATE
    assert len(audio.samples) == pytest.approx(seconds * ANALYSIS_RATE, abs=2)
    assert dominant_hz(audio.samples) == pytest.approx(freq, abs=2.0)
    # A proper resampler keeps the level of an in-band tone (no droop, no aliasing blow-up).
    mid = audio.samples[ANALYSIS_RATE // 4 : -ANALYSIS_RATE // 4]
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_out_of_band_content_is_filtered_not_aliased():
    # A 10 kHz tone has no place below the 8 kHz Nyquist limit of 16 kHz audio: a proper
    # resampler removes it, a naive decimator would fold it down to 6 kHz.
    audio = decode(encode(tone(10_000.0, 1.0, 48_000), 48_000, fmt="wav", subtype="FLOAT"))
    assert np.sqrt(np.mean(audio.samples**2)) < 0.01


def test_stereo_is_mixed_down_to_mono():
    left, right = tone(440.0, 1.0, amp=0.6), tone(1000.0, 1.0, amp=0.2)
    audio = decode(encode(np.stack([left, right], axis=1), fmt="wav", subtype="FLOAT"))
    assert audio.channels == 2 and audio.samples.ndim == 1
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-6)


def test_exactly_one_window_is_enough():
    audio = decode(encode(tone(440.0, MIN_SAMPLES / ANALYSIS_RATE), fmt="wav"))
    assert len(audio.samples) == MIN_SAMPLES


# ---------------------------------------------------------------- bad input: typed errors, never a crash


@pytest.mark.parametrize("source", [b"", bytearray(), memoryview(b"")])
def test_empty_bytes(source):
    with pytest.raises(EmptyAudio) as info:
        decode(source)
    assert info.value.code == "empty"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudio):
        decode(path)


def test_header_without_samples():
    data = encode(np.zeros(0, dtype=np.float32), fmt="wav")
    assert len(data) > 0
    with pytest.raises(EmptyAudio, match="no samples"):
        decode(data)


@pytest.mark.parametrize("data", [b"not audio at all", b"\x00" * 4096, b"RIFF\x00\x00\x00\x00WAVEjunk", b"fLaC" + b"\xff" * 100])
def test_undecodable(data):
    with pytest.raises(UnsupportedFormat) as info:
        decode(data)
    assert info.value.code == "unsupported_format"
    assert "0x" not in str(info.value)  # no memory addresses from libsndfile's message


def test_truncated_files_never_crash():
    data = encode(tone(440.0, 0.5), fmt="flac")
    for cut in (4, 40, 100, len(data) // 3, len(data) // 2, len(data) - 10):
        try:
            audio = decode(data[:cut])
        except AudioError as exc:  # any typed error is fine; an untyped exception is a bug
            assert exc.code in {"empty", "unsupported_format", "bad_audio", "too_short"}
        else:
            assert np.all(np.isfinite(audio.samples))


def test_too_large_bytes_and_path(tmp_path):
    data = encode(tone(seconds=1.0), fmt="wav")
    with pytest.raises(TooLarge) as info:
        decode(data, max_bytes=len(data) - 1)
    assert info.value.code == "too_large" and "SERQ_MAX_BYTES" in str(info.value)
    path = tmp_path / "big.wav"
    path.write_bytes(data)
    with pytest.raises(TooLarge):
        decode(path, max_bytes=1000)
    assert decode(data, max_bytes=len(data)).duration == pytest.approx(1.0)


def test_too_long():
    data = encode(tone(seconds=3.0), fmt="flac")
    with pytest.raises(TooLong) as info:
        decode(data, max_seconds=2.0)
    assert info.value.code == "too_long" and "SERQ_MAX_SECONDS" in str(info.value)
    assert decode(data, max_seconds=3.5).duration == pytest.approx(3.0)
    assert decode(data, max_seconds=None).duration == pytest.approx(3.0)


def test_too_long_is_judged_by_samples_not_only_the_header():
    # An OGG stream's header carries no trustworthy length; the sample count still decides.
    data = encode(tone(seconds=3.0), fmt="ogg")
    with pytest.raises(TooLong):
        decode(data, max_seconds=1.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_samples(bad):
    samples = tone(seconds=0.5)
    samples[1000] = bad
    with pytest.raises(BadAudio) as info:
        decode(encode(samples, fmt="wav", subtype="FLOAT"))
    assert info.value.code == "bad_audio" and "NaN" in str(info.value)


def test_shorter_than_one_window():
    with pytest.raises(TooShort) as info:
        decode(encode(tone(seconds=(MIN_SAMPLES - 10) / ANALYSIS_RATE), fmt="wav"))
    assert info.value.code == "too_short" and "ms" in str(info.value)


def test_short_after_resampling_is_too_short():
    # 300 samples at 8 kHz become 600 at 16 kHz (enough); 200 become 400 (not enough).
    decode(encode(tone(seconds=300 / 8000, rate=8000), 8000, fmt="wav"))
    with pytest.raises(TooShort):
        decode(encode(tone(seconds=200 / 8000, rate=8000), 8000, fmt="wav"))


def test_missing_file_is_an_os_error_for_the_caller(tmp_path):
    # The CLI turns this into code "not_found"; decode itself does not guess.
    with pytest.raises(FileNotFoundError):
        decode(tmp_path / "nope.wav")


def test_silent_clip_is_flagged_silent_not_classified(isolated_env):
    from serq.models.registry import load_default
    from serq.settings import get_settings
    from serq.worker.engine.inference import classify

    model = load_default()
    result = classify(encode(np.zeros(ANALYSIS_RATE, dtype=np.float32), fmt="wav"), model, get_settings())
    assert result.silent is True
    assert result.label is None and result.confidence == 0.0
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert len(set(result.probabilities.values())) == 1  # no class is favoured
    assert result.spectral.pitch.median_hz is None

    loud = classify(encode(tone(220.0, 1.0), fmt="wav"), model, get_settings())
    assert loud.silent is False and loud.label in model.meta.labels and loud.confidence > 0
