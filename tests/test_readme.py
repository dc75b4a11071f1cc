"""The README's examples, and docs/client.md's asyncio one, run as they stand."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_block_after(heading: str, doc: str = "README.md") -> str:
    """The first ```python block under ``heading`` in ``doc`` (a path from the repository's root)."""
    text = (REPO / doc).read_text()
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


@pytest.mark.broker
def test_the_async_client_example_of_docs_client_md_runs(start_worker, amqp_url, prefix):
    pytest.importorskip("aio_pika", reason="AsyncClient needs the async extra: pip install 'serq[async]'")
    start_worker()
    code = python_block_after("## AsyncClient for asyncio programs", "docs/client.md")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and lines[0].startswith("angry ") and "%" in lines[0], done.stdout
    assert lines[1] == "samples/angry-03-01-05-02-02-01-16.flac angry", lines
    assert lines[2].startswith("samples/calm-03-01-02-02-02-01-19.flac "), lines
