"""The client library's own behaviour: clear failures, duplicate replies dropped, re-send after a cut."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from serq.client import BrokerUnavailable, Client, ServiceError, Timeout
from serq.client.errors import ClientError
from serq.client.wire import read_clip

from conftest import close_broker_connections
from helpers.broker import EchoWorker

NO_BROKER = "amqp://guest:s3cret@127.0.0.1:1/%2F"


def test_no_broker_is_a_clear_error_without_the_password():
    with pytest.raises(BrokerUnavailable) as info:
        Client(NO_BROKER, "x")
    assert "SERQ_AMQP_URL" in str(info.value) and "s3cret" not in str(info.value)
    assert info.value.code == "no_broker"


def test_cli_without_broker_says_so_without_a_traceback(tmp_path):
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    run = subprocess.run([sys.executable, "-m", "serq", "classify", str(clip)], capture_output=True, text=True,
                         env=dict(os.environ, SERQ_AMQP_URL=NO_BROKER), timeout=60)
    assert run.returncode == 2 and "SERQ_AMQP_URL" in run.stderr and "[no_broker]" in run.stderr
    assert "Traceback" not in run.stderr and "s3cret" not in run.stderr


def test_read_clip_names_and_types():
    data, name, ctype = read_clip(b"abc", "x.flac")
    assert (data, name, ctype) == (b"abc", "x.flac", "audio/flac")
    assert read_clip(b"abc")[2] == "application/octet-stream"
    with pytest.raises(ClientError) as info:
        read_clip("/no/such/file.wav")
    assert info.value.code == "not_found"


@pytest.mark.broker
def test_no_worker_times_out_with_a_clear_message(amqp_url, prefix, tmp_path):
    with Client(amqp_url, prefix) as client, pytest.raises(Timeout) as info:
        client.classify(b"RIFF....", timeout=1)
    assert "serq worker" in str(info.value) and f"{prefix}.classify does not exist" in str(info.value)
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    run = subprocess.run([sys.executable, "-m", "serq", "classify", str(clip), str(clip), "--timeout", "1"],
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, SERQ_AMQP_URL=amqp_url, SERQ_PREFIX=prefix))
    assert run.returncode == 2 and "[timeout]" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.broker
def test_duplicate_replies_are_dropped_and_pipelining_keeps_order(amqp_url, prefix):
    with Client(amqp_url, prefix) as client:
        worker = EchoWorker(amqp_url, f"{prefix}.classify", copies=2)
        try:
            for text in ("first", "second"):
                with pytest.raises(ServiceError) as info:
                    client.classify(text.encode(), timeout=60)
                assert info.value.code == "bad_audio" and info.value.message == text  # not the first's duplicate
            items = [f"clip {i}".encode() for i in range(25)]
            outcomes = list(client.classify_many(items, max_in_flight=5, timeout=60))
        finally:
            worker.stop()
    assert [item for item, _ in outcomes] == items
    assert [o.message for _, o in outcomes] == [i.decode() for i in items]
    assert len(worker.seen) == 27 and len(set(worker.seen)) == 27  # each request sent once: no spurious re-sends


@pytest.mark.broker
def test_unanswered_requests_are_resent_after_a_connection_cut(amqp_url, prefix):
    with Client(amqp_url, prefix) as client:
        worker = EchoWorker(amqp_url, f"{prefix}.classify", skip_first=1)  # swallows the first delivery

        def cut_later():
            time.sleep(1.0)
            close_broker_connections(f"serq-client {prefix}")

        cutter = threading.Thread(target=cut_later)
        cutter.start()
        try:
            with pytest.raises(ServiceError) as info:
                client.classify(b"hello", timeout=120)  # the cut is two rabbitmqctl runs: seconds each under load
        finally:
            cutter.join()
            worker.stop()
    assert info.value.message == "hello"
    assert len(worker.seen) == 2 and worker.seen[0] == worker.seen[1]  # the same request, re-sent once
