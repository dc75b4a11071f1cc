"""Downloading public corpora: Zenodo record -> checksummed archive -> extracted folder.

Only the standard library is used (urllib, zipfile, hashlib), so the command works
without the ``worker`` extra. Nothing here runs unless a person asks for it with
``serq data download``.

The flow for one dataset:

1. read the Zenodo record (``{base}/api/records/{id}``) for the file's size,
   checksum and download link: the checksum is taken from the record at download
   time, never hard-coded;
2. download into ``DIR/.serq-download/<file>.part``, resuming a previous partial
   download with an HTTP ``Range`` request (a server that ignores ``Range`` just
   restarts it);
3. verify the checksum (md5 or sha256, as the record names it); a mismatch deletes
   the partial file and fails;
4. extract the zip into ``DIR``, refusing members that would land outside it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from serq.errors import SerqError

#: ``progress(done_bytes, total_bytes)`` while downloading.
Progress = Callable[[int, int], None]

CHUNK = 1 << 16  # bytes per read
USER_AGENT = "serq-data-download (+https://github.com/; speech emotion recognition)"


class DownloadError(SerqError):
    """The download, its checksum or the extraction failed."""

    code = "download_failed"


@dataclass(frozen=True)
class Source:
    """Where a dataset lives: a file of a Zenodo record."""

    name: str
    record: str
    key: str  # the file's name in the record
    description: str
    licence: str


DATASETS: dict[str, Source] = {
    "ravdess": Source(
        name="ravdess",
        record="1188976",
        key="Audio_Speech_Actors_01-24.zip",
        description="RAVDESS speech: 1440 clips, 24 actors, 8 emotions, 48 kHz WAV (~208 MB)",
        licence="CC BY-NC-SA 4.0 (Livingstone & Russo 2018, doi:10.1371/journal.pone.0196391)",
    ),
}


@dataclass(frozen=True)
class RemoteFile:
    """One file of a record: its download URL, size in bytes and ``algorithm:hexdigest``."""

    url: str
    size: int | None
    checksum: str


@dataclass
class DownloadResult:
    dataset: str
    dir: str
    archive: str
    bytes: int
    checksum: str
    resumed_from: int
    downloaded: bool  # false when a complete, verified archive was already there
    extracted: int  # files written (already-present identical files are not rewritten)

    def to_dict(self) -> dict:
        return asdict(self)


def _open(url: str, *, headers: dict[str, str] | None = None, timeout: float = 30.0):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs only, checked below


def _check_scheme(url: str) -> None:
    if not url.lower().startswith(("http://", "https://")):
        raise DownloadError(f"refusing a non-HTTP URL: {url}")


def record_file(base_url: str, record: str, key: str, *, timeout: float = 30.0) -> RemoteFile:
    """Look ``key`` up in Zenodo record ``record``: download link, size and checksum.

    Understands both record layouts Zenodo has served (``files`` as a list, or as
    ``{"entries": ...}``); links may be absolute or relative to ``base_url``.
    """
    url = f"{base_url.rstrip('/')}/api/records/{record}"
    _check_scheme(url)
    try:
        with _open(url, headers={"Accept": "application/json"}, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot read the Zenodo record {url}: {_why(exc)}") from None
    files = data.get("files") or []
    if isinstance(files, dict):
        entries = files.get("entries") or []
        files = list(entries.values()) if isinstance(entries, dict) else entries
    for entry in files:
        if entry.get("key") != key and entry.get("filename") != key:
            continue
        checksum = str(entry.get("checksum") or "")
        algorithm = checksum.split(":", 1)[0] if ":" in checksum else ""
        if algorithm not in ("md5", "sha256"):
            raise DownloadError(f"record {record} gives no usable checksum for {key} ({checksum!r}); refusing to download unverified data")
        links = entry.get("links") or {}
        link = links.get("content") or links.get("self") or links.get("download") or f"/api/records/{record}/files/{key}/content"
        if link.startswith("/"):
            link = base_url.rstrip("/") + link
        _check_scheme(link)
        size = entry.get("size", entry.get("filesize"))
        return RemoteFile(url=link, size=int(size) if size is not None else None, checksum=checksum)
    raise DownloadError(f"record {record} at {base_url} has no file {key!r}")


def file_checksum(path: Path, algorithm: str) -> str:
    """Hex digest of a file's content (streamed)."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, part: Path, *, size: int | None = None, retries: int = 3, timeout: float = 30.0,
          progress: Progress | None = None) -> int:
    """Download ``url`` into ``part``, resuming whatever ``part`` already holds.

    A dropped connection is retried (``retries`` times, from where it stopped).

    Returns:
        the byte count ``part`` held before this call (0 for a fresh download).
    Raises:
        DownloadError when every attempt failed; ``part`` keeps the bytes received,
        so a later call resumes from there.
    """
    _check_scheme(url)
    part.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = part.stat().st_size if part.exists() else 0
    if size is not None and resumed_from > size:  # not ours, or the file changed: start over
        part.unlink()
        resumed_from = 0
    last_error = ""
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have == size:
            return resumed_from
        try:
            _fetch_once(url, part, have, size, timeout, progress)
            return resumed_from
        except DownloadError:
            raise
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last_error = _why(exc)
            if attempt < retries:
                time.sleep(min(0.5 * 2.0**attempt, 10.0))  # brief backoff: a flaky link often recovers
    got = part.stat().st_size if part.exists() else 0
    raise DownloadError(
        f"download of {url} failed after {retries + 1} attempt(s) ({last_error}); "
        f"{got} bytes kept in {part}, run the command again to resume"
    )


def _fetch_once(url: str, part: Path, have: int, size: int | None, timeout: float, progress: Progress | None) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _open(url, headers=headers, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have and (size is None or have >= size):
            return  # nothing left to fetch; the checksum decides whether it is right
        if exc.code == 416:  # our partial file is not a prefix the server recognises
            part.unlink(missing_ok=True)
            raise ConnectionError("server refused the resume range; restarting") from None
        if 400 <= exc.code < 500:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        raise
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignored Range and sends the whole file
        total = size
        length = resp.headers.get("Content-Length")
        if total is None and length is not None:
            total = have + int(length)
        mode = "ab" if have else "wb"
        done = have
        with part.open(mode) as fh:
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                done += len(chunk)
                if progress and total:
                    progress(done, total)
        if length is not None and done - have < int(length):
            raise ConnectionError(f"connection closed after {done} of {have + int(length)} bytes")
        if size is not None and done < size:
            raise ConnectionError(f"connection closed after {done} of {size} bytes")


def extract_zip(archive: Path, dest: Path) -> int:
    """Extract ``archive`` into ``dest``; returns the number of files written.

    Members with absolute paths or ``..`` are refused (a zip cannot write outside
    ``dest``); a file already present with the same size is left alone, so an
    interrupted extraction can simply be run again. Each file is written to a
    temporary name and renamed, so none is ever half-written.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written = 0
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DownloadError(f"{archive.name} is not a readable zip archive ({exc})") from None
    with zf:
        for info in zf.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or ":" in info.filename:
                raise DownloadError(f"{archive.name}: member {info.filename!r} would extract outside {dest}; refused")
            if name.parts and name.parts[0] == "__MACOSX":
                continue
            target = (root / Path(*name.parts)) if name.parts else root
            if not target.resolve().is_relative_to(root):
                raise DownloadError(f"{archive.name}: member {info.filename!r} escapes {dest}; refused")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            if target.is_file() and target.stat().st_size == info.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.part")
            try:
                with zf.open(info) as src, tmp.open("wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                tmp.unlink(missing_ok=True)
                raise DownloadError(f"{archive.name}: cannot extract {info.filename} ({exc})") from None
            os.replace(tmp, target)
            written += 1
    return written


def download(
    dataset: str,
    dest: str | Path,
    *,
    base_url: str = "https://zenodo.org",
    keep_archive: bool = False,
    retries: int = 3,
    timeout: float = 30.0,
    progress: Progress | None = None,
) -> DownloadResult:
    """Download, verify and extract ``dataset`` (a key of :data:`DATASETS`) into ``dest``."""
    if dataset not in DATASETS:
        raise DownloadError(f"unknown dataset {dataset!r}; available: {', '.join(DATASETS)}", code="invalid_request")
    source = DATASETS[dataset]
    dest = Path(dest).expanduser()
    remote = record_file(base_url, source.record, source.key, timeout=timeout)
    algorithm, expected = remote.checksum.split(":", 1)
    checksum = f"{algorithm}:{expected.lower()}"
    work = dest / ".serq-download"
    archive = work / source.key
    part = work / f"{source.key}.part"
    marker = dest / f".serq-{source.name}.json"

    if not (keep_archive and not archive.is_file()) and _complete(marker, dest, checksum):
        # This very archive was verified and extracted before, and every file is still there.
        size = json.loads(marker.read_text())["bytes"]
        return DownloadResult(dataset=dataset, dir=str(dest), archive=str(archive) if archive.is_file() else "",
                              bytes=size, checksum=checksum, resumed_from=0, downloaded=False, extracted=0)

    downloaded, resumed_from = False, 0
    if not (archive.is_file() and file_checksum(archive, algorithm) == expected.lower()):
        resumed_from = fetch(remote.url, part, size=remote.size, retries=retries, timeout=timeout, progress=progress)
        actual = file_checksum(part, algorithm)
        if actual != expected.lower():
            part.unlink(missing_ok=True)  # a corrupt prefix must not be resumed from
            raise DownloadError(
                f"{source.key}: {algorithm} checksum mismatch (got {actual}, the record says {expected}); "
                "the partial file was deleted, run the command again to download it afresh",
                code="checksum_mismatch",
            )
        os.replace(part, archive)
        downloaded = True
    size = archive.stat().st_size
    extracted = extract_zip(archive, dest)
    _write_marker(marker, archive, checksum, size)
    if not keep_archive:
        archive.unlink()
        try:
            work.rmdir()
        except OSError:
            pass
    return DownloadResult(
        dataset=dataset, dir=str(dest), archive=str(archive) if keep_archive else "", bytes=size,
        checksum=checksum, resumed_from=resumed_from, downloaded=downloaded, extracted=extracted,
    )


def _write_marker(marker: Path, archive: Path, checksum: str, size: int) -> None:
    """Record what was extracted (names and sizes), so a re-run can skip the download."""
    with zipfile.ZipFile(archive) as zf:
        files = {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()
                 and not i.filename.startswith("__MACOSX/")}
    marker.write_text(json.dumps({"checksum": checksum, "bytes": size, "files": files}))


def _complete(marker: Path, dest: Path, checksum: str) -> bool:
    """True if ``marker`` says this checksum was extracted into ``dest`` and every file is still there."""
    try:
        record = json.loads(marker.read_text())
        if record.get("checksum") != checksum:
            return False
        return all((dest / name).is_file() and (dest / name).stat().st_size == size
                   for name, size in record["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{exc.__class__.__name__}: {exc}"
