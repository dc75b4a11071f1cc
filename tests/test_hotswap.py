"""Retraining while serving, end to end: while a client streams classify requests at two real workers, a real trainer
retrains on a few RAVDESS actors and activates; every reply succeeds and both workers switch from
the old version to the new one; `serq models rollback` swaps them back through the same event; a
tampered activation is refused while serving goes on; a worker started later loads the active model."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from serq.client import Client
from serq.models.registry import Registry, default_metadata
from serq.schemas import TrainResult
from serq.settings import Settings
from serq.transport.announce import activation_event, publish_event

from conftest import ravdess_clip
from helpers import REPO
from helpers.corpus import make_subset
from helpers.signing import signed

pytestmark = [pytest.mark.broker, pytest.mark.corpus, pytest.mark.slow]

#: Clips of actors the new model never trains on (it trains on 1..6).
CLIPS = [ravdess_clip(actor, emotion, intensity=2) for actor in (7, 8) for emotion in (3, 4, 5, 6)]


class Stream:
    """Classify requests in a background thread, a few per second, two in flight (so both workers serve)."""

    def __init__(self, amqp_url: str, prefix: str):
        self.replies: list[tuple[str, str]] = []  # (worker, model_version), in arrival order
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._client = Client(amqp_url, prefix, timeout=60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        clips = itertools.cycle(CLIPS)
        while not self._stop.is_set():
            for _, outcome in self._client.classify_many([next(clips), next(clips)], max_in_flight=2):
                if isinstance(outcome, Exception):
                    self.failures.append(f"{type(outcome).__name__}: {outcome}")
                else:
                    self.replies.append((outcome.worker, outcome.model_version))
            time.sleep(0.25)  # leave the cores to the trainer

    def wait_until(self, what: str, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert not self.failures, self.failures
            assert self._thread.is_alive(), "the stream stopped"
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s; last replies {self.replies[-6:]}"
            time.sleep(0.2)

    def every_worker_on(self, version: str, workers: set[str], since: int) -> bool:
        return {w for w, v in self.replies[since:] if v == version} >= workers

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)
        self._client.close()


def _runs(versions: list[str]) -> list[str]:
    """``[a, a, b, b, a] -> [a, b, a]``."""
    return [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]


def test_a_retrain_hot_swaps_into_every_worker_and_no_request_fails(
        amqp_url, prefix, tmp_path, ravdess_dir, feature_cache, start_worker, start_trainer):
    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2, 3, 4, 5, 6], "six")
    workers = [start_worker(), start_worker()]
    names = {"worker0", "worker1"}
    start_trainer(env={"SERQ_DATA_ROOTS": f"{root}:{ravdess_dir}", "SERQ_CACHE_DIR": str(feature_cache)})
    default = default_metadata().version
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}

    stream = Stream(amqp_url, prefix)
    try:
        stream.wait_until("both workers serve the default model", lambda: stream.every_worker_on(default, names, 0))

        # A tampered announcement (signed, but its bytes do not match the signed checksum) is refused by both.
        registry = Registry(tmp_path / "models")
        meta = default_metadata().model_copy(update={"version": "tampered-1"})
        artifact = bytearray(registry.artifact_bytes(default))
        artifact[len(artifact) // 2] ^= 0xFF
        publish_event(signed(activation_event(meta, bytes(artifact), "tamper test")),
                      settings=Settings(amqp_url=amqp_url, prefix=prefix))
        for proc in workers:
            stream.wait_until("the tampered model is refused",
                              lambda: "checksum mismatch" in proc.log_path.read_text(), timeout=60)

        # Retrain through the broker (`serq train --wait --json`) while the stream goes on.
        trained = subprocess.run(
            [sys.executable, "-m", "serq", "train", "--data", "six", "--folds", "3", "--hidden", "64",
             "--max-iter", "60", "--augment", "none", "--activate", "always", "--wait", "--json"],
            env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert trained.returncode == 0, trained.stderr
        result = TrainResult.model_validate_json(trained.stdout)
        assert result.ok and result.activated and result.version != default
        assert result.dataset["speakers"] == 6 and result.metrics.protocol == "speaker-grouped 3-fold"
        assert registry.active_version() == result.version
        mark = len(stream.replies)
        stream.wait_until("both workers switch to the new model",
                          lambda: stream.every_worker_on(result.version, names, mark), timeout=120)

        # A worker that starts now loads the active version from the shared registry.
        late = start_worker()
        assert re.search(rf"starting .*model_version={re.escape(result.version)}", late.log_path.read_text())

        # Roll back with the CLI: the same event path swaps every worker back.
        rolled = subprocess.run([sys.executable, "-m", "serq", "models", "rollback"], env=env,
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert rolled.returncode == 0 and f"published on {prefix}.models" in rolled.stdout, rolled.stderr
        mark = len(stream.replies)
        stream.wait_until("every worker rolls back",
                          lambda: stream.every_worker_on(default, names | {"worker2"}, mark), timeout=120)
    finally:
        stream.stop()

    assert not stream.failures, stream.failures
    for name in names:
        versions = [v for w, v in stream.replies if w == name]
        assert _runs(versions) == [default, result.version, default], (name, _runs(versions))
    assert "tampered-1" not in {v for _, v in stream.replies}


def test_a_speaker_model_is_announced_and_reaches_a_worker_without_shared_disk(
        amqp_url, prefix, tmp_path, ravdess_dir, feature_cache, start_worker, start_trainer):
    """A `speaker_normalisation` job activates on the trainer; a worker with a registry of its own (no
    shared disk) swaps its profile-path model from the event, keeps its plain model, and
    `serq profiles activate default` swaps it back the same way."""
    from serq.client.profiles import SpeakerProfiles
    from serq.models.registry import DEFAULT_SPEAKER_DIR, read_metadata

    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2, 3], "three")
    worker = start_worker(env={"SERQ_MODEL_DIR": str(tmp_path / "worker-models")})
    start_trainer(env={"SERQ_DATA_ROOTS": f"{root}:{ravdess_dir}", "SERQ_CACHE_DIR": str(feature_cache)})
    shipped = read_metadata(DEFAULT_SPEAKER_DIR).version
    plain = default_metadata().version
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}
    calm = [ravdess_clip(14, 2, i, s, r) for i in (1, 2) for s in (1, 2) for r in (1, 2)][:5]
    clip = ravdess_clip(14, 5, 2, 1, 1)

    with Client(amqp_url, prefix, timeout=60) as client:
        speakers = SpeakerProfiles(client)
        speakers.enroll("caller-14", calm)
        before = speakers.classify("caller-14", clip)
        assert (before.normalisation, before.model_version) == ("speaker", shipped)

        trained = subprocess.run(
            [sys.executable, "-m", "serq", "train", "--data", "three", "--folds", "2", "--hidden", "16",
             "--max-iter", "30", "--augment", "none", "--speaker-normalisation", "--activate", "always",
             "--wait", "--json"], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert trained.returncode == 0, trained.stderr
        result = TrainResult.model_validate_json(trained.stdout)
        assert result.ok and result.activated and result.version not in (shipped, plain)
        assert not (tmp_path / "worker-models").exists() or not any((tmp_path / "worker-models").iterdir())

        def profile_path_version() -> str:
            return speakers.classify("caller-14", clip).model_version

        deadline = time.monotonic() + 60
        while profile_path_version() != result.version:
            assert time.monotonic() < deadline, worker.log_path.read_text()[-2000:]
            time.sleep(0.2)
        assert client.classify(clip).model_version == plain  # the plain model is untouched
        assert "speaker model swapped" in worker.log_path.read_text()

        back = subprocess.run([sys.executable, "-m", "serq", "profiles", "activate", "default"], env=env,
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert back.returncode == 0 and f"published on {prefix}.models" in back.stdout, back.stderr
        deadline = time.monotonic() + 60
        while profile_path_version() != shipped:
            assert time.monotonic() < deadline, worker.log_path.read_text()[-2000:]
            time.sleep(0.2)
