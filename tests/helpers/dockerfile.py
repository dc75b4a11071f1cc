"""The Dockerfile as the compose and Kubernetes tests read it."""

from __future__ import annotations

from helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


def stages() -> list[list[str]]:
    """Dockerfile instructions per stage (continuation lines joined, comments dropped)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            found.append([])
        if found:
            found[-1].append(line)
    return found
