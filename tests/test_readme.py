"""The README's examples run as they stand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_block_after(heading: str) -> str:
    """The first ```python block under ``heading`` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(heading):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python example under {heading!r}"
    return match.group(1)


@pytest.mark.broker
def test_the_client_example_runs_and_reports_a_missing_file(start_worker, amqp_url, prefix):
    start_worker()
    code = python_block_after("## Client library for an assistant")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith("samples/angry") and "%" in lines[0]
    assert lines[2].startswith("no-such-call.wav error not_found"), lines[2]
