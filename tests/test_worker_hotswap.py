"""Hot-swap on the worker side: a model announced on <prefix>.models is verified, loaded and swapped
between two requests; a tampered or mismatched announcement is refused while serving goes on."""

from __future__ import annotations

import base64
import os
import time
import urllib.request

import pytest

from serq.client import Client
from serq.models.registry import Registry, load_default
from serq.schemas import Hyperparameters, TrainRequest
from serq.settings import Settings
from serq.transport.announce import activation_event, publish_event

from conftest import ravdess_clip
from helpers.broker import free_port
from helpers.signing import signed

pytestmark = [pytest.mark.broker, pytest.mark.corpus, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_model(ravdess_dir, tmp_path_factory):
    """A real model trained on three actors (plumbing, not accuracy), in a registry the worker cannot see."""
    from serq.worker.training.job import run_training

    root = tmp_path_factory.mktemp("trainer")
    cache = os.environ.get("SERQ_CACHE_DIR") or str(root / "cache")
    settings = Settings(model_dir=root / "models", cache_dir=cache)
    request = TrainRequest(dataset=str(ravdess_dir), speakers=["01", "02", "03"], folds=2, activate="never",
                           hyperparameters=Hyperparameters(hidden_layers=[16], max_iter=40, channel_copies=0))
    result = run_training(request, settings, n_jobs=2)
    assert result.ok, result.error
    registry = Registry(settings.model_dir)
    return registry.metadata(result.version), registry.artifact_bytes(result.version)


def _wait_for(log_path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log_path.read_text()[-2000:]}"
        time.sleep(0.1)


def test_tampered_announcements_are_refused_and_a_good_one_swaps_mid_stream(
        start_worker, amqp_url, prefix, small_model):
    meta, artifact = small_model
    default = load_default().version
    assert meta.version != default
    port = free_port()
    proc = start_worker({"SERQ_METRICS_PORT": str(port)})
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    clip = ravdess_clip(7, 5, intensity=2)

    # 1. the artifact's bytes changed in transit (the signed metadata is intact): its sha256 no longer matches
    flipped = bytearray(artifact)
    flipped[len(flipped) // 2] ^= 0xFF
    tampered = signed(activation_event(meta, bytes(flipped), "tamper test"))
    publish_event(tampered, settings=settings)
    _wait_for(proc.log_path, "checksum mismatch")
    # 2. an event whose header disagrees with its own metadata
    mismatched = activation_event(meta, artifact).model_copy(update={"feature_version": "serq-fe-0"})
    publish_event(mismatched, settings=settings)
    _wait_for(proc.log_path, "disagree with its metadata")
    # 3. not base64 at all
    publish_event(signed(activation_event(meta, artifact)).model_copy(update={"artifact_b64": "%%%"}), settings=settings)
    _wait_for(proc.log_path, "not valid base64")

    with Client(amqp_url, prefix) as client:
        assert client.classify(clip, timeout=60).model_version == default  # still serving the old model
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "serq_model_refused_total 3.0" in metrics

        # 4. the genuine announcement, published while 40 requests stream through
        def stream():
            for i in range(40):
                if i == 12:
                    publish_event(signed(activation_event(meta, artifact, "trained")), settings=settings)
                yield clip

        outcomes = list(client.classify_many(stream(), max_in_flight=4, timeout=120))
    assert all(not isinstance(o, Exception) for _, o in outcomes), "a request failed during the swap"
    versions = [o.model_version for _, o in outcomes]
    assert versions[0] == default and versions[-1] == meta.version
    switch = versions.index(meta.version)
    assert set(versions[switch:]) == {meta.version}, versions  # once swapped, never back
    assert all(set(o.probabilities) == set(meta.labels) for _, o in outcomes[switch:])
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert f'serq_model_info{{version="{meta.version}"}} 1.0' in metrics and "serq_model_swaps_total 1.0" in metrics
    assert base64.b64decode(activation_event(meta, artifact).artifact_b64) == artifact
