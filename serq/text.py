"""Wording shared by every layer's messages to people."""

from __future__ import annotations

from collections.abc import Mapping


def counts(tally: Mapping[str, int], empty: str = "none") -> str:
    """``{"emotion not selected": 640, "unreadable audio": 2}`` -> ``"640 emotion not selected, 2 unreadable audio"``.

    Largest first; ``empty`` when there is nothing to count. For people, never a Python dict.
    """
    items = sorted(((n, why) for why, n in tally.items() if n), key=lambda item: (-item[0], item[1]))
    return ", ".join(f"{n} {why}" for n, why in items) or empty
