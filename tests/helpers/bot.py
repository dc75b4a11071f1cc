"""Driving the console bot: as a subprocess in script mode, or in-process with captured output."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from serq.cli.bot import Bot

from helpers import REPO

SAMPLES = REPO / "samples"


def sample(emotion: str) -> Path:
    (path,) = SAMPLES.glob(f"{emotion}-*.flac")
    return path


def run_bot(commands: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`serq bot ARGS` as a subprocess, commands on stdin (not a TTY: script mode)."""
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "serq", "bot", *args], input=commands, env=full,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def bot(paths=(SAMPLES,), **kw):
    out = io.StringIO()
    return Bot(paths, stdin=io.StringIO(), stdout=out, interactive=False, **kw), out
