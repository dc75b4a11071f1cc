"""The trainer service: typed failures, progress events, results, activation events, `serq train` remote.

Unit tests cover request parsing, throttling and dataset confinement. The rest run
the real `serq trainer` as a subprocess against the real broker on a small RAVDESS
subset (a directory of symlinks under a temp data root); the models are small
because what is tested is the plumbing, not the accuracy.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest

from serq.errors import DatasetError, SerqError
from serq.schemas import ModelActivated, TrainProgress, TrainRequest, TrainResult
from serq.schemas.contract import type_name
from serq.worker.services.trainer import ProgressThrottle, job_id_of, parse_request
from serq.worker.training.job import confine, resolve_dataset

from helpers.broker import Tap
from helpers.corpus import make_subset

REPO = Path(__file__).resolve().parents[1]
STAGES = ["scanning", "extracting", "cross-validating", "fitting", "registering"]
#: A quick recipe: the tests check plumbing, not accuracy.
QUICK = {"hidden_layers": [32], "max_iter": 30, "augment_speeds": [], "channel_copies": 0}


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("body, code", [
    (b"not json", "invalid_request"),
    (b"\xff\xfe", "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (b"{}", "invalid_request"),  # no dataset
    (json.dumps({"dataset": "d", "colour": "red"}).encode(), "invalid_request"),
    (json.dumps({"dataset": "d", "folds": 1}).encode(), "invalid_request"),
    (json.dumps({"dataset": "d", "activate": "sometimes"}).encode(), "invalid_request"),
    (json.dumps({"dataset": "d", "emotions": ["angry", "joy"]}).encode(), "unknown_emotion"),
    (json.dumps({"dataset": "d", "emotions": ["angry"]}).encode(), "invalid_request"),  # one class
    (json.dumps({"dataset": "d", "hyperparameters": {"alpha": -1}}).encode(), "bad_hyperparameter"),
    (json.dumps({"dataset": "d", "hyperparameters": {"max_iter": 3}}).encode(), "bad_hyperparameter"),
    (json.dumps({"dataset": "d", "hyperparameters": {"hidden_layers": [1]}}).encode(), "bad_hyperparameter"),
    (json.dumps({"dataset": "d", "hyperparameters": {"hidden_layers": []}}).encode(), "bad_hyperparameter"),
    (json.dumps({"dataset": "d", "hyperparameters": {"dropout": 0.5}}).encode(), "bad_hyperparameter"),
])
def test_invalid_requests_get_typed_codes(body, code):
    with pytest.raises(SerqError) as err:
        parse_request(body)
    assert err.value.code == code
    assert str(err.value)


def test_a_valid_request_parses_with_defaults():
    request = parse_request(json.dumps({"dataset": "ravdess", "emotions": ["sad", "angry"], "job_id": "j-1"}).encode())
    assert request.job_id == "j-1"
    assert request.emotions == ["sad", "angry"]
    assert request.protocol == "speaker" and request.folds == 5
    assert request.hyperparameters.hidden_layers == [256]


def test_a_failure_is_reported_under_the_best_job_id_available():
    props = pika.BasicProperties(correlation_id="corr-1")
    assert job_id_of(json.dumps({"job_id": "mine", "folds": 0}).encode(), props) == "mine"
    assert job_id_of(b"not json", props) == "corr-1"
    assert job_id_of(json.dumps({"job_id": "../../x"}).encode(), props) == "corr-1"
    assert job_id_of(b"[]", pika.BasicProperties()) == "invalid"


def test_progress_is_throttled_but_every_stage_and_its_end_go_out():
    sent: list[TrainProgress] = []
    report = ProgressThrottle("j", sent.append, interval=3600)
    report("scanning", 0, 1)
    report("scanning", 1, 1)
    for done in range(0, 101):
        report("extracting", done, 100)
    report("fitting", 0, 1)
    report("fitting", 1, 1)
    assert [(e.stage, e.done) for e in sent] == [
        ("scanning", 0), ("scanning", 1), ("extracting", 0), ("extracting", 100), ("fitting", 0), ("fitting", 1)]
    assert all(e.job_id == "j" and e.total for e in sent)

    sent.clear()
    report = ProgressThrottle("j", sent.append, interval=0.0)
    for done in range(1, 11):
        report("extracting", done, 10)
        time.sleep(0.02)
    assert len(sent) == 10
    assert any(e.eta_s is not None and e.eta_s > 0 for e in sent[:-1]) and sent[-1].eta_s == 0


@pytest.fixture
def roots_layout(tmp_path):
    """root/ (the data root) with a good dataset, an escaping symlink and an escaping manifest; outside/ next to it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "good").mkdir(parents=True)
    outside.mkdir()
    clip = "03-01-05-01-01-01-01.wav"
    (outside / clip).write_bytes(b"RIFF")
    (root / "good" / clip).write_bytes(b"RIFF")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "linked").mkdir()
    (root / "linked" / clip).symlink_to(outside / clip)
    (root / "manifest.csv").write_text(f"path,label,speaker\n../outside/{clip},angry,01\n")
    return root, outside


def test_datasets_are_confined_to_the_data_roots(roots_layout):
    from serq.worker.training.datasets import scan

    root, outside = roots_layout
    roots = [root.resolve()]
    assert resolve_dataset("good", roots) == (root / "good").resolve()
    assert resolve_dataset(str(root / "good"), roots) == (root / "good").resolve()
    for bad, words in [("../outside", "outside the data roots"), (str(outside), "outside the data roots"),
                       ("escape", "outside the data roots"), ("/etc", "outside the data roots"),
                       ("missing", "not found")]:
        with pytest.raises(DatasetError, match=words):
            resolve_dataset(bad, roots)
    with pytest.raises(DatasetError, match="no data roots"):
        resolve_dataset("good", [])
    # Inside a root, but its clips reach out: a manifest entry or a symlinked file.
    for name in ("manifest.csv", "linked"):
        with pytest.raises(DatasetError, match="outside the data roots"):
            confine(scan(resolve_dataset(name, roots)).clips, roots)
    confine(scan(resolve_dataset("good", roots)).clips, roots)
    confine(scan(resolve_dataset("linked", roots)).clips, roots + [outside.resolve()])  # a second root allows it


def test_a_relative_dataset_is_looked_up_under_every_root(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (b / "set").mkdir(parents=True)
    assert resolve_dataset("set", [a, b]) == (b / "set").resolve()


def test_the_cli_types_bad_requests_before_sending(capsys):
    from serq.cli import main

    assert main(["train", "--emotions", "angry,joy", "--data", "x"]) == 2
    assert "[unknown_emotion]" in capsys.readouterr().err
    assert main(["train", "--max-iter", "2", "--data", "x"]) == 2
    assert "[bad_hyperparameter]" in capsys.readouterr().err
    assert main(["train", "--hidden", "64,x", "--data", "x"]) == 2
    assert "[bad_hyperparameter]" in capsys.readouterr().err
    for speeds in ("1.0", "fast"):
        assert main(["train", "--augment", speeds, "--data", "x"]) == 2
        assert "[bad_hyperparameter]" in capsys.readouterr().err


# --------------------------------------------------------------------------- with the broker


@pytest.fixture
def data_root(tmp_path, ravdess_dir) -> Path:
    root = tmp_path / "data"
    make_subset(root, ravdess_dir, [1, 2, 3, 4], "four")
    return root


@pytest.fixture
def trainer_env(data_root, ravdess_dir, feature_cache) -> dict:
    return {"SERQ_DATA_ROOTS": f"{data_root}:{ravdess_dir}", "SERQ_CACHE_DIR": str(feature_cache)}


@pytest.fixture
def tap(amqp_url, prefix):
    t = Tap(amqp_url, prefix)
    yield t
    t.close()


def job(job_id: str, dataset: str = "four", hyperparameters: dict | None = None, **fields) -> dict:
    """A quick training request on the 4-actor subset; ``hyperparameters`` override :data:`QUICK`."""
    hp = QUICK | (hyperparameters or {})
    return {"job_id": job_id, "dataset": dataset, "folds": 2, "hyperparameters": hp, "activate": "never"} | fields


def registry_state(models: Path) -> tuple[list[str], str | None]:
    versions = sorted(p.name for p in (models / "versions").glob("*")) if (models / "versions").is_dir() else []
    active = (models / "ACTIVE").read_text().strip() if (models / "ACTIVE").exists() else None
    return versions, active


@pytest.mark.broker
@pytest.mark.corpus
def test_bad_training_requests_get_typed_failures_and_touch_nothing(tap, start_trainer, trainer_env, data_root,
                                                                      ravdess_dir, tmp_path):
    outside = tmp_path / "outside"  # not a data root
    (outside / "clips").mkdir(parents=True)
    clip = "03-01-05-01-01-01-05.flac"
    (outside / "clips" / clip).write_bytes((ravdess_dir / "Actor_05" / clip).read_bytes())
    (data_root / "escape").symlink_to(outside / "clips", target_is_directory=True)
    (data_root / "manifest.csv").write_text(f"path,label,speaker\n../outside/clips/{clip},angry,05\n")
    start_trainer(env=trainer_env)
    cases = {
        "not-json": (b"{oops", "invalid_request", "JSON"),
        "unknown-emotion": (job("unknown-emotion", emotions=["angry", "joy"]), "unknown_emotion", "joy"),
        "bad-hp": (job("bad-hp", hyperparameters={"alpha": 0}), "bad_hyperparameter", "alpha"),
        "dotdot": (job("dotdot", dataset="../outside/clips"), "dataset_error", "outside the data roots"),
        "absolute": (job("absolute", dataset=str(outside / "clips")), "dataset_error", "outside the data roots"),
        "symlink": (job("symlink", dataset="escape"), "dataset_error", "outside the data roots"),
        "manifest": (job("manifest", dataset="manifest.csv"), "dataset_error", "outside the data roots"),
        "missing": (job("missing", dataset="nothing-here"), "dataset_error", "not found"),
        "no-clips": (job("no-clips", speakers=["24"]), "dataset_error", "no clips"),
        "few-speakers": (job("few-speakers", folds=5), "dataset_error", "at least 5 speakers"),
    }
    for cid, (body, _, _) in cases.items():
        tap.send(body, correlation_id=cid)
    for cid, (_, code, words) in cases.items():
        result = tap.result(cid, timeout=120)
        assert not result.ok and result.error.code == code, (cid, result)
        assert words in result.error.message, (cid, result.error.message)
        assert result.version is None and not result.activated
    # Each result goes out on <p>.events after its reply (another queue): wait for them, do not guess how long.
    def failed() -> set[str]:
        return {key for key, props, _ in tap.got["events"] if props.type == type_name(TrainResult)}

    expected = {f"train.{cid}.failed" for cid in cases if cid != "not-json"}
    tap.pump_until(lambda: expected <= failed(), 60, "every failure on <p>.events")
    assert not tap.got["models"]
    assert registry_state(tmp_path / "models") == ([], None)


@pytest.mark.broker
@pytest.mark.corpus
@pytest.mark.slow
def test_a_job_reports_progress_registers_activates_and_announces(tap, start_trainer, trainer_env, tmp_path):
    from serq.models.registry import Registry, sha256_bytes

    start_trainer(env=trainer_env)
    cid = tap.send(job("first", activate="always"))
    result = tap.result(cid)
    assert result.ok and result.activated and result.version, result
    assert result.metrics.protocol == "speaker-grouped 2-fold" and result.metrics.speaker_independent
    assert result.dataset["clips"] == 240 and result.dataset["speakers"] == 4

    progress = tap.progress(cid)
    assert [s for s in STAGES if s in {e.stage for e in progress}] == STAGES
    order = [STAGES.index(e.stage) for e in progress]
    assert order == sorted(order), "stages arrive in order"
    assert all(e.job_id == "first" and 0 <= e.done <= e.total for e in progress)
    assert any(e.stage == "extracting" and e.done == e.total == 240 for e in progress)
    tap.pump_until(lambda: any(key == "train.first.done" for key, _, _ in tap.got["events"]), 60,
                   "train.first.done on <p>.events (published after the reply)")
    keys = [key for key, props, _ in tap.got["events"] if props.correlation_id == cid]
    assert {f"train.first.{s}" for s in STAGES} | {"train.first.done"} <= set(keys)
    assert keys[-1] == "train.first.done"

    registry = Registry(tmp_path / "models")
    assert registry.active_version() == result.version
    [(_, props, body)] = tap.got["models"]
    assert props.type == type_name(ModelActivated)
    event = ModelActivated.model_validate_json(body)
    data = base64.b64decode(event.artifact_b64)
    assert event.version == result.version and event.reason == "trained"
    assert event.sha256 == sha256_bytes(data) == registry.metadata(result.version).sha256
    assert data == registry.artifact_bytes(result.version)
    from serq.models.signing import check_event_signature

    from helpers.signing import trust

    assert check_event_signature(event, trust()) == event.signer  # signed with SERQ_SIGNING_KEY

    # The same data again: every feature vector comes from the shared cache.
    cid = tap.send(job("second"))
    second = tap.result(cid)
    assert second.ok and not second.activated and registry.active_version() == result.version
    extracting = [e for e in tap.progress(cid) if e.stage == "extracting"]
    assert extracting[0].done == extracting[0].total == 240
    assert len(tap.got["models"]) == 1, "no activation, no announcement"


@pytest.mark.broker
@pytest.mark.corpus
@pytest.mark.slow
def test_if_better_keeps_the_active_model_against_a_worse_recipe(amqp_url, prefix, start_trainer, trainer_env,
                                                                  tmp_path, tap):
    from serq.models.registry import Registry

    start_trainer(env=trainer_env)
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}
    decent = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "four", "--folds", "2", "--hidden", "64",
                             "--max-iter", "80", "--augment", "none", "--activate", "always", "--wait"],
                            env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert decent.returncode == 0, decent.stderr
    assert "activated: True" in decent.stdout and "balanced accuracy" in decent.stdout
    # The whole report down to the confusion matrix's last row (every clip of the subset is readable: none skipped).
    assert decent.stdout.splitlines()[-1].split()[0] == "surprised", decent.stdout
    assert "fitting" in decent.stderr  # the progress bars
    registry = Registry(tmp_path / "models")
    active = registry.active_version()
    assert active and registry.active_metadata().hyperparameters.hidden_layers == [64]

    worse = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "four", "--folds", "2", "--hidden", "2",
                            "--max-iter", "10", "--augment", "none", "--activate", "if_better", "--wait", "--json"],
                           env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert worse.returncode == 0, worse.stderr
    result = TrainResult.model_validate_json(worse.stdout)
    assert result.ok and result.version and result.version != active
    assert not result.activated and "not activated" in result.activation_reason
    assert result.baseline is not None and result.baseline.n == result.metrics.n
    assert result.baseline.balanced_accuracy >= result.metrics.balanced_accuracy
    assert registry.active_version() == active
    tap.pump_until(lambda: tap.got["models"], 60, "the first run's announcement")  # it waited unpumped meanwhile
    tap.pump(0.5)
    assert [ModelActivated.model_validate_json(b).version for _, _, b in tap.got["models"]] == [active]


@pytest.mark.broker
def test_wait_without_a_trainer_says_so(amqp_url, prefix):
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix}
    out = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "four", "--wait"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2
    assert "[no_trainer]" in out.stderr and "serq trainer" in out.stderr
    # Without --wait the job is queued (durably) for a trainer that starts later.
    out = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "four", "--json"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    sent = json.loads(out.stdout)
    assert sent["trainers"] == 0 and sent["queue"] == f"{prefix}.train"
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        method, props, body = conn.channel().basic_get(f"{prefix}.train", auto_ack=True)
        assert TrainRequest.model_validate_json(body).job_id == sent["job_id"] == props.correlation_id
    finally:
        conn.close()


@pytest.mark.broker
def test_serq_train_reports_an_unreachable_broker():
    env = os.environ | {"SERQ_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/%2F"}
    out = subprocess.run([sys.executable, "-m", "serq", "train", "--data", "x", "--wait"],
                         env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2 and "[no_broker]" in out.stderr and "SERQ_AMQP_URL" in out.stderr
    assert "guest:guest" not in out.stderr


@pytest.mark.broker
@pytest.mark.corpus
def test_sigterm_stops_the_running_job_between_files_and_hands_it_back(tap, start_trainer, trainer_env, tmp_path):
    """SIGTERM during extraction: the job stops at its next file, goes back to the queue unanswered, the
    trainer exits; the next trainer runs it to the end (nothing lost, answered once)."""
    env = trainer_env | {"SERQ_CACHE_DIR": str(tmp_path / "cold-cache")}  # every file is extracted: many steps
    proc = start_trainer(env=env)
    cid = tap.send(job("drain", hyperparameters={"hidden_layers": [64], "max_iter": 200}))
    deadline = time.monotonic() + 120
    while not any(e.stage == "extracting" and 0 < e.done < e.total for e in tap.progress(cid)):
        assert time.monotonic() < deadline, "the job never started extracting"
        tap.pump(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    log = proc.log_path.read_text()
    assert "job_cancelled" in log and "job_answered" not in log
    tap.pump(0.5)
    assert not [p for _, p, _ in tap.got["reply"] if p.type == "serq.TrainResult"], "a cancelled job is not answered"
    # The nack reaches a quorum queue's count a moment later (a Raft command): polled, bounded.
    tap.pump_until(lambda: tap.queued() == 1, 60, "the job handed back to the queue")
    start_trainer(env=env)
    result = tap.result(cid)
    assert result.ok and result.job_id == "drain"


@pytest.mark.broker
@pytest.mark.corpus
def test_wait_notices_when_the_trainer_goes_away(amqp_url, prefix, start_trainer, trainer_env, tap):
    proc = start_trainer(env=trainer_env)
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix}
    client = subprocess.Popen([sys.executable, "-m", "serq", "train", "--data", "four", "--folds", "2", "--hidden",
                               "256", "--max-iter", "2000", "--wait"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while "job_started" not in proc.log_path.read_text():
            assert time.monotonic() < deadline and client.poll() is None, "the job never started"
            time.sleep(0.2)
        proc.kill()  # not a graceful stop: the job is lost mid-way
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 2
    assert "[no_trainer]" in err and "went away" in err and "stays queued" in err
    tap.pump_until(lambda: tap.queued() == 1, 60, "the job back in the queue")


def _connection_pid(name: str) -> str | None:
    """The broker's pid of the connection named exactly ``name`` (rabbitmqctl); ``None`` if it cannot say."""
    import shutil

    if not shutil.which("rabbitmqctl"):
        return None
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                             capture_output=True, text=True, timeout=60)
    pids = [line.split("\t")[0] for line in listing.stdout.splitlines() if f'"{name}"' in line]
    return pids[0] if not listing.returncode and len(pids) == 1 else None


def _close_connection(pid: str) -> bool:
    """Have the broker close connection ``pid``. When rabbitmqctl returns, the broker has sent
    Connection.Close and discards whatever the client sends on it, so nothing published after that counts."""
    return subprocess.run(["rabbitmqctl", "close_connection", pid, "test: connection lost"],
                          capture_output=True, timeout=60).returncode == 0


@pytest.mark.broker
@pytest.mark.corpus
def test_a_job_outliving_its_connection_is_answered_once_without_retraining(tap, start_trainer, trainer_env):
    import socket

    proc = start_trainer(env=trainer_env)
    pid = _connection_pid(f"serq-trainer-{socket.gethostname()}-{proc.pid}")
    if pid is None:
        pytest.skip("cannot find the trainer's connection with rabbitmqctl here")
    cid = tap.send(job("lost", hyperparameters={"hidden_layers": [64], "max_iter": 300}, activate="always"))
    deadline = time.monotonic() + 120
    while not tap.progress(cid):
        assert time.monotonic() < deadline, "the job never reported progress"
        tap.pump(0.2)
    # Freeze the trainer (a long GC or VM pause) so the job cannot finish and answer before the broker
    # drops its connection: rabbitmqctl takes seconds on a loaded machine, longer than the rest of the job.
    proc.send_signal(signal.SIGSTOP)
    try:
        tap.pump(0.5)
        assert not [1 for _, p, _ in tap.got["reply"] if p.type == type_name(TrainResult)], "answered before the cut"
        assert "job_answered" not in proc.log_path.read_text(), "answered before the cut"
        closed = _close_connection(pid)
    finally:
        proc.send_signal(signal.SIGCONT)
    if not closed:
        pytest.skip("cannot close a connection with rabbitmqctl here")
    result = tap.result(cid)
    assert result.ok and result.activated
    # `job_answered` is logged after the ack, which follows the reply the tap already has.
    tap.pump_until(lambda: "job_answered" in proc.log_path.read_text(), 60, "job_answered in the trainer's log")
    tap.pump(1.0)
    log = proc.log_path.read_text()
    assert "broker_lost" in log and "job_redelivered" in log
    assert log.count("job_started") == 1, "trained once"
    assert log.count("job_answered") == 1, "the answer on the lost connection was dropped, the redelivery answered"
    assert [ModelActivated.model_validate_json(b).version for _, _, b in tap.got["models"]] == [result.version]
    assert len([1 for _, p, _ in tap.got["reply"] if p.type == type_name(TrainResult)]) == 1, "answered once"
    assert tap.ch.queue_declare(tap.queue, passive=True).method.message_count == 0


@pytest.mark.broker
@pytest.mark.corpus
def test_a_consumer_cancelled_by_the_broker_is_logged_and_consumes_again(tap, start_trainer, trainer_env):
    proc = start_trainer(env=trainer_env)
    tap.ch.queue_delete(tap.queue)  # the broker cancels the trainer's consumer (Basic.Cancel)
    deadline = time.monotonic() + 60
    while proc.log_path.read_text().count("consuming") < 2:
        assert time.monotonic() < deadline, proc.log_path.read_text()
        time.sleep(0.2)
    log = proc.log_path.read_text()
    assert "consumer_cancelled" in log and "broker_lost" not in log
    tap.ch.queue_declare(tap.queue, passive=True)  # redeclared by the trainer
    cid = tap.send(job("again", hyperparameters={"alpha": 0}))
    result = tap.result(cid, timeout=60)
    assert not result.ok and result.error.code == "bad_hyperparameter"


@pytest.mark.broker
def test_models_activate_and_rollback_announce_through_the_same_event(amqp_url, prefix, tmp_path, tap):
    from serq.models.registry import Registry, default_metadata, sha256_bytes

    default = default_metadata().version
    env = os.environ | {"SERQ_AMQP_URL": amqp_url, "SERQ_PREFIX": prefix, "SERQ_MODEL_DIR": str(tmp_path / "models")}

    def serq(*args, **extra):
        return subprocess.run([sys.executable, "-m", "serq", "models", *args], env=env | extra,
                              capture_output=True, text=True, timeout=120, cwd=REPO)

    out = serq("activate", default, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"version": default, "active": True, "published": True}
    tap.pump_until(lambda: tap.got["models"], 60, "the activation on <p>.models")
    tap.pump(0.5)
    [(_, props, body)] = tap.got["models"]
    event = ModelActivated.model_validate_json(body)
    assert props.type == type_name(ModelActivated) and event.reason == "activate" and event.version == default
    assert event.sha256 == sha256_bytes(base64.b64decode(event.artifact_b64)) == default_metadata().sha256

    out = serq("activate", default, "--no-publish")
    assert out.returncode == 0 and "not published (--no-publish)" in out.stderr
    out = serq("activate", default, SERQ_AMQP_URL="amqp://guest:guest@127.0.0.1:1/%2F")
    assert out.returncode == 0 and "not published: cannot reach RabbitMQ" in out.stderr
    assert "guest:guest" not in out.stderr
    assert Registry(tmp_path / "models").active_version() == default
    tap.pump(1.0)
    assert len(tap.got["models"]) == 1, "nothing published without a broker or with --no-publish"
