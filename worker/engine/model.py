"""The in-memory model the engine computes with: a fitted pipeline and its metadata.

Loading, verifying and registering models is the registry's job (:mod:`serq.models.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass

from serq.schemas import ModelMetadata


@dataclass(frozen=True)
class LoadedModel:
    """A verified, deserialised model and its metadata."""

    meta: ModelMetadata
    pipeline: object  # a fitted sklearn Pipeline

    @property
    def version(self) -> str:
        return self.meta.version
