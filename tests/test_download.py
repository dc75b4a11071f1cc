"""`serq data download`, offline: a local HTTP server plays Zenodo (record JSON + the zip).

The server is real (http.server in a thread, real sockets, real Range requests);
only the content is small and made here.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import soundfile as sf

from serq.cli import main as serq_main
from serq.worker.training.download import DATASETS, DownloadError, download, extract_zip

SOURCE = DATASETS["ravdess"]
RECORD_PATH = f"/api/records/{SOURCE.record}"
FILE_PATH = f"{RECORD_PATH}/files/{SOURCE.key}/content"


def make_zip() -> tuple[bytes, dict[str, bytes]]:
    """A RAVDESS-shaped zip: two real WAV clips and a larger filler file."""
    members: dict[str, bytes] = {}
    rng = np.random.default_rng(0)
    for name in ("Actor_01/03-01-05-01-01-01-01.wav", "Actor_02/03-01-03-02-01-02-02.wav"):
        buf = io.BytesIO()
        sf.write(buf, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000, format="WAV")
        members[name] = buf.getvalue()
    members["Actor_02/notes.bin"] = rng.bytes(150_000)  # incompressible: the zip stays ~180 kB
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue(), members


class FakeZenodo:
    """Serves one record and its file; can cut the first transfer short or ignore Range."""

    def __init__(self, payload: bytes, *, checksum: str | None = None):
        self.payload = payload
        self.checksum = checksum if checksum is not None else "md5:" + hashlib.md5(payload).hexdigest()
        self.cut_first_after: int | None = None  # bytes sent before dropping the first file transfer
        self.honour_range = True
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def record(self) -> dict:
        return {"id": int(SOURCE.record), "files": [{
            "key": SOURCE.key, "size": len(self.payload), "checksum": self.checksum,
            "links": {"self": f"{self.url}{FILE_PATH}"},
        }]}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                fake.requests.append((self.path, rng))
                if self.path == RECORD_PATH:
                    body = json.dumps(fake.record()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if self.path != FILE_PATH:
                    self.send_error(404)
                    return
                start = 0
                if rng and fake.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                body = fake.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(fake.payload) - 1}/{len(fake.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                transfers = sum(1 for p, _ in fake.requests if p == FILE_PATH)
                if fake.cut_first_after is not None and transfers == 1:
                    self.wfile.write(body[: fake.cut_first_after])
                    self.wfile.flush()
                    self.close_connection = True  # drop the connection mid-body
                    return
                self.wfile.write(body)

        return Handler

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def zipped():
    return make_zip()


def assert_extracted(dest, members):
    for name, data in members.items():
        assert (dest / name).read_bytes() == data, name


def test_download_verifies_and_extracts(tmp_path, zipped):
    payload, members = zipped
    with FakeZenodo(payload) as fake:
        result = download("ravdess", tmp_path / "ravdess", base_url=fake.url)
    assert result.downloaded and result.resumed_from == 0
    assert result.bytes == len(payload)
    assert result.checksum == fake.checksum
    assert result.extracted == len(members)
    assert_extracted(tmp_path / "ravdess", members)
    assert not (tmp_path / "ravdess" / ".serq-download").exists()  # the archive is removed by default
    # The record is read first, then the file once, from the start.
    assert fake.requests == [(RECORD_PATH, None), (FILE_PATH, None)]


def test_a_second_run_skips_the_download_unless_files_are_missing(tmp_path, zipped):
    payload, members = zipped
    dest = tmp_path / "ravdess"
    with FakeZenodo(payload) as fake:
        download("ravdess", dest, base_url=fake.url)
        again = download("ravdess", dest, base_url=fake.url)
        assert not again.downloaded and again.extracted == 0 and again.checksum == fake.checksum
        assert [p for p, _ in fake.requests].count(FILE_PATH) == 1  # the record is read, the file is not
        (dest / "Actor_01" / "03-01-05-01-01-01-01.wav").unlink()
        repaired = download("ravdess", dest, base_url=fake.url)
        assert repaired.downloaded and repaired.extracted == 1
    assert_extracted(dest, members)


def test_interrupted_download_resumes_with_range(tmp_path, zipped):
    payload, members = zipped
    dest = tmp_path / "ravdess"
    cut = 70_000
    with FakeZenodo(payload) as fake:
        fake.cut_first_after = cut
        with pytest.raises(DownloadError) as info:
            download("ravdess", dest, base_url=fake.url, retries=0)
        assert "run the command again to resume" in str(info.value)
        part = dest / ".serq-download" / f"{SOURCE.key}.part"
        assert part.stat().st_size == cut
        assert not (dest / "Actor_01").exists()  # nothing extracted from a partial archive

        result = download("ravdess", dest, base_url=fake.url, keep_archive=True)
    assert result.resumed_from == cut
    file_requests = [r for p, r in fake.requests if p == FILE_PATH]
    assert file_requests == [None, f"bytes={cut}-"]
    assert (dest / ".serq-download" / SOURCE.key).read_bytes() == payload
    assert_extracted(dest, members)


def test_dropped_connection_is_retried_from_where_it_stopped(tmp_path, zipped):
    payload, members = zipped
    with FakeZenodo(payload) as fake:
        fake.cut_first_after = 50_000
        result = download("ravdess", tmp_path / "d", base_url=fake.url, retries=1)
    assert [r for p, r in fake.requests if p == FILE_PATH] == [None, "bytes=50000-"]
    assert result.downloaded
    assert_extracted(tmp_path / "d", members)


def test_server_ignoring_range_restarts_cleanly(tmp_path, zipped):
    payload, members = zipped
    with FakeZenodo(payload) as fake:
        fake.cut_first_after = 40_000
        fake.honour_range = False  # answers 200 with the whole file to a Range request
        download("ravdess", tmp_path / "d", base_url=fake.url, retries=1)
    assert_extracted(tmp_path / "d", members)


def test_checksum_mismatch_is_refused_and_nothing_extracted(tmp_path, zipped):
    payload, _ = zipped
    dest = tmp_path / "ravdess"
    with FakeZenodo(payload, checksum="md5:" + "0" * 32) as fake:
        with pytest.raises(DownloadError) as info:
            download("ravdess", dest, base_url=fake.url)
    assert info.value.code == "checksum_mismatch"
    assert not (dest / "Actor_01").exists()
    assert not (dest / ".serq-download" / f"{SOURCE.key}.part").exists()  # a bad prefix is never resumed from


def test_sha256_checksums_are_understood(tmp_path, zipped):
    payload, members = zipped
    with FakeZenodo(payload, checksum="sha256:" + hashlib.sha256(payload).hexdigest()) as fake:
        download("ravdess", tmp_path / "d", base_url=fake.url)
    assert_extracted(tmp_path / "d", members)


def test_record_without_checksum_is_refused(tmp_path, zipped):
    payload, _ = zipped
    with FakeZenodo(payload, checksum="") as fake:
        with pytest.raises(DownloadError, match="no usable checksum"):
            download("ravdess", tmp_path / "d", base_url=fake.url)
    assert [p for p, _ in fake.requests] == [RECORD_PATH]  # the file itself was never fetched


def test_unreachable_server_is_a_typed_error(tmp_path):
    with FakeZenodo(b"") as fake:
        url = fake.url
    with pytest.raises(DownloadError, match="cannot read the Zenodo record"):
        download("ravdess", tmp_path / "d", base_url=url, timeout=2)


def test_zip_member_outside_the_target_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Actor_01/ok.wav", b"x")
        zf.writestr("../escaped.txt", b"owned")
    with pytest.raises(DownloadError, match="outside"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_cli_download_json_and_checksum_failure(tmp_path, zipped, capsys, monkeypatch):
    payload, members = zipped
    with FakeZenodo(payload) as fake:
        # The base URL can come from the environment (SERQ_ZENODO_URL) as well as --base-url.
        from serq.settings import get_settings

        monkeypatch.setenv("SERQ_ZENODO_URL", fake.url)
        get_settings.cache_clear()
        try:
            code = serq_main(["data", "download", "ravdess", "--to", str(tmp_path / "d"), "--json"])
        finally:
            get_settings.cache_clear()
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checksum"] == fake.checksum and out["extracted"] == len(members)
    assert_extracted(tmp_path / "d", members)

    with FakeZenodo(payload, checksum="md5:" + "f" * 32) as bad:
        code = serq_main(["data", "download", "ravdess", "--to", str(tmp_path / "e"), "--base-url", bad.url])
    assert code == 2
    assert "[checksum_mismatch]" in capsys.readouterr().err
