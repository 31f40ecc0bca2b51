"""`viewneti data prepare`: classification, safe selective extraction, validation, manifest, skipping."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import stat
import zipfile
import zlib
from collections import namedtuple
from pathlib import Path

import pandas as pd
import pytest
from fixtures.http_server import RangeServer
from PIL import Image

from viewneti_core.data import dtu
from viewneti_core.data.archives import (
    ArchiveLimitError,
    CorruptArchiveError,
    DestinationError,
    ExtractionLimits,
    InsufficientSpaceError,
    UnsafeArchiveError,
    extract_members,
)
from viewneti_core.data.download import DownloadError
from viewneti_core.data.prepare import (
    MANIFEST_COLUMNS,
    STAMP_NAME,
    MissingCalibrationError,
    MissingScanError,
    PrepareError,
    TreeValidationError,
    add_prepare_arguments,
    parse_scans,
    prepare_dtu,
    run_prepare,
)

ARCHIVE_SCANS = (1, 4, 8, 21, 114)  # excluded, pretrain, test, test, test
MASKED_SCANS = {8: "nested", 21: "nested", 114: "flat"}
LIGHTS = (2, 3)
SIZE = (8, 6)  # 4:3 like DTU, tiny for speed


def _png(seed: int, size: tuple[int, int] = SIZE, mode: str = "RGB") -> bytes:
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    im = Image.new(mode, size, colour if mode == "RGB" else colour[0])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _image_bytes(scan: int, cam: int, light: int) -> bytes:
    return _png(scan * 1000 + cam * 10 + light)


def _camera_text(cam: int) -> str:
    return dtu.format_projection_matrix([[cam + 1.0, 0, 0, 1], [0, 2, 0, 2], [0, 0, 1, cam * 0.5]])


def _mask_bytes(scan: int, cam: int) -> bytes:
    return _png(scan + cam, mode="L")


def write_rectified(path: Path, scans=ARCHIVE_SCANS, skip: tuple[int, int] | None = None,
                    extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("Rectified/", b"")
        for scan in scans:
            for cam in range(dtu.NUM_VIEWS):
                zf.writestr(f"Rectified/scan{scan}/rect_{cam + 1:03d}_max.png", _png(7))
                for light in LIGHTS:
                    if skip == (scan, cam):
                        continue
                    zf.writestr(dtu.image_relpath(scan, cam, light), _image_bytes(scan, cam, light))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def write_sampleset(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("SampleSet/readme.txt", b"unrelated")
        zf.writestr("SampleSet/MVS Data/Points/stl/stl001_total.ply", b"ply")
        for cam in range(dtu.NUM_CAMERAS):
            zf.writestr(f"{dtu.SAMPLESET_CALIBRATION_DIR}/pos_{cam + 1:03d}.txt", _camera_text(cam))
    return path


def write_masks(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for scan, layout in MASKED_SCANS.items():
            for cam in range(dtu.NUM_VIEWS):
                sub = "mask/" if layout == "nested" else ""
                zf.writestr(f"submission_data/idrmasks/scan{scan}/{sub}{cam:03d}.png", _mask_bytes(scan, cam))
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archives")
    return {
        "rectified": write_rectified(root / "Rectified.zip"),
        "sampleset": write_sampleset(root / "SampleSet.zip"),
        "masks": write_masks(root / "idrmasks.zip"),
    }


def _sources(archives: dict[str, Path]) -> list[str]:
    return [str(archives["rectified"]), str(archives["sampleset"]), str(archives["masks"])]


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _data_files(root: Path) -> set[str]:
    return {f for f in _files(root) if f.split("/")[0] in ("Rectified", "Calibration", "masks")}


def test_prepare_extracts_only_requested_scans_and_writes_manifest(archives, tmp_path):
    out = tmp_path / "dtu"
    result = prepare_dtu(_sources(archives), [114, 4, 8], out, progress=False)
    assert not result.skipped and result.scans == (4, 8, 114) and result.n_images == 3 * 49
    assert result.scans_with_masks == (8, 114)

    expected = {dtu.image_relpath(s, c, 3) for s in (4, 8, 114) for c in range(49)}
    expected |= {dtu.camera_relpath(c) for c in range(64)}
    expected |= {dtu.mask_relpath(s, c) for s in (8, 114) for c in range(49)}
    assert _data_files(out) == expected  # no other scan, no other light, no *_max.png
    assert (out / dtu.image_relpath(8, 5, 3)).read_bytes() == _image_bytes(8, 5, 3)
    assert (out / dtu.mask_relpath(114, 48)).read_bytes() == _mask_bytes(114, 48)  # flat layout
    assert (out / dtu.mask_relpath(8, 0)).read_bytes() == _mask_bytes(8, 0)  # nested layout
    assert dtu.load_cameras(out)[10, 0, 0] == 11.0
    assert not [p for p in out.rglob("*.tmp")]

    m = pd.read_parquet(result.manifest)
    assert tuple(m.columns) == MANIFEST_COLUMNS and len(m) == 147
    assert m.groupby("scan")["view_role"].value_counts().unstack().loc[8].to_dict() == {
        "excluded": 15, "test": 25, "train": 9}
    row = m[(m.scan == 8) & (m.cam == 13)].iloc[0]
    assert (row.view_role, row.train_rank, row.scan_role, row.light) == ("train", 8, "test", 3)
    assert row.path == dtu.image_relpath(8, 13, 3) and row.mask_path == dtu.mask_relpath(8, 13)
    assert (row.width, row.height) == SIZE and bool(row.has_mask)
    assert set(m[m.scan == 4].scan_role) == {"pretrain"} and not m[m.scan == 4].has_mask.any()
    assert m[m.scan == 4].mask_path.isna().all()
    assert m[m.cam == 25].train_rank.eq(0).all() and m[m.cam == 1].train_rank.eq(-1).all()


def test_second_run_is_skipped_and_a_damaged_tree_is_repaired(archives, tmp_path, caplog):
    out = tmp_path / "dtu"
    prepare_dtu(_sources(archives), [8], out, progress=False)
    image = out / dtu.image_relpath(8, 0, 3)
    before = image.stat().st_mtime_ns

    caplog.set_level(logging.INFO, logger="viewneti_core.data.prepare")
    again = prepare_dtu(_sources(archives), [8], out, progress=False)
    assert again.skipped and "nothing to do" in again.message
    assert "nothing to do" in caplog.text
    assert image.stat().st_mtime_ns == before

    image.unlink()
    repaired = prepare_dtu(_sources(archives), [8], out, progress=False)
    assert not repaired.skipped and image.read_bytes() == _image_bytes(8, 0, 3)

    other_light = prepare_dtu(_sources(archives), [8], out, light=2, progress=False)
    assert not other_light.skipped
    assert set(pd.read_parquet(other_light.manifest).light) == {2}


def test_missing_scan_lists_what_the_archive_has(archives, tmp_path):
    out = tmp_path / "dtu"
    with pytest.raises(MissingScanError) as err:
        prepare_dtu(_sources(archives), [8, 999], out, progress=False)
    msg = str(err.value)
    assert "[999]" in msg and "1, 4, 8, 21, 114" in msg and str(archives["rectified"]) in msg
    assert _data_files(out) == set() and not (out / "prepare_stamp.json").exists()

    # a failed request does not invalidate a tree that was complete before it
    prepare_dtu(_sources(archives), [8], out, progress=False)
    with pytest.raises(MissingScanError):
        prepare_dtu(_sources(archives), [8, 999], out, progress=False)
    assert prepare_dtu(_sources(archives), [8], out, progress=False).skipped


def test_incomplete_scan_names_missing_views(tmp_path, archives):
    broken = write_rectified(tmp_path / "Rectified.zip", scans=(8,), skip=(8, 30))
    with pytest.raises(MissingScanError, match=r"1 of 49 views missing \(0-based cams 30\)"):
        prepare_dtu([str(broken), str(archives["sampleset"])], [8], tmp_path / "dtu", progress=False)


def test_missing_calibration_names_the_expected_source(archives, tmp_path):
    with pytest.raises(MissingCalibrationError, match="SampleSet.zip") as err:
        prepare_dtu([str(archives["rectified"])], [8], tmp_path / "dtu", progress=False)
    assert dtu.SAMPLESET_URL in str(err.value)


def test_source_without_dtu_content_is_rejected(archives, tmp_path):
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("hello.txt", b"hi")
    with pytest.raises(PrepareError, match="holds no DTU content"):
        prepare_dtu([str(junk), *_sources(archives)], [8], tmp_path / "dtu", progress=False)


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member", [
    "../Rectified/scan8/rect_001_3_r5000.png",
    "Rectified/../../escape.png",
    "/tmp/Rectified/scan8/rect_001_3_r5000.png",
    "C:/Rectified/scan8/rect_001_3_r5000.png",
    "Rectified\\scan8\\rect_001_3_r5000.png",
    "symlink",
])
def test_unsafe_archive_is_refused_before_writing(tmp_path, archives, member):
    bad = tmp_path / "src" / "Rectified.zip"
    bad.parent.mkdir()
    write_rectified(bad, scans=(8,))
    with zipfile.ZipFile(bad, "a") as zf:
        if member == "symlink":
            zf.writestr(_symlink_info("Rectified/scan8/rect_002_3_r5000.png.lnk"), "/etc/passwd")
        else:
            zf.writestr(zipfile.ZipInfo(member), b"evil")
    out = tmp_path / "work" / "dtu"
    with pytest.raises(UnsafeArchiveError, match="unsafe") as err:
        prepare_dtu([str(bad), str(archives["sampleset"])], [8], out, progress=False)
    assert (repr(member) if member != "symlink" else ".lnk") in str(err.value)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"src/Rectified.zip", "work/dtu/.prepare.lock"}

    # the low-level API refuses too, even when only safe members are requested
    with pytest.raises(UnsafeArchiveError):
        extract_members(bad, {dtu.image_relpath(8, 0, 3): "x.png"}, tmp_path / "low")
    assert not (tmp_path / "low").exists()


def test_disk_space_check_fires_before_extraction(archives, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10_000))
    out = tmp_path / "dtu"
    with pytest.raises(InsufficientSpaceError, match="not enough disk space"):
        prepare_dtu(_sources(archives), [8], out, progress=False)
    assert _data_files(out) == set()


def test_prepare_over_http_with_checksum_and_skip(archives, tmp_path):
    with RangeServer() as srv:
        urls = [srv.add(f"/MVS/{p.name}", p) for p in archives.values()]
        digest = hashlib.sha256(archives["sampleset"].read_bytes()).hexdigest()
        # With a sha256 given, an archive is downloaded whole (to check it), not read over HTTP Range.
        sums = {"SampleSet.zip": digest, "Rectified.zip": hashlib.sha256(archives["rectified"].read_bytes()).hexdigest()}
        srv.state.cut_after = [5000]  # the first transfer is cut and must resume
        out = tmp_path / "dtu"
        result = prepare_dtu(urls, [8, 21], out, sha256=sums, backoff_s=0.01, timeout_s=5, progress=False)
        assert not result.skipped and result.scans_with_masks == (8, 21)
        assert (out / ".downloads" / "Rectified.zip").is_file()
        assert srv.state.requests[1].range == "bytes=5000-"
        n_requests = len(srv.state.requests)

        again = prepare_dtu(urls, [8, 21], out, sha256=sums, progress=False)
        assert again.skipped and len(srv.state.requests) == n_requests  # no network at all

        with pytest.raises(PrepareError, match="matches no source"):
            prepare_dtu(urls, [8], out, sha256={"Other.zip": digest}, progress=False)


def test_directory_source_gives_the_same_tree(archives, tmp_path):
    extracted = tmp_path / "extracted"
    for path in archives.values():
        with zipfile.ZipFile(path) as zf:
            zf.extractall(extracted)  # trusted test data
    from_zips = prepare_dtu(_sources(archives), [8, 114], tmp_path / "a", progress=False).out_dir
    from_dir = prepare_dtu([str(extracted)], [8, 114], tmp_path / "b", progress=False).out_dir
    assert _data_files(from_zips) == _data_files(from_dir)
    for rel in _data_files(from_zips):
        assert (from_zips / rel).read_bytes() == (from_dir / rel).read_bytes()


def test_cli_glue(archives, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    argv = [a for s in _sources(archives) for a in ("--source", s)]
    args = parser.parse_args([*argv, "--scans", "8,114", "--out", str(tmp_path / "dtu"), "--no-progress"])
    assert args.light == 3 and args.scans == [8, 114]
    assert run_prepare(args) == 0
    assert "prepared 2 scan(s)" in capsys.readouterr().out

    bad = parser.parse_args([*argv, "--scans", "2", "--out", str(tmp_path / "dtu2"), "--no-progress"])
    assert run_prepare(bad) == 1
    assert "scan(s) [2] not found" in capsys.readouterr().err


def test_parse_scans():
    assert parse_scans("8, 21,1-3") == [1, 2, 3, 8, 21]
    assert parse_scans("test") == list(dtu.TEST_SCANS)
    assert len(parse_scans("pretrain,test")) == 103
    with pytest.raises(ValueError):
        parse_scans("scan8")


def test_synthetic_archives_prepare_to_the_synthetic_tree(request, tmp_path):
    """Archives from the synthetic generator, served over HTTP, prepare to what make-synthetic wrote."""
    try:
        root = Path(request.getfixturevalue("synthetic_dtu_root"))
        archive_info = request.getfixturevalue("synthetic_archives")
    except pytest.FixtureLookupError:
        pytest.skip("synthetic_dtu_root / synthetic_archives fixtures are not available yet")
    paths = _archive_paths(archive_info)
    scans = sorted({int(p.name[4:]) for p in (root / "Rectified").glob("scan*")})
    with RangeServer() as srv:
        urls = [srv.add(f"/{i}/{p.name}", p) for i, p in enumerate(paths)]
        out = prepare_dtu(urls, scans, tmp_path / "dtu", progress=False, timeout_s=5).out_dir
        # The same inputs again: nothing to do, also with a scan that has no masks (scan 2).
        again = prepare_dtu(urls, scans, tmp_path / "dtu", progress=False, timeout_s=5)
        assert again.skipped
    expected = {dtu.image_relpath(s, c, 3) for s in scans for c in range(dtu.NUM_VIEWS)}
    expected |= {dtu.camera_relpath(c) for c in range(dtu.NUM_CAMERAS)}
    expected |= {dtu.mask_relpath(s, c) for s in scans for c in range(dtu.NUM_VIEWS)
                 if dtu.find_mask(root, s, c) is not None}
    assert _data_files(out) == expected
    for rel in expected:
        source = root / rel
        if rel.startswith("masks/"):
            scan, cam = int(rel.split("/")[1][4:]), int(Path(rel).stem)
            source = dtu.find_mask(root, scan, cam)
        assert (out / rel).read_bytes() == source.read_bytes(), rel


def _archive_paths(info) -> list[Path]:
    """Accept a dict, a list, a dataclass-like object with path attributes, or a directory."""
    if isinstance(info, dict):
        values = list(info.values())
    elif isinstance(info, (list, tuple)):
        values = list(info)
    elif isinstance(info, (str, Path)) and Path(info).is_dir():
        values = sorted(Path(info).glob("*.zip"))
    else:
        values = [v for v in vars(info).values() if isinstance(v, (str, Path))]
    return [Path(v) for v in values if str(v).endswith(".zip")]


# ---- hardening (issue 14, items 1-5 and 13) ----------------------------------------------------


def _member_data_offset(path: Path, name: str) -> tuple[int, zipfile.ZipInfo]:
    """Byte offset of a member's (compressed) data, read from its local header."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _no_data_written(out: Path) -> bool:
    return _data_files(out) == set() and not [p for p in out.rglob("*.tmp")]


def test_prepare_over_http_recovers_from_an_html_page(archives, tmp_path):
    """An HTML page served with 200 is not cached as Rectified.zip; a later run against a healthy
    server succeeds."""
    with RangeServer() as srv:
        urls = [srv.add(f"/MVS/{p.name}", p) for p in archives.values()]
        srv.add("/MVS/Rectified.zip", b"<!doctype html><html><title>Maintenance</title></html>")
        out = tmp_path / "dtu"
        with pytest.raises(DownloadError, match="HTML page"):
            prepare_dtu(urls, [8], out, backoff_s=0.01, timeout_s=5, progress=False)
        assert not (out / ".downloads" / "Rectified.zip").exists()
        srv.add("/MVS/Rectified.zip", archives["rectified"])
        result = prepare_dtu(urls, [8], out, backoff_s=0.01, timeout_s=5, progress=False)
    assert result.n_images == 49


def test_zip_bomb_ratio_is_refused_before_writing(tmp_path, archives):
    member = dtu.image_relpath(8, 0, 3)
    bomb = tmp_path / "Rectified.zip"
    write_rectified(bomb, scans=(8,))
    with zipfile.ZipFile(bomb) as zf:
        entries = [(i, zf.read(i)) for i in zf.infolist() if i.filename != member]
    with zipfile.ZipFile(bomb, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
        zf.writestr(member, b"\0" * (2 << 20), compress_type=zipfile.ZIP_DEFLATED)  # ~2 KiB -> 2 MiB
    out = tmp_path / "dtu"
    with pytest.raises(ArchiveLimitError, match=r"ratio \d+, limit 100") as err:
        prepare_dtu([str(bomb), str(archives["sampleset"])], [8], out, progress=False)
    assert repr(member) in str(err.value)
    assert _no_data_written(out)


def test_member_size_limit_is_configurable_and_checked_first(tmp_path, archives):
    out = tmp_path / "dtu"
    with pytest.raises(ArchiveLimitError, match="over the limit"):
        prepare_dtu(_sources(archives), [8], out, progress=False,
                    limits=ExtractionLimits(max_member_bytes=len(_image_bytes(8, 0, 3)) - 1))
    assert _no_data_written(out)


def test_member_inflating_beyond_its_declared_size_is_stopped(tmp_path):
    """zipfile alone would stop silently at the declared size (and a crafted CRC would match)."""
    payload = bytes(range(256)) * 800  # 200 KiB, ratio ~1: only the declared size is wrong
    declared = 50_000
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.bin", payload)
    # One member: its local header is at 0, its central directory entry is the last one.
    central = archive.read_bytes().rindex(b"PK\x01\x02")
    for field_at, value in ((14, zlib.crc32(payload[:declared])), (22, declared)):  # CRC-32, size
        _patch(archive, field_at, value.to_bytes(4, "little"))
        _patch(archive, central + field_at + 2, value.to_bytes(4, "little"))

    out = tmp_path / "out"
    with pytest.raises(ArchiveLimitError, match=f"'big.bin' of .*a.zip yields more than its declared {declared}"):
        extract_members(archive, {"big.bin": "x/big.bin"}, out)
    assert not (out / "x" / "big.bin").exists() and list((out / "x").iterdir()) == []  # temp file removed


def test_member_with_bad_crc_names_member_and_path(tmp_path, archives):
    member = dtu.image_relpath(8, 3, 3)
    broken = write_rectified(tmp_path / "Rectified.zip", scans=(8,))
    offset, _ = _member_data_offset(broken, member)  # stored: flip a data byte, the CRC no longer holds
    _patch(broken, offset + 20, bytes([broken.read_bytes()[offset + 20] ^ 0xFF]))
    out = tmp_path / "dtu"
    with pytest.raises(CorruptArchiveError, match="CRC-32") as err:
        prepare_dtu([str(broken), str(archives["sampleset"])], [8], out, progress=False)
    assert repr(member) in str(err.value) and str(out / member) in str(err.value)
    assert not (out / member).exists() and not [p for p in out.rglob("*.tmp")]
    assert not (out / "prepare_stamp.json").exists()


def test_directory_in_place_of_a_file_is_a_clear_error(tmp_path, archives):
    out = tmp_path / "dtu"
    blocked = out / dtu.image_relpath(8, 0, 3)
    blocked.mkdir(parents=True)
    with pytest.raises(DestinationError, match="is a directory where a file is expected") as err:
        prepare_dtu(_sources(archives), [8], out, progress=False)
    assert str(blocked) in str(err.value)
    assert _data_files(out) == set()  # checked before anything was written

    # a directory entry mapped as a file is refused too, naming the member
    archive = tmp_path / "dirs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Rectified/scan8/rect_001_3_r5000.png/", b"")
    with pytest.raises(CorruptArchiveError, match="'Rectified/scan8/rect_001_3_r5000.png/' .* is a directory"):
        extract_members(archive, {"Rectified/scan8/rect_001_3_r5000.png/": "x.png"}, tmp_path / "low")


def test_symlinks_inside_the_output_tree_are_not_written_through(tmp_path, archives):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "dtu"
    out.mkdir()
    (out / "Rectified").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DestinationError, match="symbolic link"):
        prepare_dtu(_sources(archives), [8], out, progress=False)
    assert list(outside.iterdir()) == []

    (out / "Rectified").unlink()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    camera = out / dtu.camera_relpath(0)
    camera.parent.mkdir(parents=True)
    camera.symlink_to(victim)
    with pytest.raises(DestinationError, match="symbolic link"):
        prepare_dtu(_sources(archives), [8], out, progress=False)
    assert victim.read_text() == "keep me" and camera.is_symlink()


def test_symlinks_inside_a_directory_source_are_not_copied_from(tmp_path, archives):
    extracted = tmp_path / "extracted"
    for path in archives.values():
        with zipfile.ZipFile(path) as zf:
            zf.extractall(extracted)  # trusted test data
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png(999))  # decodes fine: only the symlink check can stop it
    image = extracted / dtu.image_relpath(8, 4, 3)
    image.unlink()
    image.symlink_to(secret)
    out = tmp_path / "dtu"
    with pytest.raises(UnsafeArchiveError, match="symbolic link") as err:
        prepare_dtu([str(extracted)], [8], out, progress=False)
    assert str(image) in str(err.value)
    assert _data_files(out) == set()


def _broken_png(kind: str) -> bytes:
    data = _png(5, size=(40, 30))
    if kind == "truncated":
        return data[: len(data) // 2]
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    crc_at = idat + 4 + length  # PIL decodes past a bad IDAT CRC; only a verify finds it
    return data[:crc_at] + bytes([data[crc_at] ^ 0x01]) + data[crc_at + 1:]


@pytest.mark.parametrize("kind", ["truncated", "bad-idat-crc"])
def test_validation_catches_undecodable_images(tmp_path, archives, kind):
    member = dtu.image_relpath(8, 7, 3)
    broken = write_rectified(tmp_path / "Rectified.zip", scans=(8,), skip=(8, 7),
                             extra={member: _broken_png(kind)})
    out = tmp_path / "dtu"
    with pytest.raises(TreeValidationError, match="does not decode") as err:
        prepare_dtu([str(broken), str(archives["sampleset"])], [8], out, progress=False)
    assert str(out / member) in str(err.value)
    assert not (out / "prepare_stamp.json").exists()


def test_cli_accepts_several_sources_after_one_flag(archives, tmp_path, capsys):
    from viewneti_cli.viewneti import main

    out = tmp_path / "dtu"
    assert main(["data", "prepare", "--source", *_sources(archives), "--scans", "8", "--out", str(out),
                 "--no-progress"]) == 0
    assert "prepared 1 scan(s), 49 images" in capsys.readouterr().out
    stamp = json.loads((out / "prepare_stamp.json").read_text())
    assert [s["source"] for s in stamp["sources"]] == _sources(archives)
    # mixed with the repeated form
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    a, b, c = _sources(archives)
    args = parser.parse_args(["--source", a, b, "--source", c, "--scans", "8", "--out", str(out)])
    assert args.source == [a, b, c]


# ---- partial mode: only the needed members over HTTP Range (issue 13, item 6) ----------------------------

MULTI_SCANS = (1, 4, 8, 21, 30, 114)


def _noise_png(seed: int) -> bytes:
    """A 64x48 noise image: incompressible, so members, not zip headers, make up the archive."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def multi_scan_rectified(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("multi") / "Rectified.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for scan in MULTI_SCANS:
            for cam in range(dtu.NUM_VIEWS):
                for light in LIGHTS:
                    zf.writestr(dtu.image_relpath(scan, cam, light), _noise_png(scan * 1000 + cam * 10 + light))
    return path


def _range_cost_bound(path: Path, needed: set[str]) -> int:
    """Independent bound on what partial mode may transfer: the needed members (local header, name,
    extra field, data), the central directory and end record, a 64 KiB read at the end, the probe byte."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        directory = path.stat().st_size - zf.start_dir
    members = sum(30 + len(i.filename.encode()) + len(i.extra) + 16 + i.compress_size
                  for i in infos if i.filename in needed)
    return members + directory + 64 * 1024 + 1


def _stamp_sources(out: Path) -> dict[str, dict]:
    stamp = json.loads((out / STAMP_NAME).read_text())
    return {Path(s["source"]).name: s for s in stamp["sources"]}


def test_partial_mode_transfers_only_the_needed_members(multi_scan_rectified, archives, tmp_path):
    scans = [8, 21]
    needed = {dtu.image_relpath(s, c, 3) for s in scans for c in range(dtu.NUM_VIEWS)}
    size = multi_scan_rectified.stat().st_size
    with RangeServer() as srv:
        url = srv.add("/MVS/Rectified.zip", multi_scan_rectified)
        sources = [url, str(archives["sampleset"])]
        result = prepare_dtu(sources, scans, tmp_path / "dtu", timeout_s=5, progress=False)
        sent = sum(r.bytes_sent for r in srv.state.requests if r.path == "/MVS/Rectified.zip")
        assert all(r.status == 206 for r in srv.state.requests)
    print(f"partial mode: {sent} of {size} bytes ({sent / size:.1%}) for {len(scans)} of {len(MULTI_SCANS)} scans")
    with zipfile.ZipFile(multi_scan_rectified) as zf:
        needed_data = sum(zf.getinfo(n).compress_size for n in needed)
    assert needed_data < sent <= _range_cost_bound(multi_scan_rectified, needed)
    assert sent < 0.25 * size  # 2 of 6 scans at 1 of 2 lights: about 1/6 of the archive, plus headers
    # the same tree as from the local archive, byte for byte
    local = prepare_dtu([str(multi_scan_rectified), str(archives["sampleset"])], scans, tmp_path / "local",
                        progress=False)
    assert _data_files(result.out_dir) == _data_files(local.out_dir)
    for rel in _data_files(local.out_dir):
        assert (result.out_dir / rel).read_bytes() == (local.out_dir / rel).read_bytes(), rel
    assert not (tmp_path / "dtu" / ".downloads" / "Rectified.zip").exists()  # nothing but the members on disk
    record = _stamp_sources(tmp_path / "dtu")["Rectified.zip"]
    assert record["mode"] == "partial" and record["bytes_transferred"] == sent and record["sha256"] is None
    assert record["verified"][0] == f"CRC-32 of each of the {len(needed)} extracted member(s)"
    assert "sha256 is NOT checked in partial mode" in record["verified"][1]
    assert _stamp_sources(tmp_path / "dtu")["SampleSet.zip"]["mode"] == "local"


def test_partial_mode_falls_back_to_the_whole_download_without_range(multi_scan_rectified, archives, tmp_path):
    with RangeServer() as srv:
        url = srv.add("/MVS/Rectified.zip", multi_scan_rectified)
        srv.state.ignore_range = True
        result = prepare_dtu([url, str(archives["sampleset"])], [8], tmp_path / "dtu", backoff_s=0.01,
                             timeout_s=5, progress=False)
        statuses = [r.status for r in srv.state.requests]
    assert result.n_images == dtu.NUM_VIEWS
    assert statuses == [200, 200]  # the probe (closed unread), then the download
    cached = tmp_path / "dtu" / ".downloads" / "Rectified.zip"
    assert cached.read_bytes() == multi_scan_rectified.read_bytes()
    record = _stamp_sources(tmp_path / "dtu")["Rectified.zip"]
    assert record["mode"] == "full" and record["path"] == str(cached)
    assert "answered a Range request with HTTP 200" in record["why_full"]
    assert record["sha256"] == hashlib.sha256(multi_scan_rectified.read_bytes()).hexdigest()
    assert record["verified"] == [f"CRC-32 of each of the {dtu.NUM_VIEWS} extracted member(s)"]  # no sha256 given


def test_partial_mode_checks_each_member_crc(multi_scan_rectified, archives, tmp_path):
    bad = tmp_path / "Rectified.zip"
    shutil.copy(multi_scan_rectified, bad)
    member = dtu.image_relpath(8, 5, 3)
    offset, info = _member_data_offset(bad, member)
    with open(bad, "rb") as fh:  # flip one byte inside the member's deflate stream
        fh.seek(offset + info.compress_size // 2)
        byte = fh.read(1)
    _patch(bad, offset + info.compress_size // 2, bytes([byte[0] ^ 0xFF]))
    with RangeServer() as srv:
        url = srv.add("/MVS/Rectified.zip", bad)
        with pytest.raises(CorruptArchiveError, match=r"read over HTTP Range") as err:
            prepare_dtu([url, str(archives["sampleset"])], [8], tmp_path / "dtu", timeout_s=5, progress=False)
    assert repr(member) in str(err.value)
    assert not (tmp_path / "dtu" / dtu.image_relpath(8, 5, 3)).exists()
    assert not (tmp_path / "dtu" / STAMP_NAME).exists()
