"""Training reads are bounded: regular files only, size and duration limits, typed dataset errors,
a per-job time limit and cancellation between files; paths shown relative to the data root.

Real files (FIFOs, device links, sparse files, the shipped samples) and the real job
(:func:`run_training`) in this process; tests/reliability/test_trainer_bounds.py does the
same through a real trainer on the broker.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from serq.errors import AudioError, DatasetError, JobCancelled, TooLarge
from serq.schemas import TrainRequest
from serq.settings import Settings
from serq.worker.training.datasets import NotRegular, read_clip, regular_problem, scan, shown
from serq.worker.training.extraction import extract_clips
from serq.worker.training.job import JobGuard, run_training, scrub

from conftest import REPO

QUICK = {"hidden_layers": [16], "max_iter": 30, "augment_speeds": []}


def finishes(fn, timeout: float = 30.0):
    """``fn()``'s outcome (value or exception), failing the test if it does not return within ``timeout``
    (a blocking open of a FIFO would never return)."""
    box: list = []

    def run():
        try:
            box.append(fn())
        except Exception as exc:  # the outcome under test
            box.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert box, f"still blocked after {timeout} s"
    return box[0]


@pytest.fixture
def root(tmp_path) -> Path:
    """A data root holding the eight shipped samples twice under RAVDESS names: 16 clips, 2 per emotion,
    16 speakers (the copies' actor is the original's + 40)."""
    data = tmp_path / "data" / "corpus"
    data.mkdir(parents=True)
    for path in sorted((REPO / "samples").glob("*.flac")):
        name = path.name.split("-", 1)[1]
        shutil.copy(path, data / name)
        shutil.copy(path, data / f"{name[:18]}{int(name[18:20]) + 40:02d}.flac")
    return tmp_path / "data"


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "03-01-05-01-01-01-01.wav"
    os.mkfifo(fifo)
    assert regular_problem(fifo) == "not a regular file"
    outcome = finishes(lambda: read_clip(fifo, 1000))
    assert isinstance(outcome, NotRegular) and outcome.code == "bad_audio"


def test_a_device_is_never_read(tmp_path):
    link = tmp_path / "03-01-05-01-01-01-01.wav"
    link.symlink_to("/dev/zero")
    assert regular_problem(link) == "not a regular file"
    assert isinstance(finishes(lambda: read_clip(link, 1000)), NotRegular)


def test_a_file_over_the_size_limit_is_not_read(tmp_path):
    big = tmp_path / "big.wav"
    with open(big, "wb") as fh:  # 1 GiB, sparse: no disk, and never read
        fh.truncate(1 << 30)
    with pytest.raises(TooLarge, match="SERQ_TRAIN_MAX_FILE_BYTES"):
        read_clip(big, 64 * 1024 * 1024)


def test_missing_and_unreadable_manifest_rows_are_dataset_errors(root):
    clip = next((root / "corpus").iterdir()).name
    os.mkfifo(root / "corpus" / "fifo.wav")
    cases = {
        "missing file": (f"corpus/{clip}\ncorpus/nope.wav", "is missing"),
        "a FIFO": (f"corpus/{clip}\ncorpus/fifo.wav", "is not a regular file"),
        "a directory": ("corpus", "is not a regular file"),
        "outside the roots": ("../../etc/passwd", "outside the data roots"),
    }
    for name, (rows, words) in cases.items():
        manifest = root / "m.csv"
        manifest.write_text("path,label\n" + "\n".join(f"{r},angry" for r in rows.splitlines()) + "\n")
        outcome = finishes(lambda: scan(manifest, shown_as="m.csv", roots=[root.resolve()]))
        assert isinstance(outcome, DatasetError), f"{name}: {outcome!r}"
        assert words in str(outcome) and "m.csv, line" in str(outcome), f"{name}: {outcome}"
        assert str(root) not in str(outcome)


def test_non_regular_files_in_a_scanned_folder_are_left_out(root):
    os.mkfifo(root / "corpus" / "03-01-05-01-01-01-30.wav")
    (root / "corpus" / "03-01-05-01-01-01-31.wav").symlink_to("/dev/zero")
    dataset = finishes(lambda: scan(root / "corpus"))
    assert len(dataset.clips) == 16 and not any(c.speaker in ("ravdess:30", "ravdess:31") for c in dataset.clips)


def test_missing_datasets_are_dataset_errors_naming_no_server_path(root):
    settings = Settings(model_dir=root.parent / "models", cache_dir=root.parent / "cache")
    roots = [root.resolve()]
    for dataset in ("nowhere", "corpus/nowhere", "corpus/03-01-05-01-01-01-99.wav"):
        result = run_training(TrainRequest(dataset=dataset, folds=2, activate="never"), settings, roots=roots)
        assert not result.ok and result.error.code == "dataset_error", result.error
        assert str(root) not in result.error.message


def test_extraction_skips_what_is_over_the_limits_with_its_reason(root):
    from serq.worker.training.datasets import Clip

    paths = sorted((root / "corpus").iterdir())
    sizes = sorted(p.stat().st_size for p in paths)
    clips = [Clip(p, "angry", f"s{i}", "t") for i, p in enumerate(paths)]
    limit = sizes[len(sizes) // 2]
    fit = sum(size <= limit for size in sizes)
    X, ok, errors = extract_clips(clips, None, n_jobs=1, max_bytes=limit)
    assert 0 < fit < len(clips) and ok.sum() == fit and len(X) == fit
    assert len(errors) == len(clips) - fit and all(e.startswith("too_large") for e in errors.values())
    X, ok, errors = extract_clips(clips, None, n_jobs=1, max_seconds=0.5)  # every sample is longer
    assert ok.sum() == 0 and all(e.startswith("too_long") for e in errors.values())


def test_a_job_reports_paths_relative_to_its_data_root(root, tmp_path):
    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    result = run_training(TrainRequest(dataset="corpus", folds=2, activate="always", hyperparameters=QUICK),
                          settings, roots=[root.resolve()], n_jobs=1)
    assert result.ok, result.error
    assert result.dataset["path"] == "corpus"
    from serq.models.registry import Registry

    registry = Registry(settings.model_dir)
    meta = registry.metadata(result.version)
    assert meta.training_data["path"] == "corpus"
    card = (settings.model_dir / "versions" / result.version).glob("*.md")
    assert all(str(root) not in p.read_text() for p in card)
    assert str(root) not in result.model_dump_json()


def test_the_time_limit_fails_a_job_before_it_registers(root, tmp_path):
    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache", train_time_limit_s=1e-6)
    result = run_training(TrainRequest(dataset="corpus", folds=2, activate="always", hyperparameters=QUICK),
                          settings, roots=[root.resolve()], n_jobs=1)
    assert not result.ok and result.error.code == "time_limit" and "SERQ_TRAIN_TIME_LIMIT_S" in result.error.message
    assert not (tmp_path / "models" / "versions").exists()


def test_cancel_stops_a_job_between_files(root, tmp_path):
    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    cancel = threading.Event()
    extracted: list[int] = []

    def report(stage: str, done: int, total: int) -> None:
        if stage == "extracting":
            extracted.append(done)
            if done == 2:
                cancel.set()  # as SIGTERM does, from another thread

    with pytest.raises(JobCancelled):
        run_training(TrainRequest(dataset="corpus", folds=2, activate="always", hyperparameters=QUICK),
                     settings, report=report, roots=[root.resolve()], n_jobs=1, cancel=cancel)
    assert max(extracted) == 2, extracted  # no file after the one during which it was cancelled
    assert not (tmp_path / "models" / "versions").exists()


def test_job_guard():
    guard = JobGuard(3600.0)
    guard.check()
    cancel = threading.Event()
    guard = JobGuard(3600.0, cancel)
    cancel.set()
    with pytest.raises(JobCancelled):
        guard.check()


def test_scrub_keeps_server_folders_out_of_messages(tmp_path):
    root = tmp_path / "data"
    settings = Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache")
    message = f"no model at {tmp_path / 'models'}/ACTIVE; clip {root}/a/b.wav; root {root}"
    assert scrub(message, settings, [root]) == "no model at $SERQ_MODEL_DIR/ACTIVE; clip a/b.wav; root ."
    assert shown(root / "a" / "b.csv", [tmp_path / "x", root]) == "a/b.csv" and shown(root, [root]) == "."


def test_read_clip_refuses_what_it_cannot_open(tmp_path):
    with pytest.raises(AudioError):
        read_clip(tmp_path / "nope.wav", 10)
