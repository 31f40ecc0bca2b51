"""Resumable download against a real local HTTP server (127.0.0.1, faults injected server-side)."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import zipfile
from collections import namedtuple

import pytest
from fixtures.http_server import RangeServer

from viewneti_core.data import download as dl
from viewneti_core.data.archives import InsufficientSpaceError


def _zip_bytes(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("Rectified/payload.bin", payload)
    return buf.getvalue()


DATA = _zip_bytes(os.urandom(300_000))  # a real zip: `*.zip` downloads must read as one
SHA = hashlib.sha256(DATA).hexdigest()
FAST = {"backoff_s": 0.01, "timeout_s": 5.0, "progress": False}


@pytest.fixture
def server():
    with RangeServer() as srv:
        yield srv


def test_plain_download_verified_and_atomic(server, tmp_path):
    url = server.add("/data/Rectified.zip", DATA)
    dest = dl.download(url, tmp_path / "Rectified.zip", sha256=SHA, size=len(DATA), **FAST)
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "Rectified.zip.part").exists()
    assert len(server.state.requests) == 1


def test_interrupted_transfer_resumes_within_one_call(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.cut_after = [100_000]
    dest = dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    reqs = server.state.requests
    assert [r.status for r in reqs] == [200, 206]
    assert reqs[0].range is None and reqs[1].range == "bytes=100000-"
    assert reqs[1].if_range == '"v1"'
    assert server.state.bytes_sent == len(DATA)  # nothing fetched twice


def test_interrupted_transfer_resumes_in_a_later_call(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.cut_after = [123_456]
    server.state.fail_with = [0, 503]  # the cut made progress, so the call gives up only after a 503
    with pytest.raises(dl.DownloadError, match="resumes"):
        dl.download(url, tmp_path / "a.zip", retries=0, **FAST)
    assert not (tmp_path / "a.zip").exists()  # a partial file never sits at the final path
    assert (tmp_path / "a.zip.part").stat().st_size == 123_456
    dest = dl.download(url, tmp_path / "a.zip", sha256=SHA, retries=0, **FAST)
    assert dest.read_bytes() == DATA
    assert [r.range for r in server.state.requests] == [None, "bytes=123456-", "bytes=123456-"]
    assert server.state.bytes_sent == len(DATA)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.ignore_range = True
    (tmp_path / "a.zip.part").write_bytes(b"garbage that is not the file prefix")
    dest = dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.state.requests[0].range is not None and server.state.requests[0].status == 200


def test_changed_resource_is_not_spliced(server, tmp_path):
    """If-Range: a .part of an older version is discarded when the server's ETag changed."""
    url = server.add("/a.zip", DATA, etag='"v2"')
    (tmp_path / "a.zip.part").write_bytes(b"x" * 1000)
    (tmp_path / "a.zip.part.json").write_text('{"validator": "\\"v1\\""}')
    dest = dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert server.state.requests[0].if_range == '"v1"' and server.state.requests[0].status == 200


def test_complete_part_with_416_is_finalised(server, tmp_path):
    url = server.add("/a.zip", DATA)
    (tmp_path / "a.zip.part").write_bytes(DATA)
    dest = dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert dest.read_bytes() == DATA
    assert [r.status for r in server.state.requests] == [416]


def test_checksum_mismatch_deletes_and_raises(server, tmp_path):
    url = server.add("/a.zip", DATA)
    with pytest.raises(dl.ChecksumMismatchError, match="sha256"):
        dl.download(url, tmp_path / "a.zip", sha256="0" * 64, **FAST)
    assert not (tmp_path / "a.zip").exists()
    assert not (tmp_path / "a.zip.part").exists()


def test_size_mismatch_deletes_and_raises(server, tmp_path):
    url = server.add("/a.zip", DATA)
    with pytest.raises(dl.ChecksumMismatchError, match="size"):
        dl.download(url, tmp_path / "a.zip", size=len(DATA) + 1, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_transient_5xx_is_retried_and_404_is_not(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.fail_with = [503, 502]
    assert dl.download(url, tmp_path / "a.zip", retries=3, **FAST).read_bytes() == DATA
    assert [r.status for r in server.state.requests] == [503, 502, 200]

    server.state.requests.clear()
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download(server.url("/missing.zip"), tmp_path / "missing.zip", retries=3, **FAST)
    assert len(server.state.requests) == 1


def test_retries_are_bounded(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.fail_with = [503] * 10
    with pytest.raises(dl.DownloadError, match="3 attempts"):
        dl.download(url, tmp_path / "a.zip", retries=2, **FAST)
    assert len(server.state.requests) == 3


def test_connection_refused_is_retried_then_fails(tmp_path):
    with RangeServer() as srv:
        url = srv.url("/a.zip")
    with pytest.raises(dl.HostUnreachableError, match=r"refused the connection.*\(2 tries\)"):
        dl.download(url, tmp_path / "a.zip", retries=1, **FAST)


def test_cached_download_is_reused_and_a_bad_one_replaced(server, tmp_path):
    url = server.add("/a.zip", DATA)
    dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST)
    assert len(server.state.requests) == 1
    (tmp_path / "a.zip").write_bytes(b"corrupted")
    assert dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST).read_bytes() == DATA
    assert len(server.state.requests) == 2


def test_disk_space_checked_before_downloading(server, tmp_path, monkeypatch):
    url = server.add("/a.zip", DATA)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(InsufficientSpaceError, match="not enough disk space"):
        dl.download(url, tmp_path / "a.zip", **FAST)
    assert not (tmp_path / "a.zip").exists()


def test_local_paths_and_file_urls_are_used_in_place(tmp_path):
    archive = tmp_path / "local.zip"
    archive.write_bytes(DATA)
    cache = tmp_path / "cache"
    for source in (str(archive), archive.as_uri()):
        fetched = dl.fetch(source, cache, sha256=SHA, progress=False)
        assert fetched.path == archive and not fetched.downloaded and fetched.sha256 == SHA
    assert not cache.exists()
    with pytest.raises(dl.ChecksumMismatchError):
        dl.fetch(str(archive), cache, sha256="1" * 64)
    assert archive.exists()  # a user's own file is never deleted
    with pytest.raises(FileNotFoundError):
        dl.fetch(str(tmp_path / "nope.zip"), cache)


def test_fetch_url_goes_to_cache_with_digest(server, tmp_path):
    url = server.add("/dir/Some%20File.zip", DATA)
    fetched = dl.fetch(url, tmp_path / "cache", **FAST)
    assert fetched.path == tmp_path / "cache" / "Some File.zip"
    assert fetched.downloaded and fetched.sha256 == SHA and fetched.size == len(DATA)


# ---- what is never published (issue 14, item 1) ------------------------------------------------


def test_html_page_served_with_200_is_not_published(server, tmp_path):
    url = server.add("/a.zip", b"<!DOCTYPE html>\n<html><body>Please log in</body></html>\n")
    server.state.content_types["/a.zip"] = "text/html; charset=utf-8"
    with pytest.raises(dl.ChecksumMismatchError, match=r"HTML page \(Content-Type text/html"):
        dl.download(url, tmp_path / "a.zip", **FAST)
    assert list(tmp_path.iterdir()) == []
    assert len(server.state.requests) == 1  # not retried: the same page would come back

    server.add("/a.zip", DATA)  # the server is healthy again: a later run succeeds
    del server.state.content_types["/a.zip"]
    assert dl.download(url, tmp_path / "a.zip", **FAST).read_bytes() == DATA


def test_a_url_without_zip_name_is_checked_when_a_zip_is_expected(server, tmp_path):
    url = server.add("/get", b"<html>not found</html>")
    with pytest.raises(dl.ChecksumMismatchError, match="HTML page"):
        dl.fetch(url, tmp_path, expect_zip=True, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_without_content_length_is_resumed_not_published(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.no_length = True
    server.state.cut_after = [100_000]
    dest = dl.download(url, tmp_path / "a.zip", **FAST)  # the cut body is not a zip: ask for the rest
    assert dest.read_bytes() == DATA
    assert [(r.status, r.range) for r in server.state.requests] == [(200, None), (206, "bytes=100000-")]

    # The same, with the retry failing: nothing at the final path; the next run resumes and succeeds.
    server.state.requests.clear()
    other = tmp_path / "later" / "a.zip"
    server.state.cut_after = [100_000]
    server.state.fail_with = [0, 503]
    with pytest.raises(dl.DownloadError, match="resumes"):
        dl.download(url, other, retries=0, **FAST)
    assert not other.exists() and other.with_name("a.zip.part").stat().st_size == 100_000
    assert dl.download(url, other, sha256=SHA, retries=0, **FAST).read_bytes() == DATA


def test_truncated_archive_without_content_length_is_deleted(server, tmp_path):
    """The server's own copy ends early: once it says there is no more (416), the file is refused."""
    url = server.add("/a.zip", DATA[:100_000])
    server.state.no_length = True
    with pytest.raises(dl.ChecksumMismatchError, match="not a readable zip archive"):
        dl.download(url, tmp_path / "a.zip", **FAST)
    assert list(tmp_path.iterdir()) == []
    assert [r.status for r in server.state.requests] == [200, 416]


def test_body_always_shorter_than_announced_is_not_published(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.ignore_range = True
    server.state.cut_after = [50_000] * 5
    with pytest.raises(dl.DownloadError, match="50000 of"):
        dl.download(url, tmp_path / "a.zip", retries=1, **FAST)
    assert not (tmp_path / "a.zip").exists()
    server.state.cut_after.clear()
    assert dl.download(url, tmp_path / "a.zip", sha256=SHA, **FAST).read_bytes() == DATA


def test_cached_file_that_is_not_a_zip_is_dropped_and_fetched_again(server, tmp_path):
    """What an earlier version could publish (an HTML page) is replaced, even without a known sha256."""
    url = server.add("/a.zip", DATA)
    (tmp_path / "a.zip").write_bytes(b"<html>portal</html>")
    assert dl.download(url, tmp_path / "a.zip", **FAST).read_bytes() == DATA
    assert len(server.state.requests) == 1
    assert dl.download(url, tmp_path / "a.zip", **FAST).read_bytes() == DATA
    assert len(server.state.requests) == 1  # a readable cached zip is reused


# ---- an unreachable host fails fast, with one message --------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "dns"])
def test_unreachable_host_is_permanent_after_two_quick_tries(tmp_path, kind, caplog):
    from tasks.runtime import PERMANENT_ERRORS

    url = (f"http://127.0.0.1:{_closed_port()}/Rectified.zip" if kind == "refused"
           else "http://nonexistent.invalid/Rectified.zip")
    with caplog.at_level(logging.WARNING, logger=dl.__name__), pytest.raises(dl.HostUnreachableError) as info:
        # retries=5 and a 2 s backoff would take a minute if these errors were treated as transient.
        dl.download(url, tmp_path / "Rectified.zip", retries=5, backoff_s=2.0, timeout_s=5.0, progress=False)
    # Counted from the retry log, not timed: how long a name takes to fail depends on the machine's resolver.
    waits = [r.getMessage() for r in caplog.records if r.name == dl.__name__ and "retrying in" in r.getMessage()]
    assert len(waits) == dl.UNREACHABLE_TRIES - 1, waits
    assert all(w.endswith(f"retrying in {dl.UNREACHABLE_BACKOFF_S:.1f} s") for w in waits), waits
    message = str(info.value)
    assert ("refused the connection" in message) if kind == "refused" else ("'nonexistent.invalid' does not resolve" in message)
    assert f"({dl.UNREACHABLE_TRIES} tries)" in message
    assert "bytes are kept" not in message and not (tmp_path / "Rectified.zip.part").exists()
    assert info.value.__cause__ is None  # the message is the whole story: no chained traceback
    assert isinstance(info.value, PERMANENT_ERRORS)  # the pipeline does not retry the task


def test_unreachable_host_keeps_a_partial_file_and_says_so(server, tmp_path):
    url = server.add("/a.zip", DATA)
    server.state.cut_after = [50_000]
    server.state.fail_with = [0, 503, 503]
    with pytest.raises(dl.DownloadError):
        dl.download(url, tmp_path / "a.zip", retries=1, **FAST)
    dead = f"http://127.0.0.1:{_closed_port()}/a.zip"
    with pytest.raises(dl.HostUnreachableError, match=r"50000 bytes are kept in .*a\.zip\.part"):
        dl.download(dead, tmp_path / "a.zip", **FAST)
