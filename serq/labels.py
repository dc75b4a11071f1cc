"""The emotion vocabulary every part of serq shares."""

from __future__ import annotations

from collections.abc import Iterable

#: serq's 8 emotion names, in the order RAVDESS numbers them (01..08).
EMOTIONS: tuple[str, ...] = (
    "neutral",
    "calm",
    "happy",
    "sad",
    "angry",
    "fearful",
    "disgust",
    "surprised",
)


def parse_emotions(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Parse ``"angry,sad"`` (or a list) into a validated tuple in canonical order.

    ``None`` or an empty value means all 8 emotions. Raises :class:`ValueError`
    naming the unknown label and the valid ones.
    """
    if not text:
        return EMOTIONS
    items = text.split(",") if isinstance(text, str) else list(text)
    wanted = {item.strip().lower() for item in items if item.strip()}
    unknown = sorted(wanted - set(EMOTIONS))
    if unknown:
        raise ValueError(f"unknown emotion(s) {', '.join(unknown)}; valid: {', '.join(EMOTIONS)}")
    if len(wanted) < 2:
        raise ValueError("choose at least 2 emotions to classify between")
    return tuple(in_canonical_order(wanted))


def in_canonical_order(labels: Iterable[str]) -> list[str]:
    """``labels`` (without repeats) with serq's emotions first, in :data:`EMOTIONS` order, then any
    other label in the order given."""
    given = list(dict.fromkeys(labels))
    return [e for e in EMOTIONS if e in given] + [label for label in given if label not in EMOTIONS]
