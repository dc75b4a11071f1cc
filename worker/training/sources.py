"""Training on several labelled sources (`serq train --data A --data B:5 ...`).

Each source is a directory or CSV manifest with a weight: every clip of a source of
weight ``w`` counts ``w`` times in the training loss (MLP sample weights), so a user's
40 clips are not drowned by RAVDESS's 1440. Cross-validation stays speaker-grouped over
the union of every source's speakers (a user's own speakers are grouped too), and the
report gives the same out-of-fold predictions per source: for the user's source, the
figure that matters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serq.errors import DatasetError
from serq.schemas import DataSource
from serq.worker.training.datasets import Clip, Dataset


def source_names(sources: list[DataSource]) -> list[str]:
    """A short, unique name per source for reports: the folder or file name (``#2`` appended on a clash)."""
    names: list[str] = []
    for source in sources:
        base = Path(source.dataset.rstrip("/")).name or source.dataset
        name, n = base, 2
        while name in names:
            name, n = f"{base}#{n}", n + 1
        names.append(name)
    return names


@dataclass(frozen=True)
class Sources:
    """The union of the sources' clips, and which source each came from (the first one that lists it)."""

    dataset: Dataset
    names: list[str]
    weights: list[float]
    source_of: dict[Clip, int]

    def rows(self, clips: list[Clip]) -> tuple[np.ndarray, np.ndarray]:
        """``(source name per clip, weight per clip)`` for ``clips`` (e.g. those that extracted)."""
        index = [self.source_of[c] for c in clips]
        return np.array([self.names[i] for i in index]), np.array([self.weights[i] for i in index], np.float64)

    def summary(self, clips: list[Clip]) -> list[dict]:
        """Per source: its name, weight, clips used and speakers (``TrainResult.dataset["sources"]``)."""
        names, _ = self.rows(clips)
        speakers = [c.speaker for c in clips]
        out = []
        for i, name in enumerate(self.names):
            mine = names == name
            out.append({"name": name, "weight": self.weights[i], "clips": int(mine.sum()),
                        "speakers": len({s for s, m in zip(speakers, mine) if m})})
        return out


def scan_sources(sources: list[DataSource], open_source, select) -> Sources:
    """Scan each source: ``open_source(dataset) -> Dataset`` (the data-root check and the scan),
    ``select(Dataset) -> Dataset`` (emotions, speakers, confinement). A source left with no clip is an
    error naming it."""
    clips: list[Clip] = []
    skipped: Counter = Counter()
    source_of: dict[Clip, int] = {}
    names = source_names(sources)
    for i, source in enumerate(sources):
        dataset = select(open_source(source.dataset))
        if not dataset.clips:
            raise DatasetError(f"source {names[i]!r} ({source.dataset}) has no usable clip")
        skipped.update(dataset.skipped)
        for clip in dataset.clips:
            if clip in source_of:
                skipped["listed by an earlier source"] += 1
                continue
            source_of[clip] = i
            clips.append(clip)
    return Sources(Dataset(clips, skipped), names, [s.weight for s in sources], source_of)
