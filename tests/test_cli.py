"""The `serq` command line: help, and `serq predict` output and exit codes.

Predictions use the shipped default model (``isolated_env`` leaves the registry
empty), so expected labels are never hard-coded; the contract is the shape.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from serq.cli import COMMAND_MODULES, build_parser, main
from serq.models.registry import default_metadata
from serq.schemas import ErrorReply, PredictionResult

from helpers import REPO

RESULT_KEYS = {"file", "label", "confidence", "probabilities", "spectral", "model_version", "timings_ms"}


def write_tone(path, freq=220.0, seconds=1.0, rate=22_050):
    t = np.arange(int(seconds * rate)) / rate
    # A vowel-like harmonic sound with an envelope, so it is not "silent".
    wave = sum(np.sin(2 * np.pi * k * freq * t) / k for k in range(1, 6)) * np.hanning(len(t))
    sf.write(path, (0.3 * wave / np.abs(wave).max()).astype(np.float32), rate)
    return path


def run_cli(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, [line for line in out.out.splitlines() if line.strip()], out.err


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "serq", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    commands = _subparsers(build_parser())
    assert len(commands) >= len(COMMAND_MODULES)
    for name in commands:
        assert name in proc.stdout
    assert "SERQ_" in proc.stdout


def test_help_does_not_import_the_ml_stack():
    # `serq --help` must start fast: command modules import what a command runs when it runs.
    heavy = ('librosa', 'sklearn', 'skops', 'scipy', 'numpy', 'pydantic', 'pika')
    code = f"import sys; from serq.cli import build_parser; build_parser(); print(sorted(m for m in {heavy} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


#: A broker address nobody listens on: the command fails at once with no_broker.
NO_BROKER = "amqp://guest:guest@127.0.0.1:1/%2F"


@pytest.mark.parametrize("command", [["classify", "samples"], ["train", "--data", "x"],
                                     ["timeline", "--broker", "samples/happy-03-01-03-02-01-01-02.flac"],
                                     ["models", "list"], ["profiles", "list"],
                                     ["schemas", "check"]])
def test_broker_only_commands_do_not_import_the_ml_stack(command, tmp_path):
    # What the base install runs (pika, pydantic, numpy, soundfile): scipy, scikit-learn, librosa are the worker's.
    code = ("import sys; from serq.cli import main; code = main(sys.argv[1:]); "
            "print(code, sorted(m for m in ('librosa', 'sklearn', 'skops', 'scipy', 'soxr') if m in sys.modules))")
    env = os.environ | {"SERQ_AMQP_URL": NO_BROKER, "SERQ_MODEL_DIR": str(tmp_path / "models")}
    proc = subprocess.run([sys.executable, "-c", code, *command], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    status, imported = proc.stdout.splitlines()[-1].split(" ", 1)  # the command's own output comes first
    assert imported == "[]", proc.stdout + proc.stderr
    assert status in ("0", "2"), proc.stdout + proc.stderr
    if status == "2":
        assert "[no_broker]" in proc.stderr, proc.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("path", ["predict", "evaluate", "train", "models list", "models show", "models activate",
                                  "models rollback", "models build-default", "data download"])
def test_every_printing_command_has_json(path):
    parser = build_parser()
    for word in path.split():
        parser = _subparsers(parser)[word]
    assert any("--json" in a.option_strings for a in parser._actions), path


def test_predict_json_one_object_per_file(tmp_path, isolated_env, capsys):
    clips = [write_tone(tmp_path / "a.wav", 180.0), write_tone(tmp_path / "b.flac", 240.0, rate=16_000)]
    code, lines, _ = run_cli(capsys, "predict", "--json", *map(str, clips))
    assert code == 0
    assert len(lines) == 2
    default = default_metadata()
    for line, clip in zip(lines, clips):
        obj = json.loads(line)
        assert RESULT_KEYS <= set(obj)
        PredictionResult.model_validate(obj)
        assert obj["file"] == str(clip)
        assert set(obj["probabilities"]) == set(default.labels)
        assert sum(obj["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert obj["label"] in default.labels
        assert obj["confidence"] == pytest.approx(max(obj["probabilities"].values()), abs=1e-6)
        assert set(obj["timings_ms"]) == {"decode", "features", "inference"}
        assert obj["model_version"] == default.version
        assert obj["spectral"]["sample_rate"] in (22_050, 16_000)


def test_predict_failures_are_reported_per_file_and_set_the_exit_code(tmp_path, isolated_env, capsys):
    good = write_tone(tmp_path / "good.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    empty = tmp_path / "empty.ogg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.wav"
    code, lines, _ = run_cli(capsys, "predict", "--json", str(good), str(garbage), str(empty), str(missing))
    assert code != 0
    objs = [json.loads(line) for line in lines]
    assert [o["file"] for o in objs] == [str(good), str(garbage), str(empty), str(missing)]  # nothing lost
    assert "label" in objs[0] and "error" not in objs[0]
    codes = [o["error"]["code"] for o in objs[1:]]
    assert codes == ["unsupported_format", "empty", "not_found"]
    for obj in objs[1:]:
        ErrorReply.model_validate(obj)
        assert set(obj) == {"file", "error"} and obj["error"]["message"]


def test_predict_a_directory_and_human_output(tmp_path, isolated_env, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_tone(folder / "x.wav")
    write_tone(folder / "y.wav", 300.0)
    (folder / "notes.txt").write_text("not audio, not considered")
    code, lines, _ = run_cli(capsys, "predict", "--json", str(folder))
    assert code == 0 and [json.loads(line)["file"] for line in lines] == [str(folder / "x.wav"), str(folder / "y.wav")]

    code, lines, _ = run_cli(capsys, "predict", str(folder / "x.wav"))
    assert code == 0
    assert lines[0].startswith(f"{folder / 'x.wav'}: ") and "pitch" in lines[0]
    assert len(lines) == 1 + len(default_metadata().labels)  # a bar per emotion


def test_predict_silent_file_claims_no_emotion(tmp_path, isolated_env, capsys):
    path = tmp_path / "silence.wav"
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16_000, np.float32), 16_000, format="WAV")
    path.write_bytes(buf.getvalue())
    code, lines, _ = run_cli(capsys, "predict", "--json", str(path))
    obj = json.loads(lines[0])
    assert code == 0 and obj["silent"] is True and obj["label"] is None


def test_predict_unknown_model_version_is_a_typed_error(tmp_path, isolated_env, capsys):
    code, _, err = run_cli(capsys, "predict", "--model", "no-such-version", str(write_tone(tmp_path / "a.wav")))
    assert code == 2 and "[model_error]" in err


@pytest.mark.corpus
def test_predict_subprocess_on_corpus_clips(ravdess_dir, tmp_path):
    from conftest import ravdess_clip

    clips = [ravdess_clip(actor=20, emotion=e) for e in (1, 5)]
    env = {"SERQ_MODEL_DIR": str(tmp_path / "models"), "SERQ_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "serq", "predict", "--json", *map(str, clips), str(tmp_path / "nope.wav")],
                          capture_output=True, text=True, timeout=300, env=os.environ | env)
    assert proc.returncode == 1
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(objs) == 3
    for obj in objs[:2]:
        assert RESULT_KEYS <= set(obj) and obj["spectral"]["pitch"]["median_hz"] > 60
    assert objs[2]["error"]["code"] == "not_found"
