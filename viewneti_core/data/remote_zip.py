"""Read members of a remote zip over HTTP Range requests, without downloading the archive.

A benchmark needs the light-3 images of a few scans out of the ~123 GB Rectified.zip (a per-scan run
needs one scan). `RangeFile` is a seekable, read-only file object over a URL that `zipfile.ZipFile`
reads like a local file: the end record and the central directory cost one request or two, and each
member is then fetched with one request spanning its local header and data (the spans come from the
central directory). Every member is checked against its CRC-32 when it is extracted (archives.py);
a whole-archive sha256 cannot be checked this way, since most bytes are never read.

Requests carry `If-Range` with the archive's ETag / Last-Modified: if the file changes on the server
while it is being read, the server answers 200 and the read fails instead of mixing two versions.
"""

from __future__ import annotations

import bisect
import http.client
import io
import logging
import re
import time
import urllib.error
import urllib.request
import zipfile

from viewneti_core.data.download import (
    _TRANSIENT_HTTP_CODES,
    USER_AGENT,
    DownloadError,
    HostUnreachableError,
    _unreachable_reason,
    url_filename,
)

logger = logging.getLogger(__name__)

_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d{1,20})-(\d{1,20})/(\d{1,20})")  # bounded: int() of a huge one fails
TAIL_BYTES = 64 * 1024  # the first read at the end covers the end record (and a short comment)
MAX_SPAN_BYTES = 64 << 20  # one request reads at most this much (a member is then read in pieces)


class RangeNotSupportedError(DownloadError):
    """The server ignores Range requests (it answered 200 with the whole file), answers a closed range
    with another span (e.g. from the offset to the end) or with 416: use a full, verified download."""


class RangeFile(io.RawIOBase):
    """`zipfile.ZipFile(RangeFile.open(url))`: the remote archive as a seekable file, read on demand."""

    def __init__(self, url: str, size: int, validator: str | None, *, timeout_s: float = 60.0,
                 retries: int = 3, backoff_s: float = 1.0) -> None:
        super().__init__()
        self.url, self.size, self.validator = url, size, validator
        self.name = url_filename(url)
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.bytes_received = 0  # body bytes of every response: what partial mode cost
        self.requests = 0
        self._pos = 0
        self._buf_start, self._buf = 0, b""
        self._span_ends: list[int] = []  # sorted member boundaries (local header offsets, central dir)
        self._kept: list[tuple[int, bytes]] = []  # reads before the spans were known: end record, directory

    @classmethod
    def open(cls, url: str, *, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0) -> RangeFile:
        """Probe `url` with a one-byte Range request; RangeNotSupportedError if the server ignores it."""
        probe = cls(url, 0, None, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        status, headers, body = probe._get({"Range": "bytes=0-0"}, allow_full=True, span=(0, 1))
        if status != 206:
            raise RangeNotSupportedError(f"{url}: the server answered a Range request with HTTP {status}")
        match = _CONTENT_RANGE_RE.search(headers.get("Content-Range", ""))
        if match is None:
            raise RangeNotSupportedError(f"{url}: no usable Content-Range ({headers.get('Content-Range')!r})")
        etag = headers.get("ETag")
        validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
        out = cls(url, int(match.group(3)), validator, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        out.bytes_received, out.requests = len(body), probe.requests
        return out

    def __str__(self) -> str:  # how archives.py names the archive in its messages
        return self.url

    def set_member_spans(self, offsets: list[int]) -> None:
        """Boundaries between members (their local header offsets and the central directory's): a read
        inside a member fetches up to the next boundary, i.e. the member in one request."""
        self._span_ends = sorted(set(offsets) | {self.size})

    # ---- io.RawIOBase ----

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position in {self.url}")
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        if end <= self._pos:
            return b""
        if not (self._buf_start <= self._pos and end <= self._buf_start + len(self._buf)):
            kept = [(s, b) for s, b in self._kept if s <= self._pos and end <= s + len(b)]
            if kept:
                self._buf_start, self._buf = kept[0]
            else:
                self._fill(self._pos, end)
                if not self._span_ends:  # every ZipFile over this file reads them again: keep them
                    self._kept.append((self._buf_start, self._buf))
        data = self._buf[self._pos - self._buf_start:end - self._buf_start]
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    # ---- HTTP ----

    def _fill(self, start: int, end: int) -> None:
        """Fetch [start, end) and, read-ahead, on to the end of the member it falls in (or the tail)."""
        if start >= self.size - TAIL_BYTES:
            stop = self.size
            start = min(start, max(0, self.size - TAIL_BYTES))
        else:
            i = bisect.bisect_right(self._span_ends, start)
            stop = self._span_ends[i] if i < len(self._span_ends) else end
        stop = max(end, min(stop, start + MAX_SPAN_BYTES))
        status, headers, body = self._get({"Range": f"bytes={start}-{stop - 1}"}, span=(start, stop))
        if len(body) != stop - start:
            raise DownloadError(f"{self.url}: asked for bytes {start}-{stop - 1}, got "
                                f"{headers.get('Content-Range')!r} and {len(body)} bytes")
        self._buf_start, self._buf = start, body

    def _get(self, extra: dict[str, str], allow_full: bool = False,
             span: tuple[int, int] | None = None) -> tuple[int, dict, bytes]:
        """One Range request for bytes [span[0], span[1]), retried on transient failures. A 206 whose
        Content-Range is another span is closed unread (a server answering "from N to the end" would
        stream the rest of a 100+ GB archive into memory): RangeNotSupportedError, like a 416."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **extra}
        if self.validator:
            headers["If-Range"] = self.validator
        failures = 0
        while True:
            self.requests += 1
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                            timeout=self.timeout_s) as response:
                    status, got = response.status, dict(response.headers)
                    if status == 200 and allow_full:
                        return status, got, b""  # closed unread: the caller falls back to a download
                    if status == 200 and self.validator and self.validator in (got.get("ETag"), got.get("Last-Modified")):
                        # the same file, sent whole: the server stopped honouring Range (closed unread)
                        raise RangeNotSupportedError(f"{self.url}: the server answered {extra.get('Range')} "
                                                     "with the whole file (HTTP 200)")
                    if status != 206:
                        raise DownloadError(f"{self.url} changed on the server while it was being read "
                                            f"(HTTP {status} to a Range request with If-Range); run again")
                    _check_span(self.url, got.get("Content-Range"), span)
                    body = response.read()
                    self.bytes_received += len(body)
                    return status, got, body
            except urllib.error.HTTPError as exc:
                if exc.code == 416:
                    raise RangeNotSupportedError(f"{self.url}: the server answered {extra.get('Range')} with "
                                                 f"HTTP 416 (range not satisfiable) after {failures} failed "
                                                 "attempt(s)") from None
                if exc.code not in _TRANSIENT_HTTP_CODES:
                    raise DownloadError(f"reading {self.url} failed: HTTP {exc.code} {exc.reason}") from None
                problem = f"HTTP {exc.code} {exc.reason}"
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if (why := _unreachable_reason(exc, self.url)) is not None and failures + 1 >= 2:
                    raise HostUnreachableError(f"cannot download {self.url}: {why} (2 tries)") from None
                problem = f"{type(exc).__name__}: {exc}"
            failures += 1
            if failures > self.retries:
                raise DownloadError(f"giving up on {self.url} after {failures} failed Range requests: {problem}")
            wait = self.backoff_s * 2 ** (failures - 1)
            logger.warning("Range request to %s failed (%s); retrying in %.1f s", self.url, problem, wait)
            time.sleep(wait)


def _check_span(url: str, content_range: str | None, span: tuple[int, int] | None) -> None:
    """The 206 must be exactly the requested span (checked before its body is read)."""
    match = _CONTENT_RANGE_RE.search(content_range or "")
    if match is None:
        raise RangeNotSupportedError(f"{url}: no usable Content-Range in a partial answer ({(content_range or '')[:80]!r})")
    if span is not None and (int(match.group(1)), int(match.group(2)) + 1) != span:
        raise RangeNotSupportedError(f"{url}: asked for bytes {span[0]}-{span[1] - 1}, the server answered "
                                     f"{content_range[:80]!r}")


def open_remote_zip(url: str, *, timeout_s: float = 60.0, retries: int = 3, backoff_s: float = 1.0) -> RangeFile:
    """A `RangeFile` over the zip at `url` with its member spans set (one ZipFile read of the central
    directory). RangeNotSupportedError: fall back to a full download; NotAnArchiveError: not a zip."""
    from viewneti_core.data.archives import NotAnArchiveError

    raw = RangeFile.open(url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
    try:
        with zipfile.ZipFile(raw) as zf:
            offsets = [info.header_offset for info in zf.infolist()] + [zf.start_dir]
    except zipfile.BadZipFile as exc:
        raise NotAnArchiveError(f"{url} is not a readable zip archive ({exc})") from None
    raw.set_member_spans(offsets)
    return raw


__all__ = ["RangeFile", "RangeNotSupportedError", "open_remote_zip"]
