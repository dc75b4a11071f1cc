"""serq.files.read_regular: the one bounded read of the registry and the trainer (regular files only, size-capped)."""

from __future__ import annotations

import os

import pytest

from serq.files import FileRefused, read_regular


def reason(path, limit=10) -> FileRefused:
    with pytest.raises(FileRefused) as err:
        read_regular(path, limit)
    return err.value


def test_a_regular_file_within_the_limit_is_read_whole(tmp_path):
    (tmp_path / "a").write_bytes(b"0123456789")
    assert read_regular(tmp_path / "a", 10) == b"0123456789"


def test_what_is_not_read_says_why(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 11)
    big = reason(tmp_path / "big")
    assert (big.reason, big.size) == ("too large", 11)
    missing = reason(tmp_path / "nope")
    assert missing.reason == "missing" and missing.detail
    assert reason(tmp_path).reason == "not regular"  # a directory
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert reason(fifo).reason == "not regular"  # returns at once: no writer is waited for
    (tmp_path / "link").symlink_to(fifo)
    assert reason(tmp_path / "link").reason == "not regular"
