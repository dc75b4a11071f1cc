"""Hostile datasets against a real trainer: typed failures in bounded time, bounded memory, SIGTERM obeyed.

A data root holds copies of the shipped samples (real speech, RAVDESS names), a FIFO, a
link to ``/dev/zero`` and a sparse 1 GiB "clip". A real `serq trainer` gets manifests
pointing at each (the FIFO once blocked a trainer for 640 s; missing files ended as
``job_crashed``), a job with the 1 GiB row (read whole, it once peaked at 1.18 GB), a job
that runs past ``SERQ_TRAIN_TIME_LIMIT_S``, and SIGTERM in the middle of a job. Every
message must name paths relative to the data root.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from helpers.broker import Tap

from serq.worker.training.datasets import parse_name

from .conftest import SAMPLES, record

pytestmark = [pytest.mark.broker, pytest.mark.slow]

QUICK = {"hidden_layers": [16], "max_iter": 30, "augment_speeds": []}


def corpus(folder: Path, copies: int) -> list[str]:
    """``copies`` copies of the eight shipped samples under RAVDESS names (actor = copy * 8 + n); their names."""
    folder.mkdir(parents=True)
    names = []
    for c in range(copies):
        for n, path in enumerate(sorted(SAMPLES.glob("*.flac"))):
            stem = path.name.split("-", 1)[1][:18]
            name = f"{stem}{(c * 8 + n) % 100:02d}-{c}.flac" if c * 8 + n >= 100 else f"{stem}{c * 8 + n:02d}.flac"
            shutil.copy(path, folder / name)
            names.append(name)
    return names


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of ``pid`` (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def manifest(root: Path, name: str, rows: list[str]) -> str:
    """A manifest of ``rows``, labelled by their RAVDESS names (anything else: angry), one speaker each."""
    def label(row: str) -> str:
        parsed = parse_name(Path(row))
        return parsed[0] if parsed else "angry"

    (root / name).write_text("path,label,speaker\n" + "".join(f"{r},{label(r)},s{i}\n" for i, r in enumerate(rows)))
    return name


def job(job_id: str, dataset: str, **fields) -> dict:
    return {"job_id": job_id, "dataset": dataset, "folds": 2, "activate": "never", "hyperparameters": QUICK} | fields


def test_hostile_datasets_get_typed_failures_in_bounded_time(start_trainer, amqp_url, prefix, tmp_path):
    root = tmp_path / "data"
    clips = corpus(root / "clips", 2)
    os.mkfifo(root / "clips" / "fifo.wav")
    (root / "clips" / "zero.wav").symlink_to("/dev/zero")
    with open(root / "clips" / "huge.wav", "wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB that costs no disk
    good = [f"clips/{c}" for c in clips]
    cases = {
        "manifest row: a FIFO": (job("fifo", manifest(root, "fifo.csv", good + ["clips/fifo.wav"])), "dataset_error"),
        "manifest row: /dev/zero": (job("zero", manifest(root, "zero.csv", good + ["clips/zero.wav"])),
                                    "dataset_error"),
        "manifest row: a missing file": (job("missing", manifest(root, "missing.csv", good + ["clips/nope.wav"])),
                                         "dataset_error"),
        "manifest row: a directory": (job("dir", manifest(root, "dir.csv", good + ["clips"])), "dataset_error"),
        "a missing dataset folder": (job("nofolder", "nowhere/at/all"), "dataset_error"),
        "a FIFO as the dataset": (job("fifods", "clips/fifo.wav"), "dataset_error"),
        "manifest row: a 1 GiB file (skipped)": (job("huge", manifest(root, "huge.csv", good + ["clips/huge.wav"])),
                                                 "result"),
    }
    proc = start_trainer(env={"SERQ_DATA_ROOTS": str(root), "SERQ_CACHE_DIR": str(tmp_path / "cache")})
    rss_before = vm_hwm_kib(proc.pid)
    tap = Tap(amqp_url, prefix)
    started = time.monotonic()
    for body, _ in cases.values():
        tap.send(body)
    results = {name: tap.result(body["job_id"], timeout=300) for name, (body, _) in cases.items()}
    took = time.monotonic() - started
    peak_growth_mib = (vm_hwm_kib(proc.pid) - rss_before) / 1024
    alive = proc.poll() is None
    tap.close()
    log = proc.log_path.read_text()
    got = {name: r.error.code if r.error else "result" for name, r in results.items()}
    record("hostile datasets (FIFO, /dev/zero, missing, directory, 1 GiB row) to a real trainer", len(cases),
           list(got.values()), "pytest tests/reliability/test_trainer_bounds.py -k hostile",
           all_answered_within_s=f"{took:.0f}", peak_rss_growth_mib=f"{peak_growth_mib:.0f}")
    assert alive and "job_crashed" not in log
    assert got == {name: code for name, (_, code) in cases.items()}, {n: results[n].error for n in got}
    huge = results["manifest row: a 1 GiB file (skipped)"]
    assert huge.metrics.skipped.get("unreadable audio (too_large)") == 1 and huge.dataset["path"] == "huge.csv"
    assert peak_growth_mib < 300, f"the trainer's peak memory grew {peak_growth_mib:.0f} MiB"
    for name, r in results.items():
        text = r.model_dump_json()
        assert str(root) not in text and str(tmp_path) not in text, f"{name} names a server path: {text[:400]}"


def test_time_limit_and_sigterm_stop_a_job_between_files(start_trainer, amqp_url, prefix, tmp_path):
    root = tmp_path / "data"
    corpus(root / "many", 30)  # 240 clips, extracted from a cold cache: many seconds of work
    env = {"SERQ_DATA_ROOTS": str(root), "SERQ_CACHE_DIR": str(tmp_path / "cache"), "SERQ_TRAIN_TIME_LIMIT_S": "3"}
    proc = start_trainer(env=env)
    tap = Tap(amqp_url, prefix)
    limited = tap.result(tap.send(job("limited", "many")), timeout=300)
    assert not limited.ok and limited.error.code == "time_limit", limited.error
    assert limited.duration_s < 3 + 30, "stopped at a check between files, not at the end of the job"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0

    # SIGTERM mid-extraction: the job stops at its next file, goes back to the queue; the next trainer answers it.
    env |= {"SERQ_TRAIN_TIME_LIMIT_S": "3600", "SERQ_CACHE_DIR": str(tmp_path / "cache2")}
    proc = start_trainer(env=env)
    cid = tap.send(job("drained", "many"))
    deadline = time.monotonic() + 120
    while not any(e.stage == "extracting" and 0 < e.done < e.total for e in tap.progress(cid)):
        assert time.monotonic() < deadline, "the job never started extracting"
        tap.pump(0.2)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    stopped_in = time.monotonic() - signalled
    # The nack reaches a quorum queue's count a moment after the trainer exits (a Raft command): polled, bounded.
    deadline = time.monotonic() + 60
    while (requeued := tap.queued()) != 1 and time.monotonic() < deadline:
        tap.pump(0.2)
    start_trainer(env=env)
    drained = tap.result(cid, timeout=600)
    tap.close()
    record("job past SERQ_TRAIN_TIME_LIMIT_S=3; SIGTERM mid-extraction (240 files, cold cache)", 2,
           [limited.error.code, "result" if drained.ok else drained.error.code],
           "pytest tests/reliability/test_trainer_bounds.py -k sigterm",
           time_limited_after_s=f"{limited.duration_s:.1f}", sigterm_exit_s=f"{stopped_in:.1f}",
           requeued=requeued)
    assert code == 0 and requeued == 1
    assert drained.ok and drained.job_id == "drained"
