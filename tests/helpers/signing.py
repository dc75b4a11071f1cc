"""Signing as the test session does: its key is SERQ_SIGNING_KEY and the only one trusted (tests/conftest.py)."""

from __future__ import annotations

import os

from serq.models.signing import Signer, Trust, sign_event
from serq.settings import Settings


def signed(event, when=None):
    """``event`` (a ModelActivated) signed with the session's test key (SERQ_SIGNING_KEY), now or at ``when``."""
    return sign_event(event, Signer.load(os.environ["SERQ_SIGNING_KEY"]), when)


def trust() -> Trust:
    """The workers' view: the keys of SERQ_TRUSTED_KEYS (the test key)."""
    return Trust.from_settings(Settings())
