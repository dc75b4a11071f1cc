"""Audio the tests forge: WAV headers field by field (one forger for the whole suite)."""

from __future__ import annotations

import struct


def wav_header(*, rate: int, channels: int, bits: int, data_len: int, tag: int = 1, riff_len: int | None = None) -> bytes:
    """A canonical 44-byte RIFF/WAVE header with every field chosen by the caller (wrapped to 32/16 bits)."""
    block = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag & 0xFFFF, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      (rate * block) & 0xFFFFFFFF, block, bits & 0xFFFF)
    riff = (36 + data_len if riff_len is None else riff_len) & 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_len & 0xFFFFFFFF))
