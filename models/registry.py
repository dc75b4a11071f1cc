"""The model registry: versioned artifacts, metadata, model cards, an active pointer.

Layout under ``SERQ_MODEL_DIR``::

    versions/<version>/model.skops    the artifact (skops: no arbitrary pickle)
    versions/<version>/model.json     ModelMetadata, with the artifact's sha256
    versions/<version>/MODEL_CARD.md  what it is, how it was measured, its licence
    ACTIVE                            the active version (replaced atomically)
    history.json                      activations, newest last (for rollback)

The default model ships in this package (``serq/models/default``) and serves
whenever the registry has no active version. Loading always verifies the sha256,
the feature version and the set of types inside the artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from serq.errors import ModelError
from serq.schemas import ModelMetadata
from serq.worker.engine.model import LoadedModel

logger = logging.getLogger("serq.profiles")  # the speaker-model messages below

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_SPEAKER_DIR = DEFAULT_DIR.parent / "default_speaker"  # beside the shipped plain model
#: The speaker-normalised model the profile path serves (a pointer like ACTIVE).
SPEAKER_POINTER = "SPEAKER_ACTIVE"
ARTIFACT = "model.skops"
METADATA = "model.json"
CARD = "MODEL_CARD.md"

#: Types allowed inside an artifact beyond what skops trusts by default (sklearn
#: estimators, numpy). Anything else in a file is refused before it is loaded. None:
#: :func:`serialise` drops the one extra an MLP holds (its optimiser state).
TRUSTED_TYPES: frozenset[str] = frozenset()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def feature_names_sha256(names) -> str:
    return sha256_bytes("\n".join(names).encode())


def load_artifact(data: bytes, meta: ModelMetadata) -> LoadedModel:
    """Verify ``data`` against ``meta`` and the running feature layout, then deserialise it.

    Raises :class:`ModelError` for a checksum mismatch, another feature version or
    layout, an unexpected type inside the file, or a file that does not load.
    """
    from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION

    digest = sha256_bytes(data)
    if digest != meta.sha256:
        raise ModelError(f"model {meta.version}: checksum mismatch (artifact {digest[:12]}, expected {meta.sha256[:12]})")
    if meta.feature_version != FEATURE_VERSION or meta.feature_names_sha256 != feature_names_sha256(FEATURE_NAMES):
        raise ModelError(
            f"model {meta.version} was trained on features {meta.feature_version}; this serq computes {FEATURE_VERSION}"
        )
    import skops.io as sio

    try:
        untrusted = set(sio.get_untrusted_types(data=data))
    except Exception as exc:  # skops raises assorted errors on a damaged zip
        raise ModelError(f"model {meta.version}: artifact is not a readable skops file ({exc.__class__.__name__}: {exc})") from None
    unexpected = untrusted - TRUSTED_TYPES
    if unexpected:
        raise ModelError(f"model {meta.version}: artifact contains unexpected types {sorted(unexpected)}; refused")
    try:
        pipeline = sio.loads(data, trusted=sorted(untrusted))
    except Exception as exc:
        raise ModelError(f"model {meta.version}: artifact does not load ({exc.__class__.__name__}: {exc})") from None
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    if sorted(classes) != sorted(meta.labels):
        raise ModelError(f"model {meta.version}: artifact classes {classes} differ from its metadata {meta.labels}")
    return LoadedModel(meta=meta, pipeline=pipeline)


def read_metadata(folder: Path) -> ModelMetadata:
    try:
        return ModelMetadata.model_validate_json((folder / METADATA).read_bytes())
    except FileNotFoundError:
        raise ModelError(f"no model metadata at {folder / METADATA}") from None
    except ValueError as exc:
        raise ModelError(f"invalid model metadata at {folder / METADATA}: {exc}") from None


def load_folder(folder: Path) -> LoadedModel:
    meta = read_metadata(folder)
    try:
        data = (folder / meta.artifact).read_bytes()
    except OSError as exc:
        raise ModelError(f"model {meta.version}: cannot read artifact ({exc})") from None
    return load_artifact(data, meta)


def write_folder(folder: Path, data: bytes, meta: ModelMetadata, card: str) -> None:
    """Write a model folder: the artifact, its metadata and its model card."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT).write_bytes(data)
    (folder / METADATA).write_text(meta.model_dump_json(indent=2) + "\n")
    (folder / CARD).write_text(card)


def load_default() -> LoadedModel:
    """The model shipped inside the package."""
    return load_folder(DEFAULT_DIR)


def serialise(pipeline) -> bytes:
    """The skops bytes of a fitted pipeline, without the MLP's optimiser state.

    Adam's two moment arrays per weight matrix are only needed to go on training; left
    in, they triple the artifact that every ``ModelActivated`` event carries.
    """
    import copy

    import skops.io as sio

    lean = copy.deepcopy(pipeline)
    for _, step in getattr(lean, "steps", []):
        if hasattr(step, "_optimizer"):
            del step._optimizer
    return sio.dumps(lean)


def weights_digest(pipeline) -> str:
    """sha256 of a fitted pipeline's numbers (scaler statistics, MLP weights).

    A skops file is not byte-reproducible (zip timestamps), so the shipped models'
    versions are named by their weights: a rebuild from the same data, seed and
    library versions gives the same version.
    """
    scaler, mlp = pipeline.named_steps["scale"], pipeline.named_steps["mlp"]
    h = hashlib.sha256()
    for array in [scaler.mean_, scaler.scale_, *mlp.coefs_, *mlp.intercepts_]:
        h.update(array.tobytes())
    return h.hexdigest()


def new_version(artifact_sha256: str, when: datetime | None = None) -> str:
    when = when or datetime.now(timezone.utc)
    return f"{when:%Y%m%d-%H%M%S}-{artifact_sha256[:8]}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Registry:
    """Model versions under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def folder(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise ModelError(f"invalid model version {version!r}")
        folder = self.versions_dir / version
        if not (folder / METADATA).is_file():
            raise ModelError(f"no model version {version!r} in {self.root} (see `serq models list`)")
        return folder

    def list(self) -> list[ModelMetadata]:
        """Every readable version, oldest first."""
        metas = []
        if self.versions_dir.is_dir():
            for folder in self.versions_dir.iterdir():
                try:
                    metas.append(read_metadata(folder))
                except ModelError:
                    continue
        return sorted(metas, key=lambda m: (m.created, m.version))

    def metadata(self, version: str) -> ModelMetadata:
        if version == default_metadata().version:
            return default_metadata()
        return read_metadata(self.folder(version))

    def artifact_bytes(self, version: str) -> bytes:
        folder = DEFAULT_DIR if version == default_metadata().version else self.folder(version)
        return (folder / read_metadata(folder).artifact).read_bytes()

    def register(self, data: bytes, meta: ModelMetadata, card: str = "") -> ModelMetadata:
        """Store an artifact and its metadata as a new version (not activated)."""
        if sha256_bytes(data) != meta.sha256:
            raise ModelError("refusing to register an artifact whose sha256 differs from its metadata")
        folder = self.versions_dir / meta.version
        tmp = self.versions_dir / f".{meta.version}.partial"
        write_folder(tmp, data, meta, card)
        if folder.exists():  # the same artifact registered twice: keep the first
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
            return read_metadata(folder)
        os.replace(tmp, folder)  # a version appears whole or not at all
        return meta

    def active_version(self) -> str | None:
        try:
            version = (self.root / "ACTIVE").read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def history(self) -> list[str]:
        try:
            return list(json.loads((self.root / "history.json").read_text()))
        except (FileNotFoundError, ValueError):
            return []

    def activate(self, version: str) -> ModelMetadata:
        """Point ACTIVE at ``version`` (verified first), atomically; record it for rollback."""
        if self.load(version).meta.normalisation == "speaker":  # never activate what would not load
            raise ModelError(f"model {version} expects speaker profiles: serve it with `serq profiles activate`")
        _atomic_write(self.root / "ACTIVE", version.encode() + b"\n")
        history = self.history() + [version]
        _atomic_write(self.root / "history.json", json.dumps(history[-100:]).encode())
        return self.metadata(version)

    def previous_version(self) -> str:
        """The version active before the current one (what `rollback` activates)."""
        history = self.history()
        current = self.active_version()
        for version in reversed(history[:-1]):
            if version != current:
                return version
        if current is not None and current != default_metadata().version:
            return default_metadata().version
        raise ModelError("nothing to roll back to: no earlier activation in the history")

    def rollback(self) -> ModelMetadata:
        """Re-activate :meth:`previous_version`. The history is cut back to that activation,
        so a second rollback walks further back instead of returning to the version just left."""
        target = self.previous_version()
        self.load(target)  # never activate what would not load
        history = self.history()
        keep = max((i for i, v in enumerate(history[:-1]) if v == target), default=-1)
        _atomic_write(self.root / "ACTIVE", target.encode() + b"\n")
        _atomic_write(self.root / "history.json", json.dumps(history[: keep + 1]).encode())
        return self.metadata(target)

    def load(self, version: str) -> LoadedModel:
        if version == default_metadata().version:
            return load_default()
        return load_folder(self.folder(version))

    def load_active(self) -> LoadedModel:
        """The active version, else the shipped default."""
        version = self.active_version()
        return self.load(version) if version else load_default()

    def active_metadata(self) -> ModelMetadata:
        version = self.active_version()
        return self.metadata(version) if version else default_metadata()


_default_meta: ModelMetadata | None = None


def default_metadata() -> ModelMetadata:
    global _default_meta
    if _default_meta is None:
        _default_meta = read_metadata(DEFAULT_DIR)
    return _default_meta


# The speaker-normalised model of the profile path: its own pointer beside ACTIVE.

def activate_speaker(registry: Registry, version: str) -> ModelMetadata:
    """Serve ``version`` (a registered speaker-normalised model) on the profile path."""
    model = registry.load(version)  # verified before it is pointed at
    if model.meta.normalisation != "speaker" or model.meta.speaker_prior is None:
        raise ModelError(f"model {version} is not speaker-normalised; activate it with `serq models activate`")
    _atomic_write(registry.root / SPEAKER_POINTER, version.encode() + b"\n")
    return model.meta


def speaker_version(registry: Registry) -> str | None:
    try:
        return (registry.root / SPEAKER_POINTER).read_text().strip() or None
    except FileNotFoundError:
        return None


def current_speaker_metadata(registry: Registry) -> ModelMetadata | None:
    version = speaker_version(registry)
    if version:
        return registry.metadata(version)
    try:
        return read_metadata(DEFAULT_SPEAKER_DIR)
    except ModelError:
        return None


_loaded: dict[tuple[str, str | None], LoadedModel | None] = {}


def load_speaker_model(model_dir: str | Path) -> LoadedModel | None:
    """The speaker model a worker serves: SPEAKER_ACTIVE's version, else the shipped one; ``None`` if unusable.

    Unusable (e.g. the shipped model predates the running feature version) means
    every request falls back to the plain model, with ``profile_status``
    ``no_speaker_model``; it is logged once, never fatal. Cached per version.
    """
    registry = Registry(model_dir)
    version = speaker_version(registry)
    key = (str(model_dir), version)
    if key not in _loaded:
        try:
            _loaded[key] = registry.load(version) if version else load_folder(DEFAULT_SPEAKER_DIR)
        except ModelError as exc:
            logger.warning("no speaker-normalised model (profiles fall back to the plain model): %s", exc)
            _loaded[key] = None
    return _loaded[key]


def forget_speaker_models() -> None:
    """Drop the cached speaker models (after a rebuild wrote a new one in place)."""
    _loaded.clear()
