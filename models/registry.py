"""The model registry: versioned artifacts, metadata, model cards, an active pointer.

Layout under ``SERQ_MODEL_DIR``::

    versions/<version>/model.skops    the artifact (skops: no arbitrary pickle)
    versions/<version>/model.json     ModelMetadata, with the artifact's sha256
    versions/<version>/MODEL_CARD.md  what it is, how it was measured, its licence
    versions/<version>/model.sig      the Ed25519 signature of the metadata (SERQ_SIGNING_KEY)
    ACTIVE                            the active version (replaced atomically)
    SPEAKER_ACTIVE                    the profile path's version
    history.json                      activations, newest last (for rollback)
    .lock                             held (fcntl) by whoever changes the registry

Every model is registered through :func:`register_model` (training jobs) or
:func:`register_artifact` (`serq adapt`), which sign it, or, for the models shipped in this package, :func:`ship_model`. The default models
(``serq/models/default``, ``default_speaker``) serve whenever the registry has no
active version; they are trusted by installation: their files' sha256 are pinned in
``serq/models/shipped.sha256``. Loading always verifies the sha256, the feature
version and the set of types inside the artifact; given a :class:`Trust` (workers),
also the signature, before the artifact is read.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from serq.errors import ModelError
from serq.files import FileRefused, read_regular
from serq.models.card import model_card
from serq.models.signing import SIGNATURE, Signer, Trust, check_model_signature, sign_event, signature_record
from serq.schemas import Hyperparameters, ModelActivated, ModelMetadata, SpeakerPrior
from serq.worker.engine.model import LoadedModel

logger = logging.getLogger("serq.profiles")  # the speaker-model messages below

DEFAULT_DIR = Path(__file__).resolve().parent / "default"
DEFAULT_SPEAKER_DIR = DEFAULT_DIR.parent / "default_speaker"  # beside the shipped plain model
#: The speaker-normalised model the profile path serves (a pointer like ACTIVE).
SPEAKER_POINTER = "SPEAKER_ACTIVE"
ARTIFACT = "model.skops"
METADATA = "model.json"
CARD = "MODEL_CARD.md"
#: sha256 of the shipped models' files, ``sha256sum`` format (``sha256sum -c`` checks it by hand).
PINS = Path(__file__).resolve().parent / "shipped.sha256"
#: Largest metadata file read (a speaker model's is about 25 kB).
MAX_METADATA_BYTES = 1024 * 1024
#: Largest artifact read when the caller names no limit (workers pass SERQ_MAX_MODEL_BYTES).
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

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
    from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION  # lazy: numpy/scipy only to load or register

    digest = sha256_bytes(data)
    if digest != meta.sha256:
        raise ModelError(f"model {meta.version}: checksum mismatch (artifact {digest[:12]}, expected {meta.sha256[:12]})")
    if meta.feature_version != FEATURE_VERSION or meta.feature_names_sha256 != feature_names_sha256(FEATURE_NAMES):
        raise ModelError(
            f"model {meta.version} was trained on features {meta.feature_version}; this serq computes {FEATURE_VERSION}"
        )
    import skops.io as sio  # lazy: scikit-learn only to load or write an artifact, not to list versions

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


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """``path``'s bytes, refused before reading when it is not a regular file or exceeds ``limit``."""
    try:
        return read_regular(path, limit)
    except FileRefused as exc:
        if exc.reason == "missing":
            message = f"no {what}"
        elif exc.reason == "not regular":
            message = f"{what} is not a regular file"
        elif exc.reason == "too large":
            message = (f"{what} is {exc.size} bytes, over the limit of {limit} (SERQ_MAX_MODEL_BYTES)"
                       if exc.size is not None else f"{what} exceeds the limit of {limit} bytes (SERQ_MAX_MODEL_BYTES)")
        else:
            message = f"cannot read {what} ({exc.detail})"
        raise ModelError(message) from None


def read_metadata(folder: Path) -> ModelMetadata:
    path = folder / METADATA
    try:
        return ModelMetadata.model_validate_json(_read_bounded(path, MAX_METADATA_BYTES, f"model metadata at {path}"))
    except ValueError as exc:
        raise ModelError(f"invalid model metadata at {path}: {exc}") from None


def _artifact_path(folder: Path, meta: ModelMetadata) -> Path:
    if Path(meta.artifact).name != meta.artifact or meta.artifact.startswith("."):
        raise ModelError(f"model {meta.version}: artifact name {meta.artifact!r} is not a file beside its metadata")
    return folder / meta.artifact


def load_folder(folder: Path, trust: Trust | None = None, max_bytes: int = MAX_ARTIFACT_BYTES) -> LoadedModel:
    """Load a registry folder; with ``trust``, its ``model.sig`` is verified before the artifact is read."""
    meta = read_metadata(folder)
    if trust is not None:
        sig = folder / SIGNATURE
        check_model_signature(meta, _read_bounded(sig, 4096, f"signature of {meta.version}") if sig.exists() else None,
                              trust)
    data = _read_bounded(_artifact_path(folder, meta), max_bytes, f"artifact of model {meta.version}")
    return load_artifact(data, meta)


def write_folder(folder: Path, data: bytes, meta: ModelMetadata, card: str, signer: Signer | None = None) -> None:
    """Write a model folder: the artifact, its metadata, its model card and (with ``signer``) its signature."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ARTIFACT).write_bytes(data)
    (folder / METADATA).write_text(meta.model_dump_json(indent=2) + "\n")
    (folder / CARD).write_text(card)
    if signer is not None:
        (folder / SIGNATURE).write_bytes(signature_record(meta, signer))


# ---------------------------------------------------------------- the shipped models (trusted by installation)


def _pins() -> dict[str, str]:
    """``relative path -> sha256`` of the shipped files, from :data:`PINS`."""
    try:
        lines = PINS.read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {name.strip(): digest for digest, _, name in (line.partition("  ") for line in lines if line.strip())}


def _check_pinned(folder: Path, name: str, data: bytes) -> None:
    rel = f"{folder.name}/{name}"
    pinned = _pins().get(rel)
    if pinned is None or sha256_bytes(data) != pinned:
        raise ModelError(f"shipped model file {rel} does not match the sha256 pinned at installation ({PINS.name})")


def load_shipped(folder: Path) -> LoadedModel:
    """A model shipped in this package, verified against the pinned sha256 of its metadata and artifact."""
    raw = _read_bounded(folder / METADATA, MAX_METADATA_BYTES, f"shipped metadata in {folder.name}")
    _check_pinned(folder, METADATA, raw)
    try:
        meta = ModelMetadata.model_validate_json(raw)
    except ValueError as exc:
        raise ModelError(f"invalid shipped metadata in {folder.name}: {exc}") from None
    data = _read_bounded(_artifact_path(folder, meta), MAX_ARTIFACT_BYTES, f"shipped artifact in {folder.name}")
    _check_pinned(folder, meta.artifact, data)
    return load_artifact(data, meta)


def load_default() -> LoadedModel:
    """The model shipped inside the package."""
    return load_shipped(DEFAULT_DIR)


def _pin(folder: Path) -> None:
    """Record the sha256 of a shipped folder's metadata and artifact in :data:`PINS` (after a rebuild)."""
    pins = {k: v for k, v in _pins().items() if not k.startswith(f"{folder.name}/")}
    for name in (METADATA, ARTIFACT):
        pins[f"{folder.name}/{name}"] = sha256_bytes((folder / name).read_bytes())
    _atomic_write(PINS, "".join(f"{digest}  {name}\n" for name, digest in sorted(pins.items())).encode())


def serialise(pipeline) -> bytes:
    """The skops bytes of a fitted pipeline, without the MLP's optimiser state.

    Adam's two moment arrays per weight matrix are only needed to go on training; left
    in, they triple the artifact that every ``ModelActivated`` event carries.
    """
    import skops.io as sio  # lazy: scikit-learn only to load or write an artifact, not to list versions

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


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the registry's lock file (``fcntl.flock``): one writer at a time, across processes.

    A read-modify-write of ``history.json`` by two activations at once would otherwise
    drop one of them.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


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
        self.folder_name_ok(version)
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

    def _shipped_folder(self, version: str) -> Path | None:
        """The package folder of a shipped version (plain or speaker), else ``None``."""
        if version == default_metadata().version:
            return DEFAULT_DIR
        speaker = shipped_speaker_metadata()
        return DEFAULT_SPEAKER_DIR if speaker is not None and version == speaker.version else None

    def metadata(self, version: str) -> ModelMetadata:
        shipped = self._shipped_folder(version)
        return read_metadata(shipped or self.folder(version))

    def artifact_bytes(self, version: str) -> bytes:
        folder = self._shipped_folder(version) or self.folder(version)
        meta = read_metadata(folder)
        return _read_bounded(_artifact_path(folder, meta), MAX_ARTIFACT_BYTES, f"artifact of model {version}")

    def register(self, data: bytes, meta: ModelMetadata, card: str = "", signer: Signer | None = None) -> ModelMetadata:
        """Store an artifact, its metadata and (with ``signer``) its signature as a new version (not activated).

        Use :func:`register_model`, which builds the metadata and signs with SERQ_SIGNING_KEY.
        """
        if sha256_bytes(data) != meta.sha256:
            raise ModelError("refusing to register an artifact whose sha256 differs from its metadata")
        folder = self.versions_dir / meta.version
        self.folder_name_ok(meta.version)
        with _locked(self.root):
            tmp = self.versions_dir / f".{meta.version}.partial"
            if tmp.exists():  # left by a writer killed mid-way (we hold the lock: nobody writes it now)
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
            write_folder(tmp, data, meta, card, signer)
            if folder.exists():  # the same artifact registered twice: keep the first
                for p in tmp.iterdir():
                    p.unlink()
                tmp.rmdir()
                return read_metadata(folder)
            os.replace(tmp, folder)  # a version appears whole or not at all
        return meta

    @staticmethod
    def folder_name_ok(version: str) -> None:
        if not version or "/" in version or version.startswith("."):
            raise ModelError(f"invalid model version {version!r}")

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
        with _locked(self.root):  # the history's read-modify-write is one writer's at a time
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
        with _locked(self.root):
            target = self.previous_version()
            self.load(target)  # never activate what would not load
            history = self.history()
            keep = max((i for i, v in enumerate(history[:-1]) if v == target), default=-1)
            _atomic_write(self.root / "ACTIVE", target.encode() + b"\n")
            _atomic_write(self.root / "history.json", json.dumps(history[: keep + 1]).encode())
        return self.metadata(target)

    def load(self, version: str, trust: Trust | None = None, max_bytes: int = MAX_ARTIFACT_BYTES) -> LoadedModel:
        """Load ``version``; with ``trust`` its signature must verify (shipped versions: their pins)."""
        shipped = self._shipped_folder(version)
        if shipped is not None:
            return load_shipped(shipped)
        return load_folder(self.folder(version), trust, max_bytes)

    def load_active(self, trust: Trust | None = None, max_bytes: int = MAX_ARTIFACT_BYTES) -> LoadedModel:
        """The active version, else the shipped default."""
        version = self.active_version()
        return self.load(version, trust, max_bytes) if version else load_default()

    def active_metadata(self) -> ModelMetadata:
        version = self.active_version()
        return self.metadata(version) if version else default_metadata()

    def announcement(self, version: str, reason: str, signer: Signer | None) -> ModelActivated:
        """The event announcing ``version`` (registered or shipped), signed by ``signer`` when given."""
        event = ModelActivated.announcing(self.metadata(version), self.artifact_bytes(version), reason)
        return sign_event(event, signer) if signer is not None else event


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
    with _locked(registry.root):
        if registry._shipped_folder(version) is not None:  # the shipped one serves when no pointer is set
            (registry.root / SPEAKER_POINTER).unlink(missing_ok=True)
        else:
            _atomic_write(registry.root / SPEAKER_POINTER, version.encode() + b"\n")
    return model.meta


def speaker_version(registry: Registry) -> str | None:
    try:
        return (registry.root / SPEAKER_POINTER).read_text().strip() or None
    except FileNotFoundError:
        return None


def shipped_speaker_metadata() -> ModelMetadata | None:
    try:
        return read_metadata(DEFAULT_SPEAKER_DIR)
    except ModelError:
        return None


def current_speaker_metadata(registry: Registry) -> ModelMetadata | None:
    version = speaker_version(registry)
    return registry.metadata(version) if version else shipped_speaker_metadata()


_loaded: dict[tuple[str, str | None, Trust | None], LoadedModel | None] = {}


def load_speaker_model(model_dir: str | Path, trust: Trust | None = None) -> LoadedModel | None:
    """The speaker model a worker serves: SPEAKER_ACTIVE's version, else the shipped one; ``None`` if unusable.

    Unusable (e.g. the shipped model predates the running feature version, or, with
    ``trust``, the registry's version is not signed by a trusted key) means every
    request falls back to the plain model, with ``profile_status`` ``no_speaker_model``;
    it is logged once, never fatal. Cached per version.
    """
    registry = Registry(model_dir)
    version = speaker_version(registry)
    key = (str(model_dir), version, trust)
    if key not in _loaded:
        try:
            _loaded[key] = registry.load(version, trust) if version else load_shipped(DEFAULT_SPEAKER_DIR)
        except ModelError as exc:
            logger.warning("no speaker-normalised model (profiles fall back to the plain model): %s", exc)
            _loaded[key] = None
    return _loaded[key]


def forget_speaker_models() -> None:
    """Drop the cached speaker models (after a rebuild wrote a new one in place)."""
    _loaded.clear()


# ---------------------------------------------------------------- the one registration path


def build_model(pipeline, *, labels: list[str], hyperparameters: Hyperparameters, training_data: dict,
                metrics=None, speaker_prior: SpeakerPrior | None = None, notes: str = "",
                version: str | None = None, conditions=None, class_statistics=None) -> tuple[bytes, ModelMetadata]:
    """A fitted pipeline's artifact bytes and metadata (running feature layout; ``speaker_prior``: a speaker model).

    ``version`` defaults to the time and the artifact's sha256 (:func:`new_version`);
    ``class_statistics`` (:class:`serq.schemas.ClassStatistics`) is what `serq adapt` needs of a plain model.
    """
    from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION  # lazy: numpy/scipy only to load or register

    data = serialise(pipeline)
    digest = sha256_bytes(data)
    meta = ModelMetadata(
        version=version or new_version(digest), created=datetime.now(timezone.utc).replace(microsecond=0),
        feature_version=FEATURE_VERSION, feature_names_sha256=feature_names_sha256(FEATURE_NAMES),
        labels=list(labels), sha256=digest, hyperparameters=hyperparameters,
        normalisation="speaker" if speaker_prior is not None else "none", speaker_prior=speaker_prior,
        training_data=training_data, metrics=metrics, conditions=conditions, notes=notes,
        class_statistics=class_statistics,
    )
    return data, meta


def register_model(pipeline, settings, *, labels: list[str], hyperparameters: Hyperparameters, training_data: dict,
                   metrics=None, speaker_prior: SpeakerPrior | None = None, notes: str = "", card_extra: str = "",
                   activate: bool = False, class_statistics=None) -> ModelMetadata:
    """Register a fitted pipeline in ``settings.model_dir``, signed with SERQ_SIGNING_KEY; optionally activate it.

    The one way a model enters the registry (training jobs, plain or speaker; through
    :func:`register_artifact`, which `serq adapt` calls with metadata of its own). A speaker
    model (``speaker_prior`` given) is activated on the profile path's pointer, a plain one on
    ACTIVE. Without SERQ_SIGNING_KEY the version is registered unsigned (usable locally; workers
    with trusted keys refuse it) and a warning is logged. Announce it afterwards with
    :meth:`Registry.announcement`.
    """
    data, meta = build_model(pipeline, labels=labels, hyperparameters=hyperparameters, training_data=training_data,
                             metrics=metrics, speaker_prior=speaker_prior, notes=notes,
                             class_statistics=class_statistics)
    return register_artifact(settings, data, meta, model_card(meta, extra=card_extra), activate=activate)


def register_artifact(settings, data: bytes, meta: ModelMetadata, card: str, *,
                      activate: bool = False) -> ModelMetadata:
    """:func:`register_model` for artifact bytes whose metadata the caller built (e.g. derived from
    another model's, as `serq adapt` does): registered in ``settings.model_dir``, signed with
    SERQ_SIGNING_KEY, optionally activated on the pointer of its kind."""
    signer = Signer.from_settings(settings)
    if signer is None:
        logger.warning("SERQ_SIGNING_KEY is not set: model registered unsigned; workers will refuse it")
    registry = Registry(settings.model_dir)
    meta = registry.register(data, meta, card, signer)
    if activate:
        if meta.normalisation == "speaker":
            activate_speaker(registry, meta.version)
        else:
            registry.activate(meta.version)
    return meta


def ship_model(pipeline, folder: str | Path, *, version: str, labels: list[str], hyperparameters: Hyperparameters,
               training_data: dict, metrics=None, speaker_prior: SpeakerPrior | None = None, notes: str = "",
               card_extra: str = "", conditions=None, class_statistics=None) -> ModelMetadata:
    """Write a model to be shipped in the package (``serq models build-default``, ``serq profiles build-model``).

    Written into the package's own folder, its files' sha256 are pinned in
    :data:`PINS`: the shipped models are trusted by installation, not by a key.
    """
    folder = Path(folder)
    data, meta = build_model(pipeline, labels=labels, hyperparameters=hyperparameters, training_data=training_data,
                             metrics=metrics, speaker_prior=speaker_prior, notes=notes, version=version,
                             conditions=conditions, class_statistics=class_statistics)
    write_folder(folder, data, meta, model_card(meta, extra=card_extra))
    if folder.resolve() in (DEFAULT_DIR.resolve(), DEFAULT_SPEAKER_DIR.resolve()):
        _pin(folder)
    global _default_meta
    _default_meta = None
    forget_speaker_models()
    return meta
