"""The bot's `timeline` and speaker-profile commands (`enroll`, `classify --speaker`, `profiles`, `forget`).

The broker test drives `serq bot` as a subprocess against a real worker that serves
the tiny speaker-normalised model of conftest's ``speaker_version`` (trained once per
module); the speaker enrolled is an actor that model never heard. Recordings for
`timeline` are RAVDESS clips joined with 2 s of quiet room noise, as in
tests/test_timeline_corpus.py (tests/helpers/recordings.py).
"""

from __future__ import annotations

import re

import pytest
import soundfile as sf

from serq.schemas import SpeakerProfile

from conftest import ravdess_clip
from helpers.bot import SAMPLES, bot, run_bot
from helpers.recordings import join, trimmed

NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"
#: Actor 11's neutral (statements 1-2, repetitions 1-2) and calm (statement 1) clips: the enrolment.
ENROL = [(1, 1, s, r) for s in (1, 2) for r in (1, 2)] + [(2, 1, 1, r) for r in (1, 2)]
SEGMENT = re.compile(r"^\s+\d+:\d\d\.\d–\d+:\d\d\.\d  (\w+)\s", re.M)


@pytest.fixture
def call(ravdess_dir, tmp_path):
    """Three clips of different emotions and speakers, 2 s apart: three speech segments."""
    audio, spans = join([trimmed(ravdess_clip(actor, emotion, intensity=2)) for actor, emotion in
                         [(1, 5), (2, 4), (3, 3)]], pause=2.0)
    path = tmp_path / "call.flac"
    sf.write(path, audio, 16000)
    return path, spans


def local_view(path, model_dir) -> str:
    """What `serq timeline FILE` prints with the registry in ``model_dir``."""
    from serq.cli.timeline_view import local_timeline, render_timeline
    from serq.settings import Settings

    return render_timeline(local_timeline(path, Settings(model_dir=model_dir)))


def profile(key: str, count: int = 5) -> SpeakerProfile:
    return SpeakerProfile(speaker_key=key, feature_version="test", count=count, mean=[1.0, 2.0], m2=[0.5, 0.5])


# ------------------------------------------------------------------ in-process


def test_help_lists_the_new_commands():
    b, out = bot()
    b.onecmd("help")
    text = out.getvalue()
    for usage in ("timeline FILE [--png OUT] [--local]", "enroll SPEAKER FILE|DIR ... [--updates]",
                  "classify FILE|DIR ... [--speaker S]", "profiles ", "forget SPEAKER"):
        assert f"\n  {usage}" in "\n" + text, usage
    assert b.failures == 0


def test_profiles_and_forget_in_memory():
    b, out = bot()
    b.onecmd("profiles")
    assert "no speaker profiles yet (kept in memory" in out.getvalue()
    b.profiles.put(profile("caller-7", count=6))
    b.onecmd("profiles")
    assert re.search(r"^  caller-7\s+6 clips  features test  updates off", out.getvalue(), re.M)
    b.onecmd("forget caller-7")
    assert "forgot 'caller-7': profile deleted" in out.getvalue() and b.profiles.keys() == []
    assert b.failures == 0
    b.onecmd("forget caller-7")
    assert b.failures == 1 and out.getvalue().rstrip().endswith("error [not_found]: no profile for 'caller-7' (see `profiles`)")


def test_usage_errors_are_one_line_each():
    b, out = bot()
    for line in ("enroll", "enroll only-a-speaker", "timeline", "forget", "forget a b", "classify --speaker"):
        b.onecmd(line)
    errors = [x for x in out.getvalue().splitlines() if x.startswith("error")]
    assert len(errors) == b.failures == 6 and all(x.startswith("error [usage]") for x in errors), errors


def test_tab_completion_after_the_new_commands(tmp_path, monkeypatch):
    (tmp_path / "call.wav").write_bytes(b"")
    (tmp_path / "calm.flac").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    b, _ = bot(paths=())  # no known clips: only the file system and the profiles
    b.profiles.put(profile("caller-1"))
    b.profiles.put(profile("carol"))
    assert b.complete_timeline("ca", "timeline ca", 9, 11) == ["call.wav", "calm.flac"]
    assert b.complete_enroll("ca", "enroll ca", 7, 9) == ["caller-1", "carol"]  # first: a speaker
    assert b.complete_enroll("ca", "enroll carol ca", 13, 15) == ["call.wav", "calm.flac"]  # then files
    assert b.complete_classify("car", "classify --speaker car", 19, 22) == ["carol"]
    assert b.complete_classify("--s", "classify --s", 9, 12) == ["--speaker"]
    assert b.complete_classify("cal", "classify --speaker carol cal", 25, 28) == ["call.wav", "calm.flac"]
    assert b.complete_forget("caller", "forget caller", 7, 13) == ["caller-1"]


def test_answered_by_names_the_path():
    from serq.cli.bot import answered_by

    def result(normalisation, status, clips):
        return type("R", (), {"normalisation": normalisation, "profile_status": status, "profile_clips": clips})

    assert answered_by(result("speaker", "used", 6)) == "path: speaker-normalised (profile of 6 clips used)"
    assert answered_by(result("none", None, None)) == "path: plain, fallback (no profile)"
    assert answered_by(result("none", "too_few_clips", 2)) == "path: plain, fallback (profile of 2 clips is too few)"
    assert "enroll again" in answered_by(result("none", "feature_version_mismatch", 6))
    assert "no speaker-normalised model" in answered_by(result("none", "no_speaker_model", 6))


def test_demo_script_shows_a_timeline_of_joined_samples(tmp_path):
    from serq.cli.demo import joined_recording, script

    clips = sorted(SAMPLES.glob("*.flac"))
    recording = joined_recording(clips, tmp_path / "call.flac")
    expected = sum(sf.info(c).frames for c in clips[:3]) + 3 * 2 * 16000
    assert sf.info(recording).frames == expected and sf.info(recording).samplerate == 16000
    lines = script(clips, play=False, train=False, png_dir=tmp_path, recording=recording).splitlines()
    assert f"timeline {recording} --png {tmp_path / 'call-timeline.png'}" in lines
    assert lines.index(f"timeline {recording} --png {tmp_path / 'call-timeline.png'}") < lines.index("quit")
    assert not any(x.startswith("timeline") for x in script(clips, play=False, train=False, png_dir=None).splitlines())


# ------------------------------------------------------------------ subprocess: script mode


@pytest.mark.corpus
def test_timeline_without_a_broker_is_computed_here_with_a_png(call, tmp_path):
    path, spans = call
    png = tmp_path / "out" / "call.png"
    png.parent.mkdir()
    proc = run_bot(f"timeline {path} --png {png}\n", str(SAMPLES),
                   env={"SERQ_AMQP_URL": NO_BROKER, "SERQ_MODEL_DIR": str(tmp_path / "models")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "note: cannot reach RabbitMQ" in out and "computing the timeline here instead" in out
    assert "timeline of call.flac: computed here with the active model" in out
    assert local_view(path, tmp_path / "models") in out  # exactly what `serq timeline` prints
    assert len(SEGMENT.findall(out)) == len(spans) == 3
    assert f"  wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "Traceback" not in proc.stderr


@pytest.mark.broker
@pytest.mark.corpus
@pytest.mark.slow
def test_timeline_enroll_classify_with_the_profile_and_forget_through_a_worker(
        call, speaker_version, model_dir, start_worker, amqp_url, prefix, tmp_path):
    start_worker(env={"SERQ_MODEL_DIR": str(model_dir)})
    path, spans = call
    png = tmp_path / "call.png"
    profiles = tmp_path / "profiles"
    enrol = " ".join(str(ravdess_clip(11, *c)) for c in ENROL)
    angry = ravdess_clip(11, 5, 2, 1, 1)
    env = {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(model_dir)}
    commands = [f"timeline {path} --png {png}", f"enroll actor-11 {enrol}", "profiles",
                f"classify --speaker actor-11 {angry}", f"classify --speaker nobody {angry}"]
    proc = run_bot("\n".join(commands) + "\n", str(SAMPLES), "--profiles", str(profiles), env=env, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in out + proc.stderr and not re.search(r"^error", out, re.M)
    parts = dict(zip(commands, out.split("serq> ")[1:]))  # each command's output, by the echoed command

    # timeline: streamed to the worker, the same picture as computed locally, and the figure.
    shown = parts[commands[0]]
    assert "timeline of call.flac: streamed to the workers through the broker" in shown
    assert local_view(path, model_dir) in shown
    assert len(SEGMENT.findall(shown)) == len(spans)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # enroll: six clips through the worker, one profile file in --profiles DIR (statistics only).
    assert "actor-11: profile of 6 clips (6 added; features " in parts[commands[1]]
    assert f"kept in {profiles}" in parts[commands[1]]
    (stored,) = profiles.glob("*.json")
    saved = SpeakerProfile.model_validate_json(stored.read_text())
    assert saved.speaker_key == "actor-11" and saved.count == 6 and stored.stat().st_mode & 0o077 == 0
    assert re.search(r"^  actor-11\s+6 clips", parts[commands[2]], re.M)

    # classify --speaker: the speaker-normalised model answers; an unknown speaker falls back to the plain one.
    with_profile = parts[commands[3]]
    assert re.search(rf"^{re.escape(angry.name)}: \w+ \(\d+%\)  model {re.escape(speaker_version)}", with_profile, re.M)
    assert "path: speaker-normalised (profile of 6 clips used)" in with_profile
    unknown = parts[commands[4]]
    assert "note: no profile for 'nobody'" in unknown and "path: plain, fallback (no profile)" in unknown
    assert f"model {speaker_version}" not in unknown

    # A later session finds the profile in --profiles DIR; forget deletes the file; forgetting again is an error.
    commands = ["profiles", "forget actor-11", "profiles", "forget actor-11"]
    proc = run_bot("\n".join(commands) + "\n", "--profiles", str(profiles), env={"SERQ_AMQP_URL": NO_BROKER})
    out = proc.stdout
    parts = out.split("serq> ")[1:]
    assert re.search(r"^  actor-11\s+6 clips", parts[0], re.M)
    assert "forgot 'actor-11': profile deleted" in parts[1] and list(profiles.glob("*.json")) == []
    assert "no speaker profiles yet" in parts[2]
    errors = [x for x in out.splitlines() if x.startswith("error")]
    assert errors == ["error [not_found]: no profile for 'actor-11' (see `profiles`)"] and proc.returncode == 1
