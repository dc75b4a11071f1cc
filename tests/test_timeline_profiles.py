"""Speaker profiles applied to timelines: locally and streamed over two real workers, with the real models.

The recording joins clips of one RAVDESS actor (every emotion); the profile is built
from other clips of that actor (neutral and calm), as enrolment would. A usable
profile sends every window through the speaker-normalised model; a too-small one
leaves the plain model, and the result says which, as a classify reply does.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from serq.client.errors import ServiceError
from serq.client.timeline import TimelineStream, stream_timeline
from serq.settings import Settings
from serq.worker.engine.timeline import RATE, read_blocks, timeline_file

from conftest import ravdess_clip
from helpers.handlers import handle
from helpers.recordings import stretches, trimmed, write_recording

pytestmark = pytest.mark.corpus

ACTOR = 11
#: (emotion, intensity) of the joined clips: neutral has no strong intensity in RAVDESS.
RECORDED = [(1, 1), (2, 2), (3, 2), (4, 2), (5, 2), (6, 2), (7, 2), (8, 2)]
#: (emotion, intensity, statement, repetition) of the enrolment clips, none of them in the recording.
ENROLLED = [(2, 1, 1, 2), (2, 1, 2, 1), (2, 1, 2, 2), (1, 1, 2, 1), (1, 1, 2, 2)]


def vectors(paths) -> np.ndarray:
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import extract

    return np.stack([extract(decode(p).samples) for p in paths])


def levels(paths) -> np.ndarray:
    """The clips' speech levels (what enrolment records in the profile)."""
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import waveform_speech_level

    return np.array([waveform_speech_level(decode(p).samples) for p in paths])


@pytest.fixture(scope="module")
def models():
    from serq.models.registry import load_default, load_speaker_model
    from serq.settings import get_settings

    speaker = load_speaker_model(get_settings().model_dir)
    assert speaker is not None, "the shipped speaker model must load"
    return load_default(), speaker


@pytest.fixture(scope="module")
def profile(ravdess_dir):
    from serq.worker.engine import profiles
    from serq.worker.engine.features import FEATURE_VERSION

    paths = [ravdess_clip(ACTOR, e, intensity=i, statement=s, repetition=r) for e, i, s, r in ENROLLED]
    return profiles.build("caller-11", vectors(paths), FEATURE_VERSION, levels=levels(paths))


@pytest.fixture(scope="module")
def recording(ravdess_dir, tmp_path_factory):
    """The joined recording as FLAC, and each clip alone as WAV."""
    clips = [trimmed(ravdess_clip(ACTOR, e, intensity=i)) for e, i in RECORDED]
    path, _, files = write_recording(tmp_path_factory.mktemp("timeline-profiles"), clips)
    return path, files


def test_a_usable_profile_sends_every_window_through_the_speaker_model(recording, models, profile):
    from serq.worker.engine.inference import classify

    path, files = recording
    plain, speaker = models
    timeline = timeline_file(path, plain, profile=profile, speaker_model=speaker)
    assert (timeline.normalisation, timeline.profile_status) == ("speaker", "used")
    assert timeline.model_version == speaker.version != plain.version
    found = stretches(timeline)
    assert len(found) == len(files)
    # Each stretch agrees with its clip classified alone with the same profile (in most cases,
    # as for the plain model: windows and smoothing may differ on a clip or two).
    alone = [classify(f, plain, Settings(), profile=profile, speaker_model=speaker) for f in files]
    assert {r.normalisation for r in alone} == {"speaker"}
    ours = [max(labels, key=labels.get) for _, _, labels in found]
    agree = sum(r.label == label for r, label in zip(alone, ours))
    assert agree >= 6, list(zip([r.label for r in alone], ours))
    # The profile changed what the model heard: not the plain timeline under another name.
    without = timeline_file(path, plain)
    assert (without.normalisation, without.profile_status) == ("none", None)
    assert [s.probabilities for s in without.segments] != [s.probabilities for s in timeline.segments]


def test_a_profile_of_too_few_clips_leaves_the_plain_model(recording, models, profile):
    from serq.worker.engine import profiles
    from serq.worker.engine.features import FEATURE_VERSION

    path, _ = recording
    plain, speaker = models
    small = profiles.build("caller-11", np.array(profile.mean, np.float32)[None, :], FEATURE_VERSION,
                           levels=[profile.level_db])
    timeline = timeline_file(path, plain, profile=small, speaker_model=speaker)
    assert (timeline.normalisation, timeline.profile_status, timeline.model_version) == \
        ("none", "too_few_clips", plain.version)
    plain_only = timeline_file(path, plain)
    assert timeline.model_dump(exclude={"normalisation", "profile_status"}) == \
        plain_only.model_dump(exclude={"normalisation", "profile_status"})


@pytest.mark.broker
def test_streamed_with_a_profile_over_two_workers_equals_local(recording, models, profile, start_worker, amqp_url,
                                                               prefix):
    path, _ = recording
    plain, speaker = models
    local = timeline_file(path, plain, profile=profile, speaker_model=speaker)
    start_worker()
    start_worker()
    settings = Settings(amqp_url=amqp_url, prefix=prefix)
    from serq.client import Client

    with Client(settings=settings, timeout=60) as client:
        streamed = stream_timeline(client, path, chunk_s=1.5, profile=profile)
        assert (streamed.normalisation, streamed.profile_status, streamed.model_version) == \
            ("speaker", "used", speaker.version)
        assert len(streamed.segments) == len(local.segments)
        for a, b in zip(streamed.segments, local.segments):
            assert (a.start, a.end, a.label, a.windows) == (b.start, b.end, b.label, b.windows)
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)

        # A stream started with a profile refuses a chunk without it (or with another one).
        blocks = read_blocks(path, RATE, block_s=1.5)
        with TimelineStream(client, timeout=60, profile=profile) as stream:
            first = stream.send(next(blocks))
            assert (first.normalisation, first.profile_status) == ("speaker", "used")
            stream._cursor._profile = None  # what a client that forgot the profile would send
            with pytest.raises(ServiceError) as refused:
                stream.send(next(blocks))
        assert refused.value.code == "invalid_request" and "x-serq-profile" in str(refused.value)


def test_cli_speaker_option(recording, profile, tmp_path, capsys, isolated_env):
    import json

    from serq.cli import main
    from serq.client.profiles import ProfileStore
    from serq.schemas import Timeline

    path, _ = recording
    ProfileStore(tmp_path / "profiles").put(profile)
    assert main(["timeline", str(path), "--json", "--speaker", "caller-11", "--dir", str(tmp_path / "profiles")]) == 0
    printed = Timeline.model_validate(json.loads(capsys.readouterr().out))
    assert (printed.normalisation, printed.profile_status) == ("speaker", "used")
    assert main(["timeline", str(path), "--speaker", "caller-11", "--dir", str(tmp_path / "profiles")]) == 0
    assert "speaker profile used" in capsys.readouterr().out
    assert main(["timeline", str(path), "--speaker", "nobody", "--dir", str(tmp_path / "profiles")]) == 2
    err = capsys.readouterr().err
    assert "[not_found]" in err and "'nobody'" in err


def test_bot_timeline_with_a_speaker(recording, profile, tmp_path, isolated_env):
    """The bot's `timeline FILE --speaker S --local` renders what `serq timeline --speaker` prints."""
    from serq.cli.bot import Bot
    from serq.client.profiles import ProfileStore

    path, _ = recording
    store = tmp_path / "profiles"
    ProfileStore(store).put(profile)
    out = io.StringIO()
    bot = Bot([path.parent], stdin=io.StringIO(), stdout=out, interactive=False, profiles_dir=store)
    bot.onecmd(f"timeline {path} --local --speaker caller-11")
    bot.onecmd(f"timeline {path} --local --speaker nobody")
    text = out.getvalue()
    assert "speaker profile used" in text
    assert "no profile for 'nobody'" in text


def test_a_state_that_pairs_a_profile_with_the_plain_model_is_refused(recording, models, profile, tmp_path):
    """A forged stream state (profile in use, but naming the plain model) gets a typed error, not a crash:
    its seal does not verify, and even sealed with the deployment's key (leaked) it does not fit together."""
    from serq.errors import InvalidRequest
    from serq.schemas.profiles import PROFILE_HEADER
    from serq.schemas.timeline import PCM_CONTENT_TYPE
    from serq.worker.engine import profiles
    from serq.worker.engine.timeline import seal_state

    path, _ = recording
    plain, speaker = models
    key = "a-leaked-state-key-0123456789"
    settings = Settings(model_dir=tmp_path / "models", state_key=key)
    blocks = read_blocks(path, RATE, block_s=1.5)
    b0, b1 = next(blocks), next(blocks)

    def chunk(body: np.ndarray, **headers):
        headers = {"x-serq-stream-id": "s1", PROFILE_HEADER: profiles.to_json(profile)} | headers
        return handle("timeline.chunk", body.astype("<f4").tobytes(), headers, model=plain,
                      content_type=PCM_CONTENT_TYPE, settings=settings, speaker_model=speaker).body

    first = chunk(b0, **{"x-serq-seq": 0})
    assert first.state.profile_sha256 and first.model_version == speaker.version
    rest = np.concatenate([b0, b1])[first.next_offset:]
    forged = first.state.model_copy(update={"model_version": plain.version})
    with pytest.raises(InvalidRequest, match="not sealed by a worker of this deployment"):
        chunk(rest, **{"x-serq-seq": 1, "x-serq-offset": first.next_offset, "x-serq-state": forged.model_dump_json()})
    resealed = seal_state(forged, key.encode())
    with pytest.raises(InvalidRequest, match="not speaker-normalised"):
        chunk(rest, **{"x-serq-seq": 1, "x-serq-offset": first.next_offset,
                       "x-serq-state": resealed.model_dump_json()})
    # The genuine state goes on.
    second = chunk(rest, **{"x-serq-seq": 1, "x-serq-offset": first.next_offset,
                            "x-serq-state": first.state.model_dump_json()})
    assert second.model_version == speaker.version and second.profile_status == "used"
