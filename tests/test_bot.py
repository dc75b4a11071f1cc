"""The demo bot: real playback into an ALSA file device, spectrum views, script mode,
broker commands against a real worker and trainer.

Playback tests run the bot as a subprocess with ``ALSA_CONFIG_PATH`` pointing to a
config written here, so libasound reads it when simpleaudio opens the device; the
``file`` plugin writes what was played to a WAV that is compared with the clip. A
null device returns at once, so nothing here assumes playback takes real time.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers.bot import SAMPLES, bot, run_bot, sample

REPO = Path(__file__).resolve().parents[1]
def alsa_to_file(tmp_path: Path) -> tuple[dict, Path]:
    """An ALSA config whose default device writes a WAV file; the env that selects it."""
    out = tmp_path / "played.wav"
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.!default {{ type file; slave.pcm {{ type null }}; file "{out}"; format "wav" }}\n')
    return {"ALSA_CONFIG_PATH": str(conf)}, out


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n].astype(float), b[:n].astype(float)
    return float(np.corrcoef(a, b)[0, 1])


# ------------------------------------------------------------------ playback


def test_play_sends_the_clip_to_the_sound_device(tmp_path):
    env, out = alsa_to_file(tmp_path)
    clip = sample("angry")
    proc = run_bot("play angry\n", str(SAMPLES), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"played {clip.name}" in proc.stdout
    captured, rate = sf.read(out, dtype="int16")
    original, original_rate = sf.read(clip, dtype="int16")
    assert rate == original_rate
    assert abs(len(captured) - len(original)) <= 0.01 * len(original)
    assert correlation(captured, original) > 0.99


def test_play_keeps_channels_and_rate_of_the_file(tmp_path):
    """A 44.1 kHz stereo WAV is played as such: both channels, at the file's own rate."""
    import soxr

    env, out = alsa_to_file(tmp_path)
    mono, rate = sf.read(sample("happy"), dtype="float32")
    up = soxr.resample(mono, rate, 44100)
    stereo = np.stack([up, -0.5 * up], axis=1)
    src = tmp_path / "stereo.wav"
    sf.write(src, stereo, 44100, subtype="PCM_16")
    proc = run_bot(f"play {src}\n", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "44100 Hz stereo" in proc.stdout
    captured, captured_rate = sf.read(out, dtype="float32", always_2d=True)
    assert captured_rate == 44100 and captured.shape[1] == 2
    for ch in range(2):
        assert correlation(captured[:, ch], stereo[:, ch]) > 0.99


def test_play_resamples_a_rate_the_device_library_refuses(tmp_path):
    import soxr

    env, out = alsa_to_file(tmp_path)
    mono, rate = sf.read(sample("sad"), dtype="float32")
    odd = soxr.resample(mono, rate, 12000)
    src = tmp_path / "odd.wav"
    sf.write(src, odd, 12000, subtype="PCM_16")
    proc = run_bot(f"play {src}\n", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    captured, captured_rate = sf.read(out, dtype="float32")
    assert captured_rate == 48000
    back = soxr.resample(captured, captured_rate, 12000)
    assert abs(len(back) - len(odd)) <= 0.01 * len(odd)
    assert correlation(back, odd) > 0.99


def test_no_sound_device_is_a_one_line_warning_and_the_rest_works(tmp_path):
    conf = tmp_path / "asound.conf"
    conf.write_text("pcm.!default { type hw; card 63 }\n")  # a card that does not exist
    proc = run_bot("play angry\nlist\n", str(SAMPLES), env={"ALSA_CONFIG_PATH": str(conf)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and "no sound device" in warnings[0]
    assert lines[lines.index(warnings[0]) + 1] == "serq> list"
    assert sample("angry").name in proc.stdout.split("serq> list", 1)[1]
    assert "ALSA lib" not in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_stops_playback(monkeypatch, tmp_path):
    """Unit test with a fake device: KeyboardInterrupt while playing stops the sound and returns."""
    from serq.cli import playback
    class FakePlay:
        stopped = False
        polls = 0

        def is_playing(self):
            self.polls += 1
            if self.polls == 3:
                raise KeyboardInterrupt
            return True

        def stop(self):
            FakePlay.stopped = True

    fake = type("simpleaudio", (), {"play_buffer": staticmethod(lambda *a: FakePlay())})
    monkeypatch.setitem(sys.modules, "simpleaudio", fake)
    played = playback.play(sample("calm"), poll=0)
    assert played.interrupted and FakePlay.stopped


def test_pcm16_matches_the_file():
    from serq.cli.playback import pcm16

    pcm, rate = pcm16(sample("fearful"))
    data, file_rate = sf.read(sample("fearful"), dtype="int16", always_2d=True)
    assert rate == file_rate and pcm.shape == data.shape
    assert np.max(np.abs(pcm.astype(int) - data.astype(int))) <= 1


def test_pcm16_errors_are_typed(tmp_path):
    from serq.cli.playback import pcm16
    from serq.errors import SerqError

    with pytest.raises(SerqError) as missing:
        pcm16(tmp_path / "nope.wav")
    assert missing.value.code == "not_found"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(SerqError) as bad:
        pcm16(junk)
    assert bad.value.code == "unsupported_format"


# ------------------------------------------------------------------ in-process console


def test_spectrum_shows_the_engines_summary_and_writes_a_png(tmp_path):
    from serq.settings import get_settings
    from serq.worker.engine.audio import decode
    from serq.worker.engine.features import analyse, spectral_summary

    b, out = bot()
    png = tmp_path / "fig" / "angry.png"
    b.onecmd(f"spectrum angry --png {png}")
    text = out.getvalue()
    assert b.failures == 0, text
    audio = decode(sample("angry"), max_bytes=get_settings().max_bytes)
    summary = spectral_summary(analyse(audio.samples, audio.sample_rate), audio.original_rate)
    assert f"pitch median        {summary['pitch']['median_hz']:.1f} Hz" in text
    assert f"{summary['duration_s']:.2f} s" in text
    assert "log spectrum" in text and "pitch contour" in text
    assert len([line for line in text.splitlines() if " dB" in line and "Hz" in line]) >= 8
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 300 and width > 300


def test_spectrum_of_bad_audio_is_an_error_line(tmp_path):
    junk = tmp_path / "junk.flac"
    junk.write_bytes(b"\x00" * 100)
    b, out = bot()
    b.onecmd(f"spectrum {junk}")
    assert b.failures == 1
    assert out.getvalue().startswith("error [unsupported_format]:")


def test_resolve_by_number_name_prefix_and_path(tmp_path):
    from serq.errors import SerqError

    b, _ = bot()
    names = sorted(p.name for p in SAMPLES.glob("*.flac"))
    assert b.resolve("1").name == names[0]
    assert b.resolve("sad").name.startswith("sad-")
    assert b.resolve(names[2]).name == names[2]
    assert b.resolve(str(sample("calm"))) == sample("calm")
    b.files.append(tmp_path / "sad-copy.flac")
    with pytest.raises(SerqError) as many:
        b.resolve("sad")
    assert many.value.code == "usage"
    with pytest.raises(SerqError) as none:
        b.resolve("nothing-like-it")
    assert none.value.code == "not_found"


def test_tab_completion_of_file_names(tmp_path, monkeypatch):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "one.wav").write_bytes(b"")
    (tmp_path / "clips" / "notes.txt").write_text("")
    (tmp_path / "cl.flac").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    b, _ = bot()
    assert b.complete_files("cl", "play cl", 5, 7) == ["cl.flac", "clips/"]
    assert b.complete_files("clips/", "play clips/", 5, 11) == ["clips/one.wav"]
    assert b.complete_files(str(tmp_path) + "/c", "", 0, 0) == [str(tmp_path / "cl.flac"), str(tmp_path / "clips") + "/"]
    assert "angry-" in b.complete_files("ang", "play ang", 5, 8)[0]


def test_script_mode_transcript_and_exit_status(tmp_path):
    script = tmp_path / "demo.txt"
    script.write_text("# a comment\nhelp\nlist\nfrobnicate\nspectrum\nquit\nlist\n")
    proc = subprocess.run([sys.executable, "-m", "serq", "bot", str(SAMPLES), "--script", str(script)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 1
    out = proc.stdout
    assert "a comment" not in out
    for command in ("list", "play FILE", "spectrum FILE", "classify FILE|DIR", "train", "models", "accuracy", "quit"):
        assert f"  {command}" in out
    assert "error [usage]: unknown command 'frobnicate'" in out
    assert "error [usage]: the following arguments are required: file" in out
    assert out.count("serq> list") == 1, "nothing runs after quit"
    assert sum(1 for p in SAMPLES.glob("*.flac") if p.name in out) == 8
    assert "Traceback" not in proc.stderr


def test_a_clean_script_exits_zero():
    proc = run_bot("list\nhelp play\n", str(SAMPLES))
    assert proc.returncode == 0 and "play FILE" in proc.stdout


def test_models_and_accuracy_show_the_active_models_metrics(isolated_env):
    from serq.models.registry import default_metadata

    b, out = bot()
    b.onecmd("models")
    b.onecmd("accuracy")
    text = out.getvalue()
    meta = default_metadata()
    assert b.failures == 0, text
    assert f"* {meta.version}" in text
    assert f"balanced accuracy  {meta.metrics.balanced_accuracy:.3f}" in text
    assert meta.metrics.protocol in text and "speaker-independent" in text
    assert "recall" in text  # the confusion matrix


# ------------------------------------------------------------------ through the broker


def test_no_broker_is_a_clear_message_not_a_traceback():
    proc = run_bot("classify angry\nlist\n", str(SAMPLES),
                   env={"SERQ_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"})
    assert proc.returncode == 1
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error [no_broker]") and "SERQ_AMQP_URL" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "serq> list" in proc.stdout and sample("sad").name in proc.stdout


@pytest.mark.broker
def test_classify_through_a_worker_agrees_with_predict(start_worker, amqp_url, prefix, tmp_path):
    """Every sample through a real worker gets what `serq predict` computes; a bad file is one error line."""
    from serq.models.registry import Registry
    from serq.settings import Settings
    from serq.worker.engine.inference import classify

    start_worker()
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF" + b"\x00" * 60)
    env = {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}
    proc = run_bot(f"classify {junk} {SAMPLES}\n", env=env)
    assert proc.returncode == 1, "the bad file counts as a failure"
    assert [line for line in proc.stdout.splitlines() if line.startswith("error")] == [
        line for line in proc.stdout.splitlines() if line.startswith("error [unsupported_format]: junk.wav:")]
    settings = Settings(model_dir=tmp_path / "models")
    model = Registry(settings.model_dir).load_active()
    for path in sorted(SAMPLES.glob("*.flac")):
        local = classify(path, model, settings)
        assert f"{path.name}: {local.label} ({local.confidence:.0%})  model {local.model_version}" in proc.stdout
    assert proc.stdout.count("file says") == 8
    assert "agree with the label in the file name" in proc.stdout


@pytest.mark.broker
@pytest.mark.corpus
@pytest.mark.slow
def test_train_through_the_trainer_then_workers_serve_the_new_model(start_trainer, start_worker, amqp_url, prefix,
                                                                    tmp_path, ravdess_dir):
    start_trainer(env={"SERQ_DATA_ROOTS": str(ravdess_dir), "SERQ_CACHE_DIR": str(tmp_path / "cache")})
    start_worker()
    env = {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models"),
           "SERQ_RAVDESS_DIR": str(ravdess_dir)}
    proc = run_bot("train --speakers 01,02 --emotions angry,sad --max-iter 60 --folds 2 --activate always\n"
                   "classify sad\nmodels\n", str(SAMPLES), env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "extracting" in out and "registered" in out
    assert "speaker-grouped 2-fold (speaker-independent), 32 clips" in out
    header = next(line for line in out.splitlines() if line.rstrip().endswith("recall"))
    assert header.split()[:2] == ["sad", "angry"]
    version = re.search(r"model (\S+) registered; activated: True", out).group(1)
    assert f"the workers now serve model {version}" in out
    assert re.search(rf"^{re.escape(sample('sad').name)}: (sad|angry) \(\d+%\)  model {re.escape(version)}", out, re.M)
    assert f"* {version}" in out.split("serq> models", 1)[1]


def test_agreement_is_said_of_the_model_that_answered():
    # A 4-class model (as `serq demo --train` activates) answering 8 sample clips: the clips of
    # emotions it does not know are not counted, and the line names that model, not the shipped one.
    from serq.cli.bot import AgreementTally

    four = {"neutral": 0.1, "happy": 0.2, "sad": 0.1, "angry": 0.6}
    tally = AgreementTally()
    for expected in ("angry", "happy", "fearful", "calm"):
        tally.add({"label": "angry", "probabilities": four, "model_version": "v-four"}, expected)
    line = tally.summary()
    assert line.startswith("1/2 agree") and "model v-four" in line and "2 clip(s)" in line, line
    assert "shipped model" not in line
