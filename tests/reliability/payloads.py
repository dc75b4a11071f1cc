"""The hostile corpus: malformed classify requests, each with the outcomes the contract allows.

Everything is generated here (seeded), nothing is shipped: random bytes, truncated and
forged WAV/FLAC/OGG, headers declaring gigantic lengths, rates or channel counts,
NaN/inf samples, zero length, one sample, 8 kHz/96 kHz, 8 channels, a ten-minute clip, a
decompression bomb, wrong content types and headers. ``expect`` is the set of acceptable
outcomes: error codes and/or ``"result"``; ``TYPED`` accepts any typed outcome but ``internal``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf

from helpers.audio import wav_header

#: Any typed outcome: a result or an error code other than ``internal``.
TYPED = frozenset({"*"})
AUDIO = {"content_type": "audio/wav"}


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    expect: frozenset
    props: dict = field(default_factory=lambda: dict(AUDIO))
    words: str = ""  # expected in the error message, when it matters which check refused it


def encode(x: np.ndarray, rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def tone(seconds: float, rate: int = 16_000, channels: int = 1, level: float = 0.3) -> np.ndarray:
    """A voiced-like test signal: 180 Hz with a 4 Hz tremolo, ``(n,)`` or ``(n, channels)`` float32."""
    t = np.arange(int(seconds * rate)) / rate
    x = (level * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    return x if channels == 1 else np.repeat(x[:, None], channels, axis=1)


def float_wav(values: np.ndarray) -> bytes:
    """A 32-bit float WAV written byte by byte (soundfile would refuse to write NaN it never sees)."""
    data = values.astype("<f4").tobytes()
    return wav_header(rate=16_000, channels=1, bits=32, tag=3, data_len=len(data)) + data


def with_total_samples(flac: bytes, total: int) -> bytes:
    """``flac`` with STREAMINFO's total-samples field (36 bits; 0 = "unknown") set to ``total``: a lying header."""
    data = bytearray(flac)
    # STREAMINFO follows "fLaC" and a 4-byte block header; total samples = low nibble of byte 21 + bytes 22..25.
    data[21] = (data[21] & 0xF0) | ((total >> 32) & 0x0F)
    data[22:26] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def ten_minute_flac(unknown_length: bool = False, *, rate: int = 16_000, channels: int = 1) -> bytes:
    """600 s of near-silence with a tone burst every 10 s, as a small FLAC (a few hundred KB).

    ``unknown_length``: the header says the length is unknown, so only reading can tell.
    ``rate``, ``channels``: 48 kHz stereo makes it decode-heavy (about 0.75 s on one core) at 620 kB.
    """
    x = np.zeros((600 * rate, channels), dtype=np.float32)
    burst = tone(0.5, rate)
    for start in range(0, 600 * rate, 10 * rate):
        x[start:start + len(burst)] = burst[:, None]
    data = encode(x if channels > 1 else x[:, 0], rate, "FLAC")
    return with_total_samples(data, 0) if unknown_length else data


def flac_bomb() -> bytes:
    """8 channels at 384 kHz for 50 s of near-silence: a small FLAC that decodes to ~600 MB of float32."""
    rate, channels = 384_000, 8
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate, channels, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros((rate, channels), np.float32)
        block[:, 0] = tone(1.0, rate, level=0.01)
        for _ in range(50):
            f.write(block)
    return buf.getvalue()


def corpus(max_bytes: int) -> list[Case]:
    """At least 50 hostile requests (see the module docstring); ``max_bytes`` is the worker's SERQ_MAX_BYTES."""
    rng = np.random.default_rng(20240607)
    good = encode(tone(1.0), 16_000)
    flac, ogg = encode(tone(1.0), 16_000, "FLAC"), encode(tone(1.0), 16_000, "OGG", "VORBIS")
    cases: list[Case] = []
    add = lambda name, body, expect, words="", **props: cases.append(  # noqa: E731
        Case(name, body, frozenset(expect), {**AUDIO, **props}, words))

    # Random bytes of every size, and bytes that start like each container.
    for n in (1, 2, 3, 44, 100, 1000, 10_000, 100_000):
        add(f"random {n} B", rng.bytes(n), TYPED)
    for magic in (b"RIFF", b"fLaC", b"OggS", b"ID3\x03\x00", b"\xff\xfb\x90\x00"):
        add(f"{magic[:4]!r} + random", magic + rng.bytes(4000), TYPED)
    add("zero length", b"", {"empty"})
    add("one byte", b"\0", {"unsupported_format"})

    # Truncated real files: inside the header, just after it, in the middle of the data.
    for cut in (4, 12, 20, 36, 43, 44, 46):
        add(f"WAV cut at {cut} B", good[:cut], {"unsupported_format", "bad_audio", "empty", "too_short"})
    add("WAV cut in the middle", good[: len(good) // 2], {"result"})  # half a second of valid audio
    for cut in (4, 8, 42, 100):
        add(f"FLAC cut at {cut} B", flac[:cut], {"unsupported_format", "bad_audio", "empty", "too_short"})
    add("FLAC cut in the middle", flac[: len(flac) // 2], TYPED)
    for cut in (4, 27, 58, 200):
        add(f"OGG cut at {cut} B", ogg[:cut], {"unsupported_format", "bad_audio", "empty", "too_short"})
    add("OGG cut in the middle", ogg[: len(ogg) // 2], TYPED)
    flipped = bytearray(flac)
    flipped[200:260] = rng.bytes(60)
    add("FLAC with corrupted frames", bytes(flipped), TYPED)

    # Forged WAV headers: gigantic lengths, rates, channel counts, bit depths, format tags.
    pcm = (tone(1.0) * 32767).astype("<i2").tobytes()
    forged = {
        "data length 4 GiB": (dict(rate=16_000, channels=1, bits=16, data_len=0xFFFFFFF0), {"too_long", "result"}),
        "RIFF length 0": (dict(rate=16_000, channels=1, bits=16, data_len=len(pcm), riff_len=0), {"result"}),
        "RIFF length 4 GiB": (dict(rate=16_000, channels=1, bits=16, data_len=len(pcm), riff_len=0xFFFFFFFF),
                              {"result"}),
        "65535 channels": (dict(rate=16_000, channels=65_535, bits=16, data_len=len(pcm)),
                           {"unsupported_format", "bad_audio"}),
        "1024 channels": (dict(rate=16_000, channels=1024, bits=16, data_len=len(pcm)),
                          {"unsupported_format", "bad_audio"}),
        "0 channels": (dict(rate=16_000, channels=0, bits=16, data_len=len(pcm)), {"unsupported_format", "bad_audio"}),
        "rate 0 Hz": (dict(rate=0, channels=1, bits=16, data_len=len(pcm)), {"unsupported_format", "bad_audio"}),
        "rate 1 Hz": (dict(rate=1, channels=1, bits=16, data_len=len(pcm)), {"too_long"}),
        "rate 1 GHz": (dict(rate=1_000_000_000, channels=1, bits=16, data_len=len(pcm)), {"bad_audio"}),
        "rate 4 GHz": (dict(rate=0xFFFFFFFF, channels=1, bits=16, data_len=len(pcm)), {"unsupported_format", "bad_audio"}),
        "0 bits": (dict(rate=16_000, channels=1, bits=0, data_len=len(pcm)), {"unsupported_format", "bad_audio"}),
        "7 bits": (dict(rate=16_000, channels=1, bits=7, data_len=len(pcm)), TYPED),
        "format tag 0xFFFF": (dict(rate=16_000, channels=1, bits=16, data_len=len(pcm), tag=0xFFFF),
                              {"unsupported_format", "bad_audio"}),
        "extensible without its extension": (dict(rate=16_000, channels=1, bits=16, data_len=len(pcm), tag=0xFFFE),
                                             {"unsupported_format", "bad_audio"}),
    }
    for name, (fields, expect) in forged.items():
        add(f"WAV {name}", wav_header(**fields) + pcm, expect)
    add("WAV header only", wav_header(rate=16_000, channels=1, bits=16, data_len=0), {"empty"})

    # Samples that no recorder writes.
    for name, value in (("NaN", np.nan), ("+inf", np.inf), ("-inf", -np.inf)):
        x = tone(1.0)
        x[8000] = value
        add(f"float WAV with one {name}", float_wav(x), {"bad_audio"})
    add("float WAV all NaN", float_wav(np.full(16_000, np.nan)), {"bad_audio"})
    add("float WAV at 1e38", float_wav(np.full(16_000, 1e38)), {"result"})  # clipped to [-1, 1]
    stereo = np.full(16_000, 3e38, dtype="<f4").tobytes()  # 8 kHz stereo near float32's max (found by atheris)
    add("float WAV stereo at 3e38, 8 kHz", wav_header(rate=8_000, channels=2, bits=32, tag=3, data_len=len(stereo))
        + stereo, {"result"})
    add("float WAV of denormals", float_wav(np.full(16_000, 1e-40)), {"result"})

    # Valid but unusual audio: a result, or a length error.
    add("one sample", encode(tone(1.0)[:1], 16_000), {"too_short"})
    add("31 ms (one window less a sample)", encode(tone(1.0)[:511], 16_000), {"too_short"})
    add("8 kHz", encode(tone(1.0, 8_000), 8_000), {"result"})
    add("96 kHz", encode(tone(1.0, 96_000), 96_000), {"result"})
    add("8 channels", encode(tone(1.0, 16_000, 8), 16_000), {"result"})
    add("8 channels at 96 kHz", encode(tone(0.5, 96_000, 8), 96_000), {"result"})
    add("silence", encode(np.zeros(16_000, np.float32), 16_000), {"result"})
    add("ten minutes (FLAC)", ten_minute_flac(), {"too_long"}, "600.0 s exceeds")  # from the header
    add("ten minutes, length unknown", ten_minute_flac(unknown_length=True), {"too_long"}, "more than")  # by reading
    add("FLAC bomb: 8 x 384 kHz x 50 s", flac_bomb(), {"too_large"}, "decode to")  # needs max_bytes > 4.2 MB
    add("body over SERQ_MAX_BYTES", rng.bytes(max_bytes + 1), {"too_large"})

    # The envelope: content type, type, headers.
    add("content_type application/json", good, {"invalid_request"}, content_type="application/json")
    add("content_type text/plain", good, {"invalid_request"}, content_type="text/plain; charset=utf-8")
    add("content_type audio/wav with parameters", good, {"result"}, content_type="audio/wav; rate=16000")
    add("no content_type", good, {"result"}, content_type=None)
    add("unknown type", good, {"invalid_request"}, type="classify.v999")
    add("filename not a string", good, {"invalid_request"}, headers={"filename": 42})
    add("filename of 10 000 chars", good, {"invalid_request"}, headers={"filename": "x" * 10_000})
    add("filename with a path and NUL", good, {"result", "invalid_request"}, headers={"filename": "../../etc/\0passwd"})
    add("profile header not JSON", good, {"invalid_request", "result"}, headers={"x-serq-profile": "{not json"})
    add("profile header nested 60 000 deep", good, {"invalid_request", "result"},
        headers={"x-serq-profile": "[" * 60_000})
    add("enroll request of garbage", rng.bytes(500), TYPED, type="enroll")
    add("timeline chunk of 3 bytes", b"abc", TYPED, type="timeline.chunk",
        content_type="audio/x-raw;format=F32LE;rate=16000;channels=1")
    return cases

