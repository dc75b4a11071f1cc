"""Model signatures (serq.models.signing) and the worker's checks on an announcement, without a broker."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from serq.errors import ModelError
from serq.models.registry import DEFAULT_DIR, read_metadata
from serq.models.signing import (
    KeyFileError,
    Signer,
    Trust,
    check_event_signature,
    generate_keys,
    sign_event,
)
from serq.schemas import ModelActivated
from serq.settings import Settings
from serq.worker.services.worker import CLOCK_SKEW, check_order, verify_event

from helpers.signing import signed, trust

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)


def event(reason: str = "trained", **meta_changes) -> ModelActivated:
    meta = read_metadata(DEFAULT_DIR).model_copy(update=meta_changes)
    return ModelActivated.announcing(meta, (DEFAULT_DIR / meta.artifact).read_bytes(), reason)


def test_keys_generate_writes_a_private_key_only_its_owner_reads(tmp_path):
    key, pub = generate_keys(tmp_path / "k")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert Signer.load(key).key_id == next(iter(Trust.from_settings(Settings(trusted_keys=str(pub))).keys))
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_keys(tmp_path / "k")
    with pytest.raises(KeyFileError, match="not an Ed25519 private key|not a PEM key"):
        Signer.load(pub)


def test_serq_keys_generate_command(tmp_path, capsys):
    from serq.cli import main

    assert main(["keys", "generate", str(tmp_path / "keys")]) == 0
    assert "SERQ_SIGNING_KEY=" in capsys.readouterr().out
    assert (tmp_path / "keys" / "signing.pub").is_file()


def test_a_signature_covers_metadata_reason_and_time(untrusted_keys):
    good = signed(event())
    assert check_event_signature(good, trust()) == good.signer
    for changed in (good.model_copy(update={"reason": "rollback"}),
                    good.model_copy(update={"announced_at": good.announced_at + timedelta(seconds=1)}),
                    good.model_copy(update={"metadata": good.metadata.model_copy(update={"labels": ["happy"]})})):
        with pytest.raises(ModelError, match="not signed by a trusted key"):
            check_event_signature(changed, trust())
    with pytest.raises(ModelError, match="is not signed"):
        check_event_signature(event(), trust())
    forged = sign_event(event(), Signer.load(untrusted_keys / "signing.key"))
    with pytest.raises(ModelError, match="not signed by a trusted key"):
        check_event_signature(forged, trust())


def test_unsigned_passes_only_in_development(tmp_path):
    assert check_event_signature(event(), Trust(allow_unsigned=True)) == "unsigned"
    with pytest.raises(ModelError, match="no trusted keys"):
        check_event_signature(signed(event()), Trust())


def test_sizes_and_signature_are_checked_before_the_artifact_is_decoded():
    big = signed(event())
    with pytest.raises(ModelError, match="SERQ_MAX_MODEL_BYTES"):
        verify_event(big, trust(), max_bytes=1000)
    garbage = event().model_copy(update={"artifact_b64": "%" * 100})  # unsigned: refused before base64
    with pytest.raises(ModelError, match="is not signed"):
        verify_event(garbage, trust(), max_bytes=1 << 26)
    assert verify_event(big, trust(), max_bytes=1 << 26).version == big.version


def test_order_replays_future_and_older_versions():
    serving = verify_event(signed(event()), trust(), 1 << 26)
    older = serving.meta.created - timedelta(days=1)
    fresh = {"announced_at": NOW}
    check_order(event().model_copy(update=fresh), serving, NOW - timedelta(seconds=1), NOW)
    with pytest.raises(ModelError, match="replayed or stale"):
        check_order(event().model_copy(update=fresh), serving, NOW, NOW)
    with pytest.raises(ModelError, match="in the future"):
        check_order(event().model_copy(update={"announced_at": NOW + 2 * CLOCK_SKEW}), serving, NOW, NOW)
    with pytest.raises(ModelError, match="older than the served"):
        check_order(event(created=older).model_copy(update=fresh), serving, NOW - timedelta(seconds=1), NOW)
    for reason in ("rollback", "activate"):  # an operator's deliberate choice may go back
        check_order(event(reason, created=older).model_copy(update=fresh), serving, NOW - timedelta(seconds=1), NOW)


def test_broker_definitions_hash_passwords_and_anchor_every_regex():
    import base64
    import hashlib
    import re

    from serq.transport.accounts import ACCOUNTS, definitions, permissions

    passwords = {name: f"pw-{name}" for name in ACCOUNTS}
    doc = definitions("acme", passwords)
    assert [u["name"] for u in doc["users"]] == list(ACCOUNTS)  # serq-keda only with its password
    for user in doc["users"]:
        raw = base64.b64decode(user["password_hash"])
        assert raw[4:] == hashlib.sha256(raw[:4] + passwords[user["name"]].encode()).digest()
    rules = permissions("acme")
    assert not re.match(rules["serq-client"]["write"], "acme.models")
    assert not re.match(rules["serq-worker"]["write"], "acme.models")
    assert re.match(rules["serq-trainer"]["write"], "acme.models")
    assert not re.match(rules["serq-client"]["write"], "acme.modelsx") and not re.match(rules["serq-client"]["read"],
                                                                                       "acme.classify")
    assert not re.match(rules["serq-trainer"]["write"], "other.models")  # another deployment's prefix
    # configure is the right to create and delete: never on a shared name that is not the account's to declare
    shared = [f"acme.{suffix}" for suffix in ("classify", "dead", "results", "train", "events", "models")]
    assert not [name for name in shared if re.match(rules["serq-client"]["configure"], name)]
    assert re.match(rules["serq-client"]["configure"], "amq.gen-abc")  # its own reply and follower queues
    assert not re.match(rules["serq-worker"]["configure"], "acme.models")
    assert {(x["name"], x["type"]) for x in doc["exchanges"]} == {
        ("acme.dead", "fanout"), ("acme.results", "topic"), ("acme.events", "topic"), ("acme.models", "fanout")}
    assert "serq-keda" in [u["name"] for u in definitions("acme", passwords | {"serq-keda": "k"})["users"]]
    with pytest.raises(ValueError, match="BROKER_CLIENT_PASSWORD"):
        definitions("acme", passwords | {"serq-client": ""})


def test_a_registry_change_met_after_a_reconnect_must_be_signed_too(tmp_path, caplog):
    """`_sync_registry` (after a reconnect) reads ACTIVE like an announcement: unsigned is refused."""
    import shutil

    from serq.models.registry import Registry, load_default
    from serq.worker.services.worker import Worker

    root = tmp_path / "models"
    worker = Worker(Settings(model_dir=root, metrics_port=0))
    default = load_default().version
    assert worker.holder.current.version == default
    folder = root / "versions" / "unsigned-copy"
    shutil.copytree(DEFAULT_DIR, folder)
    meta = read_metadata(folder).model_copy(update={"version": "unsigned-copy"})
    (folder / "model.json").write_text(meta.model_dump_json())
    (root / "ACTIVE").write_text("unsigned-copy\n")
    with caplog.at_level("ERROR", logger="serq.worker"):
        worker._sync_registry()
    assert worker.holder.current.version == default
    reasons = [r.fields["reason"] for r in caplog.records if r.getMessage().startswith("model refused")]
    assert len(reasons) == 1 and "is not signed" in reasons[0] and worker.metrics.refused._value.get() == 1
    # signed (as `register` does with SERQ_SIGNING_KEY), the same change is taken
    from serq.models.signing import SIGNATURE, signature_record

    (folder / SIGNATURE).write_bytes(signature_record(meta, Signer.from_settings(Settings())))
    worker._sync_registry()
    assert worker.holder.current.version == "unsigned-copy" == Registry(root).active_version()


def test_key_and_definitions_files_that_cannot_be_written_are_clear_errors(tmp_path, capsys, monkeypatch):
    """An unwritable place for the key pair or the definitions: exit 2 with the reason, no traceback, no half pair."""
    from serq.cli import main
    from serq.transport.accounts import ACCOUNTS

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(KeyFileError, match="cannot write the key pair"):
        generate_keys(blocker / "keys")
    assert main(["keys", "generate", str(blocker / "keys")]) == 2
    assert "cannot write the key pair" in capsys.readouterr().err

    import errno
    from pathlib import Path

    def disk_full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as mp:  # the private key is written, its public half is not
        mp.setattr(Path, "write_bytes", disk_full)
        with pytest.raises(KeyFileError, match="cannot write the key pair .*No space left"):
            generate_keys(tmp_path / "full")
    assert not (tmp_path / "full" / "signing.key").exists()  # no private key left without its public half
    generate_keys(tmp_path / "full")  # so a second attempt is not refused as "already exists"

    for var in ACCOUNTS.values():
        monkeypatch.setenv(var, "pw")
    assert main(["broker", "definitions", "--out", str(blocker / "definitions.json")]) == 2
    assert "cannot write" in capsys.readouterr().err
