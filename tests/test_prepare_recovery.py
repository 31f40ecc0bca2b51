"""`viewneti data prepare` against misbehaving servers, hostile member names and an earlier killed run
(issue 21, item 6): real HTTP servers on 127.0.0.1, real zips, real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from fixtures.http_server import RangeServer

from viewneti_core.data import dtu
from viewneti_core.data.prepare import STAMP_NAME, prepare_dtu

REPO = Path(__file__).resolve().parents[1]
SCAN = 21
FAST = {"backoff_s": 0.01, "timeout_s": 5, "progress": False}


def _data_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] in ("Rectified", "Calibration", "masks")}


@pytest.fixture(scope="module")
def local_tree(synthetic_archives, tmp_path_factory) -> dict[str, bytes]:
    """What prepare makes of the archives read from disk: the reference for every recovery below."""
    out = tmp_path_factory.mktemp("local") / "dtu"
    prepare_dtu([str(synthetic_archives["Rectified"]), str(synthetic_archives["SampleSet"])], [SCAN], out,
                progress=False)
    return _data_files(out)


def _rectified_record(out: Path) -> dict:
    stamp = json.loads((out / STAMP_NAME).read_text())
    return next(s for s in stamp["sources"] if s["source"].endswith("Rectified.zip"))


@pytest.mark.parametrize("served_first", [0, 4], ids=["at-the-probe", "midway"])
def test_range_answered_to_the_end_falls_back_to_a_whole_verified_download(synthetic_archives, local_tree, tmp_path,
                                                                           served_first):
    """The server answers a closed `bytes=A-B` with A..end: the reader closes that answer unread (it could
    be the rest of a 100+ GB archive) and downloads the archive whole, verified, then reads it."""
    out = tmp_path / "dtu"
    with RangeServer() as srv:
        url = srv.add("/Rectified.zip", synthetic_archives["Rectified"])
        srv.state.range_to_end_after = served_first
        result = prepare_dtu([url, str(synthetic_archives["SampleSet"])], [SCAN], out, **FAST)
        requests = list(srv.state.requests)
    assert result.n_images == dtu.NUM_VIEWS
    assert _data_files(out) == local_tree
    record = _rectified_record(out)
    assert record["mode"] == "full" and record["sha256"] is not None
    why = record["why_full"]
    assert "asked for bytes" in why and "the server answered 'bytes" in why, why
    assert ("partial reading failed midway" in why) == (served_first > 0)
    assert requests[-1].range is None and requests[-1].status == 200  # the whole download, last
    cached = out / ".downloads" / "Rectified.zip"
    assert cached.read_bytes() == synthetic_archives["Rectified"].read_bytes()


def test_416_after_a_dropped_connection_falls_back_to_a_whole_download(synthetic_archives, local_tree, tmp_path):
    out = tmp_path / "dtu"
    with RangeServer() as srv:
        url = srv.add("/Rectified.zip", synthetic_archives["Rectified"])
        srv.state.cut_after = [None, None, None, None, 40]  # the 5th answer (a member) drops after 40 bytes
        srv.state.range_416_after_cut = True  # and from then on every Range request gets 416
        prepare_dtu([url, str(synthetic_archives["SampleSet"])], [SCAN], out, **FAST)
        statuses = [(r.range is not None, r.status) for r in srv.state.requests]
    assert (True, 416) in statuses and statuses[-1] == (False, 200)
    assert _data_files(out) == local_tree
    why = _rectified_record(out)["why_full"]
    assert "partial reading failed midway" in why and "HTTP 416" in why, why


def test_range_ignored_midway_falls_back_to_a_whole_download(synthetic_archives, local_tree, tmp_path):
    """The same file (same ETag) sent whole to a Range request midway is a server that stopped honouring
    Range, not a changed file: closed unread, then a whole download."""
    out = tmp_path / "dtu"
    with RangeServer() as srv:
        url = srv.add("/Rectified.zip", synthetic_archives["Rectified"])
        srv.state.ignore_range_after = 4
        prepare_dtu([url, str(synthetic_archives["SampleSet"])], [SCAN], out, **FAST)
    assert _data_files(out) == local_tree
    why = _rectified_record(out)["why_full"]
    assert "partial reading failed midway" in why and "with the whole file (HTTP 200)" in why, why


def test_a_resume_answered_from_another_offset_starts_the_download_over(synthetic_archives, tmp_path):
    """A whole download resumed after a dropped connection: the server answers `bytes=N-` from another
    offset. The partial file is discarded and the file downloaded again, then verified."""
    from viewneti_core.data.download import download, sha256_file

    data = synthetic_archives["Rectified"]
    with RangeServer() as srv:
        url = srv.add("/Rectified.zip", data)
        srv.state.cut_after = [20_000]
        srv.state.range_start_shift = 1000
        dest = download(url, tmp_path / "Rectified.zip", sha256=sha256_file(data), **FAST)
        statuses = [(r.range, r.status) for r in srv.state.requests]
    assert dest.read_bytes() == data.read_bytes()
    assert statuses == [(None, 200), ("bytes=20000-", 206), (None, 200)]


def test_a_member_name_with_5000_digits_is_named_in_one_line(synthetic_archives, tmp_path):
    hostile = tmp_path / "Rectified.zip"
    name = f"Rectified/scan{'1' * 5000}/rect_001_3_r5000.png"
    with zipfile.ZipFile(synthetic_archives["Rectified"]) as src, zipfile.ZipFile(hostile, "w") as zf:
        for info in src.infolist():
            zf.writestr(info, src.read(info))
        zf.writestr(name, b"not read")
    out = tmp_path / "dtu"
    done = subprocess.run([sys.executable, "-m", "viewneti_cli.viewneti", "data", "prepare", "--source", str(hostile),
                           str(synthetic_archives["SampleSet"]), "--scans", str(SCAN), "--out", str(out),
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert f"archive member 'Rectified/scan{'1' * 46}" in done.stderr  # the member, shortened
    assert "has a 5000-digit scan number" in done.stderr
    assert "Exceeds the limit" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr) < 1000, done.stderr
    assert not (out / "Rectified").exists()


def test_a_rerun_clears_the_temp_files_of_a_killed_prepare(synthetic_archives, local_tree, tmp_path):
    """kill -9 while a member is being written leaves `.NAME.PID.tmp`; the next successful run removes it."""
    big = tmp_path / "big" / "Rectified.zip"
    big.parent.mkdir()
    first = dtu.image_relpath(SCAN, 0, 3)
    with zipfile.ZipFile(synthetic_archives["Rectified"]) as src, zipfile.ZipFile(big, "w") as zf:
        with zf.open(zipfile.ZipInfo(first), "w", force_zip64=True) as member:  # stored: no bomb ratio
            for _ in range(160):
                member.write(os.urandom(1 << 20))
        for info in src.infolist():
            if info.filename != first:
                zf.writestr(info, src.read(info))
    out = tmp_path / "dtu"
    process = subprocess.Popen([sys.executable, "-m", "viewneti_cli.viewneti", "data", "prepare", "--source",
                                str(big), str(synthetic_archives["SampleSet"]), "--scans", str(SCAN), "--out",
                                str(out), "--no-progress"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    pattern = re.compile(rf"^\..+\.{process.pid}\.tmp$")
    leftovers: list[Path] = []
    try:
        deadline = time.monotonic() + 120
        while not leftovers and process.poll() is None and time.monotonic() < deadline:
            leftovers = [Path(d) / n for d, _, names in os.walk(out) for n in names if pattern.match(n)]
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert leftovers, "the prepare ended before a member was being written"
    assert all(p.exists() for p in leftovers)  # what the killed run left behind
    result = prepare_dtu([str(synthetic_archives["Rectified"]), str(synthetic_archives["SampleSet"])], [SCAN], out,
                         progress=False)
    assert result.n_images == dtu.NUM_VIEWS and not result.skipped
    assert not any(p.exists() for p in leftovers)
    assert not [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")]
    assert _data_files(out) == local_tree
