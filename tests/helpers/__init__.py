"""Helpers several test modules share (``from helpers.broker import Rpc``; tests/ is on ``sys.path``).

Fixtures shared between modules live in tests/conftest.py; plain functions and classes here.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
