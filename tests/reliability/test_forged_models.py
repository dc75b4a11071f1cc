"""Forged model announcements against a real worker on the real broker: the model stays, requests are answered.

Issue 13's attacks, each published on ``<p>.models`` as anyone with broker credentials could:

- a copy of the shipped model with +50 on "happy" (it made every clip ``happy 1.0``);
- a model that expects 10 features under the shipped model's metadata (every request ``internal``);
- a replayed old event, and a replayed signed rollback (they rolled every worker back);
- a forged speaker-model event (+50 on "sad": every profile request ``sad 1.0``);
- a 1.7 MB event whose artifact inflates to about 1 GB when skops loads it (164 -> 1199 MiB).

The worker trusts only the session's test key (tests/conftest.py ``signing_keys``); the
attacker either does not sign or signs with a key of its own. Each attack is checked
by the worker's refusal (log line and ``serq_model_refused_total``), by the version
that answers the requests sent after it, and, for the bomb, by the worker's RSS.
"""

from __future__ import annotations

import copy
import io
import re
import time
import urllib.request
import zipfile
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from serq.client import Client
from serq.client.profiles import SpeakerProfiles
from serq.models.registry import (
    DEFAULT_DIR,
    DEFAULT_SPEAKER_DIR,
    load_default,
    load_shipped,
    read_metadata,
    serialise,
    sha256_bytes,
)
from serq.models.signing import Signer, sign_event
from serq.schemas import ModelActivated
from serq.settings import Settings
from serq.transport.announce import publish_event

from helpers.broker import free_port
from helpers.signing import signed

from .conftest import record, rss_kib

pytestmark = [pytest.mark.broker, pytest.mark.slow]

REQUESTS_PER_ATTACK = 12
#: RSS the bomb may add to the worker (it added about 1 GiB before the signature came first).
BOMB_RSS_LIMIT_MIB = 48


# ---------------------------------------------------------------- the forged artifacts


def with_bias(folder, label: str, amount: float = 50.0) -> tuple[bytes, object]:
    """The shipped model of ``folder`` with ``amount`` added to ``label``'s output bias, and its metadata."""
    model = load_shipped(folder)
    pipeline = copy.deepcopy(model.pipeline)
    mlp = pipeline.named_steps["mlp"]
    mlp.intercepts_[-1][list(mlp.classes_).index(label)] += amount
    data = serialise(pipeline)
    return data, model.meta


def ten_feature_model() -> bytes:
    """A real pipeline fitted on 10 features, with the 8 labels: it fails on every real feature vector."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    labels = load_default().meta.labels
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 10)), np.array(labels * 10)
    pipeline = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier(hidden_layer_sizes=(4,), max_iter=20))])
    return serialise(pipeline.fit(X, y))


def zip_bomb(inflated_bytes: int) -> bytes:
    """A skops file holding one uint8 array of ``inflated_bytes`` zeros, deflated (about 1000:1).

    Written in chunks, so the test itself never holds the inflated array.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (inflated_bytes,)})
    schema = ('{"__class__": "ndarray", "__module__": "numpy", "__loader__": "NdArrayNode", "type": "numpy", '
              '"file": "1.npy", "__id__": 1, "protocol": 2, "_skops_version": "0.16.0"}')
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("schema.json", schema)
        with zf.open("1.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk = bytes(8 << 20)
            for _ in range(inflated_bytes // len(chunk)):
                fh.write(chunk)
            fh.write(bytes(inflated_bytes % len(chunk)))
    return out.getvalue()


def forged_event(data: bytes, meta, *, version: str, reason: str = "trained", **changes) -> ModelActivated:
    """An announcement of ``data`` under ``meta``'s fields with a fresh version and a matching sha256."""
    fields = {"version": version, "sha256": sha256_bytes(data), "created": datetime.now(timezone.utc), **changes}
    return ModelActivated.announcing(meta.model_copy(update=fields), data, reason)


# ---------------------------------------------------------------- the worker and its observation


class Observed:
    """A running worker: its refusals (log and metric) and what answers requests."""

    def __init__(self, proc, port: int, amqp_url: str, prefix: str):
        self.proc, self.port = proc, port
        self.settings = Settings(amqp_url=amqp_url, prefix=prefix)

    def log(self) -> str:
        return self.proc.log_path.read_text()

    def refusals(self) -> int:
        return self.log().count("model refused; serving the current one")

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        match = re.search(rf"^{name} (\S+)$", text, flags=re.M)
        return float(match.group(1)) if match else 0.0

    def publish(self, event: ModelActivated) -> None:
        publish_event(event, settings=self.settings)

    def publish_raw(self, body: bytes) -> None:
        import pika

        from serq.transport.connection import connect
        from serq.transport.topology import declare_models

        conn = connect(self.settings, "serq-test-attacker")
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(declare_models(ch, self.settings), "", body,
                             pika.BasicProperties(content_type="application/json"))
        finally:
            conn.close()

    def wait_log(self, predicate, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.log()):
            assert self.proc.poll() is None, f"the worker died:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{self.log()[-3000:]}"
            time.sleep(0.1)

    def refused(self, before: int, words: str) -> str:
        """Wait for the refusal after ``before`` refusals; returns its log line (which must name ``words``)."""
        self.wait_log(lambda log: log.count("model refused; serving the current one") > before, f"refusal ({words})")
        line = [ln for ln in self.log().splitlines() if "model refused; serving the current one" in ln][before]
        assert words in line, line
        return line


@pytest.fixture
def worker(start_worker, amqp_url, prefix):
    port = free_port()
    proc = start_worker({"SERQ_METRICS_PORT": str(port)})
    return Observed(proc, port, amqp_url, prefix)


def classify_all(client, clips, **kwargs) -> list:
    return [outcome for _, outcome in client.classify_many(clips, max_in_flight=6, timeout=120, **kwargs)]


def attack_row(name: str, outcomes: list, expected_version: str, **notes) -> dict:
    row = record(name, len(outcomes), outcomes, "pytest tests/reliability/test_forged_models.py", **notes)
    assert row["lost"] == 0 and not row["errors"], row
    versions = {getattr(o, "model_version", None) for o in outcomes}
    assert versions == {expected_version}, versions
    return row


# ---------------------------------------------------------------- the attacks


def test_forged_plain_models_are_refused_and_the_shipped_model_keeps_answering(worker, short_clips, untrusted_keys):
    default = load_default()
    clips = short_clips[:REQUESTS_PER_ATTACK]
    attacker = Signer.load(untrusted_keys / "signing.key")
    with Client(worker.settings.amqp_url, worker.settings.prefix) as client:
        honest = classify_all(client, clips)
        assert {o.model_version for o in honest} == {default.version}
        honest_happy = sum(o.label == "happy" for o in honest)

        happy, meta = with_bias(DEFAULT_DIR, "happy")
        for signer, words in ((None, "is not signed"), (attacker, "not signed by a trusted key")):
            before = worker.refusals()
            event = forged_event(happy, meta, version=f"happy-plus-50-{'unsigned' if signer is None else 'attacker'}")
            worker.publish(event if signer is None else sign_event(event, signer))
            worker.refused(before, words)
            outcomes = classify_all(client, clips)
            row = attack_row(f"forged model +50 on happy ({'unsigned' if signer is None else 'untrusted key'})",
                             outcomes, default.version,
                             happy_answers=sum(getattr(o, "label", None) == "happy" for o in outcomes))
            assert row["happy_answers"] == honest_happy  # the forged model would make all of them happy

        before = worker.refusals()
        worker.publish(forged_event(ten_feature_model(), meta, version="ten-features"))
        worker.refused(before, "is not signed")
        attack_row("forged model expecting 10 features (unsigned)", classify_all(client, clips), default.version)

        # the signature covers the metadata: a genuine signature moved onto other metadata fails
        genuine = signed(forged_event((DEFAULT_DIR / meta.artifact).read_bytes(), meta, version="genuine-copy"))
        moved = genuine.model_copy(update={"metadata": genuine.metadata.model_copy(update={"labels": ["happy"]})})
        before = worker.refusals()
        worker.publish(moved)
        worker.refused(before, "not signed by a trusted key")
    assert worker.metric("serq_model_refused_total") == worker.refusals() == 4
    assert worker.metric("serq_model_swaps_total") == 0
    assert worker.proc.poll() is None


def test_replayed_announcements_change_nothing(worker, short_clips):
    """Genuine, signed events replayed later: an old training's, and an old rollback's."""
    artifact = (DEFAULT_DIR / "model.skops").read_bytes()
    meta = read_metadata(DEFAULT_DIR)
    now = datetime.now(timezone.utc)
    # Both trained after the shipped model the worker starts with (whenever that was rebuilt), a before b.
    shipped = meta.created if meta.created.tzinfo else meta.created.replace(tzinfo=timezone.utc)
    old = signed(forged_event(artifact, meta, version="trained-a", created=shipped + timedelta(minutes=1)),
                 when=now - timedelta(seconds=2))
    new = signed(forged_event(artifact, meta, version="trained-b", created=shipped + timedelta(minutes=2)),
                 when=now - timedelta(seconds=1))
    clips = short_clips[:REQUESTS_PER_ATTACK]
    with Client(worker.settings.amqp_url, worker.settings.prefix) as client:
        for event in (old, new):
            worker.publish(event)
            worker.wait_log(lambda log, v=event.version: f"model swapped model_version={v}" in log, f"{event.version}")
        before = worker.refusals()
        worker.publish(old)  # the captured bytes of the first announcement
        worker.refused(before, "replayed or stale announcement")
        attack_row("replayed old ModelActivated event (signed, captured earlier)", classify_all(client, clips),
                   "trained-b")

        # a genuine rollback goes back, and its replay after a newer activation does nothing
        rollback = signed(old.model_copy(update={"reason": "rollback"}))
        worker.publish(rollback)
        worker.wait_log(lambda log: log.count("model swapped model_version=trained-a") == 2, "the rollback")
        worker.publish(signed(new.model_copy(update={"reason": "activate"})))
        worker.wait_log(lambda log: log.count("model swapped model_version=trained-b") == 2, "re-activation")
        before = worker.refusals()
        worker.publish(rollback)
        worker.refused(before, "replayed or stale announcement")
        # an old model announced as freshly trained is refused too: only a rollback may go back
        before = worker.refusals()
        worker.publish(signed(old.model_copy(update={"reason": "trained"})))
        worker.refused(before, "is older than the served trained-b")
        attack_row("replayed signed rollback, and an old model re-announced as trained", classify_all(client, clips),
                   "trained-b")


def test_a_forged_speaker_model_is_refused_and_profiles_keep_the_shipped_one(worker, short_clips):
    shipped = read_metadata(DEFAULT_SPEAKER_DIR)
    sad, meta = with_bias(DEFAULT_SPEAKER_DIR, "sad")
    with Client(worker.settings.amqp_url, worker.settings.prefix) as client:
        speakers = SpeakerProfiles(client)
        speakers.enroll("spk", short_clips[:6])
        before = worker.refusals()
        worker.publish(forged_event(sad, meta, version="sad-plus-50"))
        worker.refused(before, "is not signed")
        outcomes = [speakers.classify("spk", clip, timeout=60) for clip in short_clips[6:6 + REQUESTS_PER_ATTACK]]
    assert {o.normalisation for o in outcomes} == {"speaker"}, [o.profile_status for o in outcomes]
    row = attack_row("forged speaker-model event (+50 on sad, unsigned)", outcomes, shipped.version,
                     sad_answers=sum(o.label == "sad" for o in outcomes))
    assert row["sad_answers"] < len(outcomes)  # the forged model answered sad 1.0 to every one
    assert "speaker model swapped" not in worker.log()


def test_a_model_bomb_is_refused_before_it_is_decoded(worker, short_clips):
    meta = read_metadata(DEFAULT_DIR)
    bomb = zip_bomb(1_200_000_000)  # ~1.2 GB once inflated
    body = forged_event(bomb, meta, version="bomb").model_dump_json().encode()
    assert 1_000_000 < len(body) < 3_000_000  # the size of the event of the attack (1.7 MB)
    clips = short_clips[:REQUESTS_PER_ATTACK]
    with Client(worker.settings.amqp_url, worker.settings.prefix) as client:
        classify_all(client, clips)  # warm: the RSS baseline includes serving
        baseline = rss_kib(worker.proc.pid)
        before = worker.refusals()
        worker.publish_raw(body)
        worker.refused(before, "is not signed")
        grown = (rss_kib(worker.proc.pid) - baseline) / 1024
        outcomes = classify_all(client, clips)
    attack_row(f"model bomb ({len(body) / 1e6:.1f} MB event, ~1.2 GB inflated, unsigned)", outcomes,
               meta.version, rss_growth_mib=round(grown, 1))
    assert grown < BOMB_RSS_LIMIT_MIB, f"worker RSS grew {grown:.0f} MiB"


def test_an_event_over_the_size_limit_is_refused_unread(start_worker, amqp_url, prefix, short_clips):
    port = free_port()
    worker = Observed(start_worker({"SERQ_METRICS_PORT": str(port), "SERQ_MAX_MODEL_BYTES": "100000"}),
                      port, amqp_url, prefix)
    artifact = (DEFAULT_DIR / "model.skops").read_bytes()  # 875 kB: over this worker's limit
    event = signed(forged_event(artifact, read_metadata(DEFAULT_DIR), version="too-big"))
    worker.publish(event)
    worker.refused(0, "SERQ_MAX_MODEL_BYTES")
    with Client(amqp_url, prefix) as client:
        assert {o.model_version for o in classify_all(client, short_clips[:4])} == {load_default().version}


def test_a_worker_without_trusted_keys_refuses_every_announcement(start_worker, amqp_url, prefix, short_clips,
                                                                  monkeypatch):
    monkeypatch.delenv("SERQ_TRUSTED_KEYS")
    port = free_port()
    worker = Observed(start_worker({"SERQ_METRICS_PORT": str(port)}), port, amqp_url, prefix)
    assert re.search(r"WARNING .*no trusted keys \(SERQ_TRUSTED_KEYS\)", worker.log()), worker.log()[-2000:]
    meta = read_metadata(DEFAULT_DIR)
    worker.publish(signed(forged_event((DEFAULT_DIR / meta.artifact).read_bytes(), meta, version="signed-copy")))
    worker.refused(0, "no trusted keys")
    with Client(amqp_url, prefix) as client:
        attack_row("signed announcement to a worker without SERQ_TRUSTED_KEYS", classify_all(client, short_clips[:4]),
                   meta.version)


def test_allow_unsigned_models_accepts_unsigned_ones_and_says_so(start_worker, amqp_url, prefix, short_clips,
                                                                  untrusted_keys):
    """SERQ_ALLOW_UNSIGNED_MODELS=true (development only): logged at start-up; an unsigned model is served, but a
    signature that is present and wrong (an untrusted key) is still refused."""
    port = free_port()
    worker = Observed(start_worker({"SERQ_METRICS_PORT": str(port), "SERQ_ALLOW_UNSIGNED_MODELS": "true"}),
                      port, amqp_url, prefix)
    assert re.search(r"WARNING .*SERQ_ALLOW_UNSIGNED_MODELS=true: unsigned models are accepted", worker.log()), \
        worker.log()[-2000:]
    meta = read_metadata(DEFAULT_DIR)
    artifact = (DEFAULT_DIR / meta.artifact).read_bytes()
    worker.publish(sign_event(forged_event(artifact, meta, version="attacker-copy"),
                              Signer.load(untrusted_keys / "signing.key")))
    worker.refused(0, "not signed by a trusted key")
    worker.publish(forged_event(artifact, meta, version="unsigned-dev-copy"))
    worker.wait_log(lambda log: "model swapped model_version=unsigned-dev-copy" in log, "the unsigned model")
    with Client(amqp_url, prefix) as client:
        assert {o.model_version for o in classify_all(client, short_clips[:4])} == {"unsigned-dev-copy"}
    assert worker.metric("serq_model_refused_total") == 1
