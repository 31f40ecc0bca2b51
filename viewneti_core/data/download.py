"""Fetch one source file: resumable HTTP(S) download with retries and verification, or a local path.

DTU's Rectified.zip is ~123 GB served over plain HTTP, so an interrupted transfer must continue where
it stopped (HTTP Range on a `.part` file), transient failures must be retried with backoff, and a file
only reaches its final path after its size, (when known) sha256 and, for a zip, its readability were
checked: an HTML page served with 200, or a body cut short with no Content-Length, is never published.
A cached zip that no longer reads as one is dropped and fetched again. Local paths and `file://` URLs
are used in place, never copied.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from viewneti_core.data.archives import ensure_free_space, zip_problem

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MAX_BACKOFF_S = 120.0
UNREACHABLE_TRIES = 2  # a name that does not resolve or a refused connection: tries before giving up
UNREACHABLE_BACKOFF_S = 1.0
USER_AGENT = "viewneti-data/1"
_TRANSIENT_HTTP_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Bounded digit runs: a hostile header with thousands of digits must not reach int() (4300-digit limit).
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20}|\*)")
_UNSATISFIED_RANGE_RE = re.compile(r"bytes\s+\*/(\d{1,20})")


class DownloadError(RuntimeError):
    """A download failed for good (non-transient HTTP error, or retries exhausted)."""


class ChecksumMismatchError(DownloadError):
    """The bytes received are not the file (size, sha256 or zip structure wrong); the bad file was deleted."""


class HostUnreachableError(DownloadError, ValueError):
    """The host's name does not resolve, or it refuses or cannot route the connection.

    After a couple of quick tries this is not transient: a retry minutes later (6 downloads x 3 task
    attempts, as it once was) finds the same typo or the same dead server. A ValueError too, so the
    pipeline's retry policy (tasks/runtime.py) treats it as permanent.
    """


class _TransientError(Exception):
    """A failure worth retrying (connection drop, truncated body, 5xx)."""


class _UnreachableError(_TransientError):
    """DNS failure or refused/unroutable connection: retried only `UNREACHABLE_TRIES` times, quickly."""


@dataclass(frozen=True)
class FetchedFile:
    """Where a source ended up, with what we know about its content."""

    source: str  # as given by the user (URL or path)
    path: Path  # local file to read
    size: int
    sha256: str | None  # hex digest if computed or verified, else None
    downloaded: bool  # False for local paths used in place


def is_url(source: str) -> bool:
    """True for http(s) URLs; file:// URLs and plain paths are local."""
    return urllib.parse.urlsplit(source).scheme.lower() in ("http", "https")


def local_path(source: str) -> Path:
    """The filesystem path of a plain path or `file://` URL."""
    parts = urllib.parse.urlsplit(source)
    if parts.scheme.lower() == "file":
        return Path(urllib.request.url2pathname(parts.path))
    return Path(source).expanduser()


def url_filename(url: str) -> str:
    """Last path component of a URL (percent-decoded); the name a download is stored under."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in (".", ".."):
        raise DownloadError(f"cannot derive a file name from URL {url!r}")
    return name


def sha256_file(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    source: str,
    cache_dir: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    expect_zip: bool = False,
) -> FetchedFile:
    """Return a local file for `source`: a URL is downloaded into `cache_dir`, a path is used in place.

    `expect_zip`: a download must be a readable zip archive whatever its name (see `download`)."""
    if is_url(source):
        path = download(
            source,
            Path(cache_dir) / url_filename(source),
            sha256=sha256,
            size=size,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
            progress=progress,
            expect_zip=expect_zip,
        )
        record = _read_record(path)
        return FetchedFile(source, path, path.stat().st_size, record.get("sha256") if record else None, True)
    path = local_path(source)
    if not path.exists():
        raise FileNotFoundError(f"source {source!r} does not exist (expected a URL, a file or a directory)")
    if path.is_dir():
        return FetchedFile(source, path, 0, None, False)
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumMismatchError(f"{path}: size is {actual_size} bytes, expected {size}")
    digest = None
    if sha256 is not None:
        logger.info("verifying sha256 of %s", path)
        digest = sha256_file(path)
        if digest != sha256.lower():
            # A user's own file is never deleted; just refuse to use it.
            raise ChecksumMismatchError(f"{path}: sha256 is {digest}, expected {sha256.lower()}")
    return FetchedFile(source, path, actual_size, digest, False)


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    expect_zip: bool = False,
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` if present; verified before the atomic rename.

    `retries` bounds consecutive failed attempts that made no progress; an attempt that added bytes
    resets the count, so a long transfer over a flaky link keeps going. Waits double from `backoff_s`.
    A `dest` named `*.zip` (or any `dest` with `expect_zip`) must also read as a zip archive.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected_sha = sha256.lower() if sha256 else None
    is_zip = expect_zip or dest.name.lower().endswith(".zip")
    if dest.exists() and _cached_file_ok(dest, expected_sha, size, is_zip):
        logger.info("using cached download %s", dest)
        return dest

    part = dest.with_name(dest.name + ".part")
    failures = unreachable = 0
    while True:
        start_size = part.stat().st_size if part.exists() else 0
        try:
            total, digest, content_type = _attempt(url, part, timeout_s=timeout_s, progress=progress)
            if total is None and is_zip and (problem := zip_problem(part)) and not _html_start(part):
                # No Content-Length: a dropped connection looks like the end of the body. Ask again
                # from where it stopped; a server that says there is no more makes it final.
                raise _TransientError(f"the body ended after {part.stat().st_size} bytes without a "
                                      f"Content-Length and is {problem}")
            break
        except _TransientError as exc:
            now_size = part.stat().st_size if part.exists() else 0
            failures = 0 if now_size > start_size else failures + 1
            unreachable = unreachable + 1 if isinstance(exc, _UnreachableError) else 0
            kept = (f"; {now_size} bytes are kept in {part} and the next run resumes from there"
                    if now_size else "")
            if unreachable >= min(UNREACHABLE_TRIES, retries + 1):
                raise HostUnreachableError(f"cannot download {url}: {exc} ({unreachable} tries){kept}") from None
            if failures > retries:
                raise DownloadError(
                    f"giving up on {url} after {retries + 1} attempts without progress: {exc}{kept}"
                ) from exc
            wait = min(backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
            if unreachable:
                wait = min(wait, UNREACHABLE_BACKOFF_S)
            logger.warning("download of %s interrupted (%s); retrying in %.1f s", url, exc, wait)
            time.sleep(wait)

    _verify_part(part, url, total=total, size=size, digest=digest, expected_sha=expected_sha,
                 is_zip=is_zip, content_type=content_type)
    os.replace(part, dest)
    _meta_path(part).unlink(missing_ok=True)
    _write_record(dest, url, digest)
    logger.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, dest, dest.stat().st_size, digest)
    return dest


# ---- one HTTP attempt --------------------------------------------------------------------------


def _attempt(url: str, part: Path, *, timeout_s: float, progress: bool) -> tuple[int | None, str, str | None]:
    """One request: continue `part` from its current size. Returns (total size if known, sha256,
    Content-Type)."""
    offset = part.stat().st_size if part.exists() else 0
    validator = _read_validator(part) if offset else None
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator:
            # If the file changed on the server since the .part began, get the whole new file instead.
            headers["If-Range"] = validator
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return (*_handle_unsatisfiable_range(exc, part, offset), None)
        if exc.code in _TRANSIENT_HTTP_CODES:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if (why := _unreachable_reason(exc, url)) is not None:
            raise _UnreachableError(why) from exc
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc

    with response:
        content_type = response.headers.get("Content-Type")
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"), url)
            if start != offset:  # not a continuation of the .part: start the whole file again
                logger.info("server resumed %s at byte %d, not %d; discarding the partial file", url, start, offset)
                part.unlink(missing_ok=True)
                _meta_path(part).unlink(missing_ok=True)
                raise _TransientError(f"asked for bytes from {offset}, the server sent from {start}; restarting "
                                      "from zero")
            mode = "ab"
        else:
            if offset:
                logger.info("server did not resume %s at byte %d; starting over", url, offset)
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        if total is not None:
            ensure_free_space(part.parent, total - offset, f"downloading {url}")
        _write_validator(part, response.headers)

        digest = hashlib.sha256()
        if mode == "ab":
            _hash_prefix(part, offset, digest)
        received = _stream_body(response, part, mode, offset, total, url, digest, progress)

    if total is not None and offset + received != total:
        raise _TransientError(f"connection closed after {offset + received} of {total} bytes")
    return total, digest.hexdigest(), content_type


_UNROUTABLE_ERRNOS = frozenset({101, 113})  # ENETUNREACH, EHOSTUNREACH (Linux numbering)


def _unreachable_reason(exc: BaseException, url: str) -> str | None:
    """What to tell the user when `exc` means the host cannot be reached at all, else None."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    if isinstance(reason, socket.gaierror):
        return (f"the host name {host!r} does not resolve ({reason.strerror or reason}): check the URL "
                "and this machine's DNS / network access")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if isinstance(reason, ConnectionRefusedError):
        return f"{host}:{port} refused the connection: is the server running, and is the port right?"
    if isinstance(reason, OSError) and reason.errno in _UNROUTABLE_ERRNOS:
        return f"no route to {host}:{port} ({reason.strerror}): check the network / proxy settings"
    return None


def _stream_body(response, part: Path, mode: str, offset: int, total: int | None, url: str,
                 digest, progress: bool) -> int:
    """Copy the response body to `part`, hashing as we go; network errors become transient."""
    received = 0
    bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
               desc=url_filename(url), disable=not progress, leave=False)
    try:
        with open(part, mode) as fh:
            while True:
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (OSError, http.client.HTTPException) as exc:
                    raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
                if not chunk:
                    break
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
    return received


def _handle_unsatisfiable_range(exc: urllib.error.HTTPError, part: Path, offset: int) -> tuple[int, str]:
    """416: the .part may already be complete (total == offset); otherwise it is stale, so drop it."""
    match = _UNSATISFIED_RANGE_RE.search(exc.headers.get("Content-Range", "") if exc.headers else "")
    if match and int(match.group(1)) == offset:
        digest = hashlib.sha256()
        _hash_prefix(part, offset, digest)
        return offset, digest.hexdigest()
    logger.info("server rejected resuming %s at byte %d; discarding the partial file", part, offset)
    part.unlink(missing_ok=True)
    _meta_path(part).unlink(missing_ok=True)
    raise _TransientError("HTTP 416 range not satisfiable; restarting from zero")


def _parse_content_range(value: str | None, url: str) -> tuple[int, int | None]:
    match = _CONTENT_RANGE_RE.search(value or "")
    if match is None:
        raise DownloadError(f"{url}: partial response without a valid Content-Range ({value!r})")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _hash_prefix(path: Path, length: int, digest) -> None:
    """Feed the first `length` bytes already on disk into `digest` (resume hashes one pass overall)."""
    remaining = length
    with open(path, "rb") as fh:
        while remaining > 0:
            chunk = fh.read(min(CHUNK_SIZE, remaining))
            if not chunk:
                raise DownloadError(f"{path} shrank while resuming")
            digest.update(chunk)
            remaining -= len(chunk)


# ---- verification and bookkeeping --------------------------------------------------------------


def _verify_part(part: Path, url: str, *, total: int | None, size: int | None, digest: str,
                 expected_sha: str | None, is_zip: bool, content_type: str | None) -> None:
    """Check size, sha256 and zip structure; a bad file is deleted so it can never be picked up later."""
    actual = part.stat().st_size
    problems = []
    if total is not None and actual != total:
        problems.append(f"size {actual} bytes but the server announced {total}")
    if size is not None and actual != size:
        problems.append(f"size {actual} bytes, expected {size}")
    if expected_sha is not None and digest != expected_sha:
        problems.append(f"sha256 {digest}, expected {expected_sha}")
    if is_zip and (problem := zip_problem(part)):
        if _html_start(part):
            problems.append(f"the server sent an HTML page (Content-Type {content_type or 'not given'}), "
                            "not the archive: the URL may point to a web page, a login or an error page")
        else:
            problems.append(f"it is {problem}")
    if problems:
        part.unlink(missing_ok=True)
        _meta_path(part).unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"download of {url} is corrupt ({'; '.join(problems)}); the bad file was deleted. "
            "Run again to re-download, or check the expected checksum."
        )


def _record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256.json")


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _write_record(dest: Path, url: str, digest: str) -> None:
    """Remember the digest of a finished download so reusing it does not re-read 100+ GB."""
    stat = dest.stat()
    record = {"url": url, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    tmp = _record_path(dest).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _record_path(dest))


def _read_record(dest: Path) -> dict | None:
    """The digest record of `dest`, only if it still describes the file on disk."""
    try:
        record = json.loads(_record_path(dest).read_text())
        stat = dest.stat()
    except (OSError, ValueError):
        return None
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return record


def _cached_file_ok(dest: Path, expected_sha: str | None, size: int | None, is_zip: bool) -> bool:
    """A finished download is reused if it matches what we expect; a mismatching or (for a zip)
    unreadable one is deleted, so this run fetches it again."""
    actual_size = dest.stat().st_size
    record = _read_record(dest)
    digest = record["sha256"] if record else None
    if expected_sha is not None and digest is None:
        digest = sha256_file(dest)
    bad = (size is not None and actual_size != size) or (expected_sha is not None and digest != expected_sha)
    unreadable = zip_problem(dest) if is_zip and not bad else None
    if bad or unreadable:
        logger.warning("cached %s is unusable (%s); downloading it again", dest,
                       unreadable or "it does not match the expected size/sha256")
        dest.unlink()
        _record_path(dest).unlink(missing_ok=True)
        return False
    if record is None and digest is not None:
        _write_record(dest, "", digest)
    return True


def _html_start(path: Path) -> bool:
    """True if the file begins like an HTML document (what portals and error pages send with 200)."""
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<html" in head


def _write_validator(part: Path, headers) -> None:
    """Store the ETag (strong only) or Last-Modified of the resource the .part belongs to."""
    etag = headers.get("ETag")
    validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
    if validator:
        _meta_path(part).write_text(json.dumps({"validator": validator}))
    else:
        _meta_path(part).unlink(missing_ok=True)


def _read_validator(part: Path) -> str | None:
    try:
        validator = json.loads(_meta_path(part).read_text()).get("validator")
    except (OSError, ValueError):
        return None
    return validator if isinstance(validator, str) and validator else None


__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "FetchedFile",
    "HostUnreachableError",
    "download",
    "fetch",
    "is_url",
    "local_path",
    "sha256_file",
    "url_filename",
]
