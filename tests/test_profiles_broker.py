"""Speaker profiles through the real broker: enrol, classify with the profile, updates, fallback, errors.

A real `serq worker` subprocess serves a tiny speaker-normalised model trained
here on three actors; the speakers enrolled are others. Workers keep nothing:
the profile goes out in ``x-serq-profile`` and comes back in the reply.
"""

from __future__ import annotations

import time

import pika
import pytest

from serq.schemas import EnrollResult
from serq.settings import get_settings

from conftest import ravdess_clip

pytestmark = [pytest.mark.broker, pytest.mark.corpus, pytest.mark.slow]

CALM = [(2, i, s, r) for i in (1, 2) for s in (1, 2) for r in (1, 2)]  # (emotion, intensity, statement, repetition)


@pytest.fixture
def client(speaker_version, model_dir, start_worker, amqp_url, prefix):
    from serq.client import Client

    start_worker(env={"SERQ_MODEL_DIR": str(model_dir)})
    with Client(amqp_url, prefix, timeout=60) as c:
        yield c


def test_enrol_then_classify_with_the_profile_round_trip(client, speaker_version, tmp_path):
    from serq.client.profiles import SpeakerProfiles

    speakers = SpeakerProfiles(client, tmp_path / "profiles")
    actor = 11
    profile = speakers.enroll("caller-11", [ravdess_clip(actor, *c) for c in CALM[:5]], updates=True)
    assert profile.count == 5 and profile.updates and profile.speaker_key == "caller-11"
    # The profile carries the speaker's speech level: the mean of the enrolment clips' active-speech levels.
    enrolled_levels = [clip_level(ravdess_clip(actor, *c)) for c in CALM[:5]]
    assert profile.level_db == pytest.approx(sum(enrolled_levels) / 5, abs=1e-3)
    assert speakers.get("caller-11") == profile  # stored on disk, read back equal
    assert sorted(speakers.store.keys()) == ["caller-11"]

    clip = ravdess_clip(actor, 5, 2, 1, 1)
    followed = []
    with client.subscribe(None, lambda r, key: followed.append(r)):
        result = speakers.classify("caller-11", clip)
        deadline = time.monotonic() + 60  # the copy goes out after the reply, on the subscription's connection
        while not followed and time.monotonic() < deadline:
            time.sleep(0.05)
    # Followers on <prefix>.results see the result, never the speaker's profile.
    assert [r.request_id for r in followed] == [result.request_id] and followed[0].profile is None
    assert result.normalisation == "speaker" and result.profile_status == "used"
    assert result.model_version == speaker_version and result.profile_clips == 5
    assert result.profile.count == 6 and speakers.get("caller-11").count == 6  # the update came back and was kept
    assert result.profile.level_db == pytest.approx((sum(enrolled_levels) + clip_level(clip)) / 6, abs=1e-3)

    # A profile from before profiles carried a level: the level-reading speaker model refuses it, typed, saying
    # what to do; a fresh enrolment works.
    from serq.client import ServiceError
    from serq.worker.engine import profiles as engine_profiles

    legacy = engine_profiles.to_json(profile.model_copy(update={"level_db": None})).replace(',"level_db":null', "")
    with pytest.raises(ServiceError) as old:
        client.classify(clip, headers={"x-serq-profile": legacy})
    assert old.value.code == "invalid_request" and "enrol the speaker again" in str(old.value)

    plain = speakers.classify("someone-unknown", clip)  # no profile: the plain model, and the reply says so
    assert (plain.normalisation, plain.profile_status, plain.profile) == ("none", None, None)
    assert plain.model_version != speaker_version

    assert speakers.delete("caller-11") and speakers.get("caller-11") is None
    assert not speakers.delete("caller-11")


def clip_level(path) -> float:
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import analyse, speech_level

    audio = decode(path)
    return speech_level(analyse(audio.samples, audio.sample_rate))


def test_a_small_profile_falls_back_to_the_plain_model(client, speaker_version):
    from serq.client.profiles import SpeakerProfiles

    speakers = SpeakerProfiles(client)  # in memory
    profile = speakers.enroll("caller-12", [ravdess_clip(12, *c) for c in CALM[:2]])  # below min_clips
    assert profile.count == 2 and not profile.updates
    result = speakers.classify("caller-12", ravdess_clip(12, 4, 1, 1, 1))
    assert (result.normalisation, result.profile_status, result.profile_clips) == ("none", "too_few_clips", 2)
    assert result.model_version != speaker_version
    assert result.profile is None and speakers.get("caller-12").count == 2  # no updates unless allowed


def test_bad_profiles_and_enrol_requests_get_typed_errors(client):
    from serq.client import ServiceError

    clip = ravdess_clip(13, 1)
    with pytest.raises(ServiceError) as bad:
        client.classify(clip, headers={"x-serq-profile": '{"speaker_key": "x"}'})
    assert bad.value.code == "invalid_request" and "x-serq-profile" in str(bad.value)
    with pytest.raises(ServiceError) as anonymous:
        client.call(clip, type="enroll")
    assert anonymous.value.code == "invalid_request"
    with pytest.raises(ServiceError) as empty:
        client.call(b"", type="enroll", headers={"x-serq-speaker": "k"})
    assert empty.value.code == "empty"
    # The worker is still serving.
    reply = client.call(clip, type="enroll", headers={"x-serq-speaker": "k"})
    assert isinstance(reply, EnrollResult) and reply.added and reply.profile.count == 1


def test_raw_pika_enrol_matches_the_contract(client, amqp_url, prefix):
    """Any AMQP client: an `enroll` request is the file's bytes plus headers; the reply is EnrollResult JSON."""
    import json
    import uuid

    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        ch = conn.channel()
        replies = []
        ch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
        cid = uuid.uuid4().hex
        ch.basic_publish("", f"{prefix}.classify", ravdess_clip(14, 2).read_bytes(), pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=cid, content_type="audio/flac", type="enroll",
            headers={"x-serq-speaker": "raw-14", "x-serq-profile-updates": True}))
        while not replies:
            conn.process_data_events(time_limit=1)
        props, body = replies[0]
        assert props.correlation_id == cid and props.type == "serq.EnrollResult"
        reply = json.loads(body)
        assert reply["speaker_key"] == "raw-14" and reply["added"] is True
        assert reply["profile"]["count"] == 1 and reply["profile"]["updates"] is True
        assert set(reply["profile"]) == {"speaker_key", "feature_version", "count", "mean", "m2", "level_db",
                                         "updates", "created", "updated"}
        assert -80.0 < reply["profile"]["level_db"] < 0.0  # a real clip's speech level, dB re full scale
    finally:
        conn.close()


def test_serq_profiles_commands(client, speaker_version, amqp_url, prefix, tmp_path, monkeypatch, capsys):
    import json

    from serq.cli import main

    monkeypatch.setenv("SERQ_AMQP_URL", amqp_url)
    monkeypatch.setenv("SERQ_PREFIX", prefix)
    get_settings.cache_clear()
    try:
        store = ["--dir", str(tmp_path / "p")]
        calm = [str(ravdess_clip(15, *c)) for c in CALM[:4]]
        assert main(["profiles", "enroll", "caller-15", *calm, *store, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["count"] == 4
        assert main(["profiles", "classify", "caller-15", str(ravdess_clip(15, 3)), *store, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["normalisation"] == "speaker" and result["model_version"] == speaker_version
        assert main(["profiles", "list", *store]) == 0 and capsys.readouterr().out.split() == ["caller-15"]
        assert main(["profiles", "delete", "caller-15", *store]) == 0
        assert main(["profiles", "show", "caller-15", *store]) == 1
    finally:
        get_settings.cache_clear()
