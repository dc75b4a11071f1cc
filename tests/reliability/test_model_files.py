"""A broken ACTIVE model on disk when a worker starts: refused with a clear error, the shipped default serves.

(The registry's own refusals are in tests/test_registry.py and hot-swap refusals in
tests/test_worker_hotswap.py; here the worker process meets the broken file at start-up.)
"""

from __future__ import annotations

import os
import re
import urllib.request
from pathlib import Path

import pytest

from serq.client import Client
from serq.models.registry import (
    ARTIFACT,
    DEFAULT_DIR,
    METADATA,
    default_metadata,
    sha256_bytes,
)
from serq.models.signing import SIGNATURE, Signer, signature_record

from .conftest import record
from .payloads import encode, tone
from helpers.broker import free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def sneaky_artifact() -> bytes:
    """A skops file holding a type nobody trusts (helpers.models.Sneaky): loading it would import test code."""
    import numpy as np
    import skops.io as sio

    from helpers.models import LABELS, Sneaky  # lazy: scikit-learn, for this one test

    return sio.dumps(Sneaky().fit(np.zeros((4, 2)), np.array(LABELS)))


def broken_registry(root, kind: str, untrusted_key: Path | None = None) -> str:
    """``root`` = a registry whose ACTIVE version is broken in one way; returns the words the refusal names."""
    meta = default_metadata()
    artifact = (DEFAULT_DIR / meta.artifact).read_bytes()
    version = f"broken-{kind}"
    fields = {"version": version}
    if kind == "checksum":
        flipped = bytearray(artifact)
        flipped[len(flipped) // 2] ^= 0xFF
        artifact, words = bytes(flipped), "checksum mismatch"
    elif kind == "feature-version":
        fields["feature_version"] = "serq-fe-0"
        words = "trained on features serq-fe-0"
    elif kind == "unexpected-type":
        artifact, words = sneaky_artifact(), "unexpected types"
    elif kind == "truncated":
        artifact, words = artifact[: len(artifact) // 2], "not a readable skops file"
    elif kind == "metadata":
        words = "invalid model metadata"
    elif kind == "unsigned":  # a sound copy of the default that nobody signed
        words = "is not signed"
    elif kind == "untrusted":  # signed, but by a key the worker does not trust
        words = "not signed by a trusted key"
    else:
        raise ValueError(kind)
    fields["sha256"] = sha256_bytes(artifact) if kind != "checksum" else meta.sha256
    folder = root / "versions" / version
    folder.mkdir(parents=True)
    (folder / ARTIFACT).write_bytes(artifact)
    final = meta.model_copy(update=fields)
    text = final.model_dump_json(indent=2)
    (folder / METADATA).write_text(text[: len(text) // 2] if kind == "metadata" else text)
    if kind not in ("unsigned", "metadata"):  # signed as registered: the damage is what is refused
        key = untrusted_key if kind == "untrusted" else Path(os.environ["SERQ_SIGNING_KEY"])
        (folder / SIGNATURE).write_bytes(signature_record(final, Signer.load(key)))
    (root / "ACTIVE").write_text(version + "\n")
    return words


KINDS = ["checksum", "feature-version", "unexpected-type", "truncated", "metadata", "unsigned", "untrusted"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_broken_active_model_is_refused_and_the_default_serves(kind, tmp_path, caplog, untrusted_keys):
    from serq.settings import Settings
    from serq.worker.services.worker import Worker

    words = broken_registry(tmp_path / "models", kind, untrusted_keys / "signing.key")
    with caplog.at_level("ERROR", logger="serq.worker"):
        worker = Worker(Settings(model_dir=tmp_path / "models", metrics_port=0))
    assert worker.holder.current.version == default_metadata().version
    refusal = [r for r in caplog.records if r.getMessage() == "active model refused; serving the shipped default"]
    assert len(refusal) == 1 and words in refusal[0].fields["reason"], caplog.text
    assert refusal[0].fields["refused"] == f"broken-{kind}"
    assert worker.metrics.refused._value.get() == 1


def test_a_worker_process_with_a_broken_active_model_starts_and_serves_the_default(
        start_worker, amqp_url, prefix, tmp_path):
    models = tmp_path / "models"  # start_worker's SERQ_MODEL_DIR
    words = broken_registry(models, "truncated")
    port = free_port()
    proc = start_worker({"SERQ_METRICS_PORT": str(port)})
    default = default_metadata().version
    clip = encode(tone(1.0), 16_000)
    with Client(amqp_url, prefix) as client:
        outcomes = [o for _, o in client.classify_many([clip] * 20, max_in_flight=10, timeout=120)]
    record("broken ACTIVE model at worker start-up (truncated artifact)", len(outcomes), outcomes,
           "pytest tests/reliability/test_model_files.py")
    assert all(getattr(o, "model_version", None) == default for o in outcomes), outcomes
    log = proc.log_path.read_text()
    refusal = next((line for line in log.splitlines() if "active model refused" in line), "")
    assert "ERROR" in refusal and "refused=broken-truncated" in refusal and words in refusal, log[-2000:]
    assert re.search(r"starting .*model_version=" + re.escape(default), log)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "serq_model_refused_total 1.0" in metrics and f'serq_model_info{{version="{default}"}} 1.0' in metrics
    assert proc.poll() is None
