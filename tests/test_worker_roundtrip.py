"""A real worker subprocess, a real broker, real clips: round trip, results exchange, CLI parity with predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from serq.client import Client, ServiceError
from serq.models.registry import load_default
from serq.schemas.contract import result_key
from serq.settings import Settings

from conftest import ravdess_clip

pytestmark = [pytest.mark.broker, pytest.mark.corpus]


def test_round_trip_gives_what_in_process_classify_gives(start_worker, amqp_url, prefix, ravdess_dir):
    from serq.worker.engine.inference import classify

    start_worker()
    clip = ravdess_clip(1, 5)
    with Client(amqp_url, prefix) as client:
        remote = client.classify(clip, timeout=60)
        again = client.classify(clip.read_bytes(), timeout=60, filename="again.flac")
    local = classify(clip, load_default(), Settings())
    assert remote.model_version == local.model_version
    assert remote.label == local.label
    assert remote.probabilities == pytest.approx(local.probabilities, abs=1e-6)
    assert remote.spectral == local.spectral
    assert remote.worker == "worker0" and remote.request_id and remote.request_id != again.request_id
    assert remote.file == clip.name and again.file == "again.flac"
    assert remote.timings_ms.features > 0


def test_every_reply_is_also_published_by_routing_key(start_worker, amqp_url, prefix, ravdess_dir):
    start_worker()
    clips = [ravdess_clip(2, 1), ravdess_clip(2, 5, intensity=2), ravdess_clip(2, 4, intensity=2)]
    everything: list = []
    with Client(amqp_url, prefix) as client:
        labels = [client.classify(c, timeout=60).label for c in clips]
        assert len(set(labels)) >= 2, f"the model should tell neutral, angry and sad apart here: {labels}"
        chosen: list = []
        with client.subscribe(None, lambda r, key: everything.append((r, key)), errors=True), \
             client.subscribe([labels[0]], lambda r, key: chosen.append((r, key))):
            sent = [client.classify(c, timeout=60) for c in clips]
            with pytest.raises(ServiceError):
                client.classify(b"not audio at all", timeout=60)
            # Each subscription has its own connection and thread: wait for both, generously.
            expect_chosen = sum(r.label == labels[0] for r in sent)
            deadline = time.monotonic() + 60
            while (len(everything) < 4 or len(chosen) < expect_chosen) and time.monotonic() < deadline:
                time.sleep(0.05)
    by_id = {r.request_id: key for r, key in everything}
    for result in sent:
        assert by_id[result.request_id] == result_key(result.label)
    assert sorted(key for _, key in everything if key.startswith("error.")) == ["error.unsupported_format"]
    assert [r.request_id for r, _ in chosen] == [r.request_id for r in sent if r.label == labels[0]]
    assert all(key == result_key(labels[0]) for _, key in chosen)


def test_classify_prints_exactly_what_predict_prints(start_worker, amqp_url, prefix, ravdess_dir, tmp_path):
    start_worker()
    env = dict(os.environ, SERQ_AMQP_URL=amqp_url, SERQ_PREFIX=prefix, SERQ_MODEL_DIR=str(tmp_path / "models"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    args = [str(ravdess_clip(3, 3, intensity=2)), str(ravdess_clip(3, 6, intensity=2)), str(bad)]

    def run(command: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "serq", command, *extra, *args], env=env,
                              capture_output=True, text=True, timeout=180)

    predicted, classified = run("predict", "--json"), run("classify", "--json")
    assert predicted.returncode == classified.returncode == 1  # one file failed in both
    local = [json.loads(line) for line in predicted.stdout.splitlines()]
    remote = [json.loads(line) for line in classified.stdout.splitlines()]
    assert [list(r) for r in remote] == [list(r) for r in local]  # the same keys, in the same order
    for a, b in zip(local, remote):
        for volatile in ("timings_ms", "request_id", "worker"):
            a.pop(volatile, None), b.pop(volatile, None)
        assert a == b
    text = run("classify")
    assert text.returncode == 1
    assert text.stdout.splitlines()[0].startswith(args[0] + ": ")
    assert f"{bad}: ERROR [unsupported_format]" in text.stderr
    assert "Traceback" not in text.stderr
