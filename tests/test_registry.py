"""The model registry: versions, the active pointer, rollback, and refusing bad artifacts.

Models here are real scikit-learn pipelines fitted on random vectors of the real
feature layout (fast); what is tested is the registry, not accuracy.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from serq.errors import ModelError
from serq.models.registry import (
    ARTIFACT,
    DEFAULT_DIR,
    METADATA,
    Registry,
    default_metadata,
    feature_names_sha256,
    load_artifact,
    load_default,
    new_version,
    read_metadata,
    serialise,
    sha256_bytes,
)
from serq.schemas import Hyperparameters, ModelMetadata
from serq.worker.engine.features import FEATURE_NAMES, FEATURE_VERSION
from serq.worker.training.fit import fit

from helpers.models import LABELS, Sneaky
from helpers.signing import signed, trust

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def fitted(seed: int):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, len(FEATURE_NAMES))).astype(np.float32)
    y = np.array(LABELS * 10)
    return fit(X, y, Hyperparameters(hidden_layers=[8], max_iter=20, random_state=seed))


def metadata_for(data: bytes, *, when: datetime, **overrides) -> ModelMetadata:
    digest = sha256_bytes(data)
    fields = dict(
        version=new_version(digest, when), created=when, feature_version=FEATURE_VERSION,
        feature_names_sha256=feature_names_sha256(FEATURE_NAMES), labels=LABELS, sha256=digest,
        hyperparameters=Hyperparameters(hidden_layers=[8], max_iter=20),
    )
    return ModelMetadata(**(fields | overrides))


def make_version(registry: Registry, seed: int) -> ModelMetadata:
    data = serialise(fitted(seed))
    return registry.register(data, metadata_for(data, when=T0 + timedelta(minutes=seed)), card=f"# model {seed}\n")


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "models")


def test_register_list_load(registry):
    a, b = make_version(registry, 1), make_version(registry, 2)
    assert [m.version for m in registry.list()] == [a.version, b.version]  # oldest first
    folder = registry.folder(a.version)
    assert {p.name for p in folder.iterdir()} == {ARTIFACT, METADATA, "MODEL_CARD.md"}
    loaded = registry.load(a.version)
    assert loaded.version == a.version
    X = np.zeros((3, len(FEATURE_NAMES)), np.float32)
    assert loaded.pipeline.predict_proba(X).shape == (3, len(LABELS))
    # Registering the same artifact again keeps the first version.
    data = (folder / ARTIFACT).read_bytes()
    assert registry.register(data, metadata_for(data, when=T0 + timedelta(minutes=1))).version == a.version
    assert len(registry.list()) == 2


def test_register_refuses_a_mismatched_checksum(registry):
    data = serialise(fitted(1))
    meta = metadata_for(data, when=T0)
    with pytest.raises(ModelError):
        registry.register(data + b"x", meta)
    assert registry.list() == []


def test_no_active_version_means_the_shipped_default(registry):
    assert registry.active_version() is None
    assert registry.load_active().version == default_metadata().version
    assert registry.active_metadata().version == default_metadata().version


def test_activate_rollback_history(registry):
    a, b, c = (make_version(registry, s) for s in (1, 2, 3))
    registry.activate(a.version)
    registry.activate(b.version)
    registry.activate(c.version)
    assert registry.active_version() == c.version
    assert registry.load_active().version == c.version
    assert registry.history() == [a.version, b.version, c.version]
    assert (registry.root / "ACTIVE").read_text().strip() == c.version

    assert registry.rollback().version == b.version
    assert registry.active_version() == b.version
    assert registry.history() == [a.version, b.version]
    # A second rollback walks further back (a stack), never back to c, the version just left.
    assert registry.rollback().version == a.version
    assert registry.load_active().version == a.version
    # Past the first activation lies the shipped default; past that, nothing.
    assert registry.rollback().version == default_metadata().version
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()


def test_rollback_skips_repeated_activations_of_the_current_version(registry):
    a, b = make_version(registry, 1), make_version(registry, 2)
    for version in (a.version, b.version, b.version):
        registry.activate(version)
    assert registry.rollback().version == a.version


def test_rollback_from_the_first_activation_goes_to_the_default(registry):
    a = make_version(registry, 1)
    registry.activate(a.version)
    assert registry.rollback().version == default_metadata().version
    assert registry.load_active().version == default_metadata().version


def test_rollback_with_nothing_to_roll_back_to(registry):
    with pytest.raises(ModelError, match="nothing to roll back"):
        registry.rollback()


def test_unknown_and_malformed_versions(registry):
    for bad in ("nope", "../etc", ".hidden", ""):
        with pytest.raises(ModelError):
            registry.load(bad)
        with pytest.raises(ModelError):
            registry.activate(bad)
    assert registry.active_version() is None


def test_tampered_artifact_is_refused_and_never_activated(registry):
    a, b = make_version(registry, 1), make_version(registry, 2)
    registry.activate(a.version)
    path = registry.folder(b.version) / ARTIFACT
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch"):
        registry.load(b.version)
    with pytest.raises(ModelError, match="checksum mismatch"):
        registry.activate(b.version)
    assert registry.active_version() == a.version  # the active model is untouched


def test_feature_version_mismatch_is_refused(registry):
    data = serialise(fitted(1))
    meta = metadata_for(data, when=T0, feature_version="serq-fe-0")
    with pytest.raises(ModelError, match="serq-fe-0"):
        load_artifact(data, meta)
    other_layout = metadata_for(data, when=T0, feature_names_sha256=feature_names_sha256(FEATURE_NAMES[:-1]))
    with pytest.raises(ModelError, match="trained on features"):
        load_artifact(data, other_layout)
    registry.register(data, meta)
    with pytest.raises(ModelError):
        registry.activate(meta.version)


def test_unexpected_type_inside_a_skops_file_is_refused():
    import skops.io as sio

    model = Sneaky().fit(np.zeros((4, 2)), np.array(LABELS))
    data = sio.dumps(model)
    assert any("Sneaky" in t for t in sio.get_untrusted_types(data=data))
    with pytest.raises(ModelError, match="unexpected types"):
        load_artifact(data, metadata_for(data, when=T0))


def test_truncated_artifact_is_refused(registry):
    data = serialise(fitted(1))
    cut = data[: len(data) // 2]
    # With the original metadata, the checksum catches it...
    with pytest.raises(ModelError, match="checksum"):
        load_artifact(cut, metadata_for(data, when=T0))
    # ...and with metadata forged to match, the file itself is refused as unreadable.
    with pytest.raises(ModelError, match="not a readable skops file|does not load"):
        load_artifact(cut, metadata_for(cut, when=T0))
    with pytest.raises(ModelError):
        load_artifact(b"", metadata_for(b"", when=T0))


def test_artifact_classes_must_match_its_metadata():
    data = serialise(fitted(1))
    with pytest.raises(ModelError, match="classes"):
        load_artifact(data, metadata_for(data, when=T0, labels=["neutral", "happy", "sad", "fearful"]))


def test_corrupt_metadata_is_refused(registry):
    a = make_version(registry, 1)
    (registry.folder(a.version) / METADATA).write_text("{not json")
    with pytest.raises(ModelError, match="invalid model metadata"):
        registry.load(a.version)


def test_the_shipped_default_loads_and_predicts():
    model = load_default()
    meta = model.meta
    assert meta.version == default_metadata().version
    assert meta.feature_version == FEATURE_VERSION
    assert meta.sha256 == sha256_bytes((DEFAULT_DIR / ARTIFACT).read_bytes())
    assert meta.metrics is not None and meta.metrics.speaker_independent
    proba = model.pipeline.predict_proba(np.zeros((2, len(FEATURE_NAMES)), np.float32))
    assert proba.shape == (2, len(meta.labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    card = (DEFAULT_DIR / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "RAVDESS" in card


def test_serialised_models_hold_only_default_trusted_types_and_predict_the_same():
    """The optimiser state is dropped: nothing beyond skops' own trusted types, same predictions."""
    import skops.io as sio

    model = fitted(3)
    data = serialise(model)
    assert sio.get_untrusted_types(data=data) == []
    assert hasattr(model.named_steps["mlp"], "_optimizer"), "serialise must not change the caller's model"
    loaded = load_artifact(data, metadata_for(data, when=T0)).pipeline
    X = np.random.default_rng(0).standard_normal((5, len(FEATURE_NAMES))).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_the_shipped_models_hold_only_default_trusted_types():
    import skops.io as sio

    from serq.models.registry import DEFAULT_SPEAKER_DIR

    for folder in (DEFAULT_DIR, DEFAULT_SPEAKER_DIR):
        assert sio.get_untrusted_types(file=folder / ARTIFACT) == [], folder


def test_an_announced_speaker_model_is_verified_and_needs_its_prior():
    from serq.models.registry import DEFAULT_SPEAKER_DIR, read_metadata
    from serq.transport.announce import activation_event
    from serq.worker.services.worker import verify_event

    meta = read_metadata(DEFAULT_SPEAKER_DIR)
    data = (DEFAULT_SPEAKER_DIR / meta.artifact).read_bytes()
    assert verify_event(signed(activation_event(meta, data)), trust(), 1 << 26).meta.normalisation == "speaker"
    with pytest.raises(ModelError, match="speaker prior"):
        verify_event(signed(activation_event(meta.model_copy(update={"speaker_prior": None}), data)), trust(), 1 << 26)


# ---------------------------------------------------------------- signatures, pins, the lock


def test_register_model_signs_and_a_trusted_load_verifies_before_reading(isolated_env):
    from serq.models.registry import register_model
    from serq.models.signing import SIGNATURE
    from serq.settings import get_settings

    settings = get_settings()
    meta = register_model(fitted(1), settings, labels=LABELS, hyperparameters=Hyperparameters(hidden_layers=[8]),
                          training_data={"clips": 40}, activate=True)
    registry = Registry(settings.model_dir)
    assert registry.active_version() == meta.version and registry.history() == [meta.version]
    folder = registry.folder(meta.version)
    assert (folder / SIGNATURE).is_file()
    assert registry.load_active(trust()).version == meta.version
    # metadata changed after signing no longer verifies
    changed = read_metadata(folder).model_copy(update={"notes": "edited"})
    (folder / METADATA).write_text(changed.model_dump_json())
    with pytest.raises(ModelError, match="not signed by a trusted key"):
        registry.load(meta.version, trust())
    (folder / SIGNATURE).unlink()
    with pytest.raises(ModelError, match="is not signed"):
        registry.load(meta.version, trust())
    assert registry.load(meta.version).version == meta.version  # without a Trust (local CLI use): as before


def test_a_shipped_model_is_trusted_only_as_pinned(tmp_path):
    import shutil

    from serq.models.registry import load_shipped

    assert load_shipped(DEFAULT_DIR).version == default_metadata().version
    copy = tmp_path / "default"  # the same folder name: the same pins apply
    shutil.copytree(DEFAULT_DIR, copy)
    meta = read_metadata(copy)
    (copy / METADATA).write_text(meta.model_copy(update={"notes": "swapped"}).model_dump_json(indent=2))
    with pytest.raises(ModelError, match="pinned at installation"):
        load_shipped(copy)


def test_a_fifo_in_place_of_an_artifact_is_refused_without_blocking(registry):
    import os

    a = make_version(registry, 1)
    artifact = registry.folder(a.version) / ARTIFACT
    artifact.unlink()
    os.mkfifo(artifact)
    with pytest.raises(ModelError, match="not a regular file"):
        registry.load(a.version)


ACTIVATE_LOOP = """
import sys, time
from pathlib import Path
from serq.models.registry import Registry
root, go, n, versions = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
while not go.exists():
    time.sleep(0.001)
registry = Registry(root)
for i in range(n):
    registry.activate(versions[i % len(versions)])
"""


def test_concurrent_activations_from_two_processes_lose_no_history_entry(registry, tmp_path):
    import subprocess
    import sys

    versions = [make_version(registry, seed).version for seed in (1, 2, 3)]
    go, n = tmp_path / "go", 40
    procs = [subprocess.Popen([sys.executable, "-c", ACTIVATE_LOOP, str(registry.root), str(go), str(n), *order])
             for order in (versions, versions[::-1])]
    go.touch()  # both start at once
    assert [p.wait(300) for p in procs] == [0, 0]
    history = registry.history()
    assert len(history) == 2 * n, f"{2 * n - len(history)} of {2 * n} activations lost"
    assert registry.active_version() == history[-1]
