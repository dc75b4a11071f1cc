"""Coverage-guided fuzzing of the audio decoder (atheris + libFuzzer).

    python fuzz/fuzz_decode.py -max_total_time=300          # seeds in fuzz/corpus/ (created on first run)
    python fuzz/fuzz_decode.py -runs=2000 some/corpus/dir   # any libFuzzer flags and corpus directories
                                                            # (an empty or new one is seeded first)

The property is the one of ``tests/test_properties.py``: :func:`serq.worker.engine.audio.decode`
returns a usable clip or raises a :class:`serq.errors.AudioError` subclass. Anything
else (another exception, NaN samples, a clip over the limit) stops the fuzzer and
writes the input to ``crash-<sha1>`` in the working directory; replay one with
``python fuzz/fuzz_decode.py crash-<sha1>``. Needs ``pip install atheris`` (in the dev extra on Linux x86_64).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports(include=["serq", "soundfile"]):
    from serq.errors import AudioError
    from serq.worker.engine.audio import ANALYSIS_RATE, MIN_SAMPLES, decode

#: Small limits keep each run in microseconds to milliseconds; the limits themselves are tested elsewhere.
MAX_BYTES = 256 * 1024
MAX_SECONDS = 5.0
CORPUS = Path(__file__).resolve().parent / "corpus"


def test_one_input(data: bytes) -> None:
    try:
        audio = decode(data, max_bytes=MAX_BYTES, max_seconds=MAX_SECONDS)
    except AudioError:
        return
    s = audio.samples
    assert s.dtype == np.float32 and s.ndim == 1 and len(s) >= MIN_SAMPLES, (s.dtype, s.shape)
    assert np.all(np.isfinite(s)) and float(np.abs(s).max()) <= 1.0
    assert len(s) <= MAX_SECONDS * ANALYSIS_RATE + 1


def write_seeds(folder: Path) -> None:
    """Small valid files of every container the decoder reads, so the fuzzer starts past the magic bytes."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(4000) / 16_000
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for fmt, subtype, rate, channels in [("WAV", "PCM_16", 16_000, 1), ("WAV", "FLOAT", 8_000, 2),
                                         ("FLAC", "PCM_16", 16_000, 1), ("FLAC", "PCM_24", 48_000, 2),
                                         ("OGG", "VORBIS", 16_000, 1)]:
        buf = io.BytesIO()
        sf.write(buf, np.repeat(tone[:, None], channels, axis=1), rate, format=fmt, subtype=subtype)
        (folder / f"seed-{fmt.lower()}-{subtype.lower()}-{rate}-{channels}ch").write_bytes(buf.getvalue())


def main(argv: list[str]) -> None:
    paths = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not paths:  # no corpus or crash file given: the default corpus
        paths = [CORPUS]
        argv = [*argv, str(CORPUS)]
    if paths[0].is_dir() and not any(paths[0].iterdir()) or not paths[0].exists():
        write_seeds(paths[0])  # an empty or new corpus directory starts from valid files
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
