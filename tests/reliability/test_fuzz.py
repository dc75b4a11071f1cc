"""The atheris harness runs (a short session), so `python fuzz/fuzz_decode.py` keeps working."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO


def test_the_decoder_fuzz_harness_runs(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; Linux x86_64 wheels)")
    corpus = tmp_path / "corpus"
    done = subprocess.run([sys.executable, str(REPO / "fuzz" / "fuzz_decode.py"), "-runs=3000", "-seed=1",
                           "-rss_limit_mb=2048", str(corpus)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 3000 runs" in done.stderr
    assert len(list(corpus.iterdir())) >= 5  # seeded with valid files of every container
    assert not list(tmp_path.glob("crash-*"))
