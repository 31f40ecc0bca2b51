"""`viewneti data prepare`: turn DTU archives (URLs, local zips or extracted trees) into a validated tree.

Output layout (DESIGN 3.8), whatever the sources looked like:

    DIR/Rectified/scan{N}/rect_{cam+1:03d}_{light}_r5000.png   only the requested scans, chosen light
    DIR/Calibration/cal18/pos_{cam+1:03d}.txt                   all 64 cameras
    DIR/masks/scan{N}/{cam:03d}.png                             requested scans that have masks
    DIR/manifest.parquet                                        one row per (scan, cam, light) image
    DIR/prepare_stamp.json                                      written last: marks the tree complete

Only the chosen light is extracted: the protocol uses one light (3), and all seven would need 7x the
disk for data nothing reads. A URL is read in place over HTTP Range (remote_zip.py): only the central
directory and the needed members travel, each checked against its CRC-32; the whole archive is
downloaded instead when the server ignores Range, when a sha256 is given for it (only then can it be
checked), or when a complete download is already cached. The stamp records per source which mode was
used and what was verified. What a source holds is decided from its member names, never its file
name. Every file is written to a temp name and renamed, the stamp is removed before any change and
written after validation, so a tree with a stamp is complete. A re-run with the same inputs on a valid
tree does nothing; one with new inputs only rewrites files whose content differs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from viewneti_core.data import dtu
from viewneti_core.data.archives import (
    DEFAULT_LIMITS,
    CorruptArchiveError,
    DestinationError,
    ExtractionLimits,
    InsufficientSpaceError,
    NotAnArchiveError,
    UnsafeArchiveError,
    copy_files,
    extract_members,
    member_names,
)
from viewneti_core.data.download import DownloadError, FetchedFile, fetch, is_url, local_path, url_filename
from viewneti_core.data.remote_zip import RangeFile, RangeNotSupportedError, open_remote_zip
from viewneti_core.images import ImageDecodeError, load_image

logger = logging.getLogger(__name__)

PREPARE_FORMAT = 1  # bump when the output layout or validation rules change (invalidates stamps)
MANIFEST_NAME = "manifest.parquet"
STAMP_NAME = "prepare_stamp.json"
LOCK_NAME = ".prepare.lock"
DEFAULT_SOURCES = (dtu.RECTIFIED_URL, dtu.SAMPLESET_URL)
MANIFEST_COLUMNS = (
    "scan", "cam", "light", "path", "view_role", "train_rank", "scan_role",
    "has_mask", "mask_path", "width", "height", "file_size",
)
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")


class PrepareError(RuntimeError):
    """A user-facing preparation failure; the message says what to do."""


class MissingScanError(PrepareError):
    """A requested scan (or some of its views) is not in any source."""


class MissingCalibrationError(PrepareError):
    """The 64 calibration files are not (all) in the sources."""


class TreeValidationError(PrepareError):
    """The extracted tree failed validation (undecodable image, wrong aspect, bad camera file)."""


@dataclass(frozen=True)
class PrepareResult:
    """Small, picklable summary of a prepared tree (safe to pass between Prefect tasks)."""

    out_dir: Path
    manifest: Path
    stamp: Path
    scans: tuple[int, ...]
    light: int
    skipped: bool
    n_images: int
    scans_with_masks: tuple[int, ...]
    message: str


@dataclass
class _Inventory:
    """What one source holds, keyed by DTU identity, as source-relative member names."""

    fetched: FetchedFile
    is_zip: bool
    remote: RangeFile | None = None  # partial mode: members are read over HTTP Range
    note: str = ""  # why a URL was downloaded whole
    images: dict[tuple[int, int, int], str] = field(default_factory=dict)  # (scan, cam, light) -> name
    cameras: dict[int, str] = field(default_factory=dict)  # cam -> name
    masks: dict[tuple[int, int], str] = field(default_factory=dict)  # (scan, cam) -> name

    @property
    def label(self) -> str:
        return self.fetched.source

    def holds(self) -> list[str]:
        kinds = [("images", self.images), ("calibration", self.cameras), ("masks", self.masks)]
        return [kind for kind, items in kinds if items]


# ---- public API --------------------------------------------------------------------------------


def prepare_dtu(
    sources: Sequence[str | Path] | None,
    scans: Sequence[int],
    out_dir: Path,
    light: int = dtu.DEFAULT_LIGHT,
    sha256: dict[str, str] | None = None,
    *,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    progress: bool = True,
    limits: ExtractionLimits = DEFAULT_LIMITS,
) -> PrepareResult:
    """Prepare `out_dir` from `sources` (URLs or paths; default: the official DTU archives).

    `sha256` maps a source (exact string, or its file name) to the expected hex digest; `limits`
    bound what one archive member may inflate to.
    """
    sources = [str(s) for s in sources] if sources else list(DEFAULT_SOURCES)
    scans = _normalise_scans(scans)
    if not 0 <= light < dtu.NUM_LIGHTS:
        raise PrepareError(f"light must be in 0..{dtu.NUM_LIGHTS - 1}, got {light}")
    expected = match_checksums(sources, sha256 or {})
    out_dir = Path(out_dir).absolute()
    cache_dir = Path(cache_dir).absolute() if cache_dir else out_dir / ".downloads"
    out_dir.mkdir(parents=True, exist_ok=True)

    with _exclusive_lock(out_dir / LOCK_NAME):
        _remove_stale_temp_files(out_dir)
        inputs = _input_fingerprint(sources, expected, scans, light)
        previous = _read_stamp(out_dir)
        if previous is not None and previous.get("inputs") == inputs:
            problem = _tree_problem(out_dir, scans, light)
            if problem is None:
                message = f"{out_dir} is already prepared with the same inputs; nothing to do"
                logger.info(message)
                return _result(out_dir, scans, light, previous, skipped=True, message=message)
            logger.info("%s has a stamp for these inputs but %s; preparing again", out_dir, problem)

        # Fetching and planning do not touch the tree, so a bad request leaves a good tree intact.
        inventories = [_inventory(*_open_source(s, cache_dir, expected.get(s), retries, backoff_s,
                                                timeout_s, progress)) for s in sources]
        plan = _plan(inventories, scans, light)

        # From here on the tree is being changed: it is not complete until the new stamp exists.
        (out_dir / STAMP_NAME).unlink(missing_ok=True)
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        for i, (inv, mapping) in enumerate(zip(inventories, plan, strict=True)):
            if not mapping:
                continue
            if inv.is_zip:
                try:
                    _extract(inv, mapping, out_dir, progress, limits)
                except RangeNotSupportedError as exc:  # the server stopped honouring Range midway
                    inventories[i] = inv = _whole_instead(inv, mapping, exc, cache_dir, retries, backoff_s,
                                                          timeout_s, progress)
                    _extract(inv, mapping, out_dir, progress, limits)
            else:
                copy_files(inv.fetched.path, mapping, out_dir, progress=progress)

        mask_keys = {key for inv in inventories for key in inv.masks if key[0] in scans}
        _warn_missing_masks(scans, mask_keys)
        sizes = _validate_tree(out_dir, scans, light, mask_keys)
        manifest = _manifest_frame(out_dir, scans, light, mask_keys, sizes)
        _write_parquet_atomically(manifest, out_dir / MANIFEST_NAME)
        _note_unlisted_scans(out_dir, scans)

        stamp = {
            "format": PREPARE_FORMAT,
            "code_version": code_version(),
            "inputs": inputs,
            "sources": [_source_record(inv, mapping, inv.label in expected)
                        for inv, mapping in zip(inventories, plan, strict=True)],
            "outputs": {"manifest": MANIFEST_NAME, "n_images": len(manifest),
                        "scans_with_masks": sorted({s for s, _ in mask_keys})},
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        _write_text_atomically(out_dir / STAMP_NAME, json.dumps(stamp, indent=2) + "\n")
        message = f"prepared {len(scans)} scan(s), {len(manifest)} images at light {light} in {out_dir}"
        logger.info(message)
        return _result(out_dir, scans, light, stamp, skipped=False, message=message)


def match_checksums(sources: Sequence[str], sha256: dict[str, str]) -> dict[str, str]:
    """Map each source to its expected sha256; a key is a source string or its file name."""
    expected: dict[str, str] = {}
    for key, digest in sha256.items():
        if not _SHA256_RE.match(digest):
            raise PrepareError(f"--sha256 {key}={digest}: expected 64 hexadecimal characters")
        matched = [s for s in sources if key == s or key == _source_name(s)]
        if not matched:
            raise PrepareError(
                f"--sha256 key {key!r} matches no source; use a source exactly as given or its file "
                f"name. Sources: {list(sources)}"
            )
        for source in matched:
            expected[source] = digest.lower()
    return expected


def parse_scans(text: str) -> list[int]:
    """`8,21,114`, ranges `1-5`, or the names `test`, `pretrain`, `all` (combinable with commas)."""
    named = {"test": dtu.TEST_SCANS, "pretrain": dtu.PRETRAIN_SCANS, "all": dtu.ALL_SCANS}
    scans: list[int] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token.lower() in named:
            scans.extend(named[token.lower()])
        elif re.fullmatch(r"\d+-\d+", token):
            lo, hi = (int(v) for v in token.split("-"))
            scans.extend(range(lo, hi + 1))
        elif token.isdigit():
            scans.append(int(token))
        else:
            raise ValueError(f"bad scan {token!r}: use numbers, ranges like 1-5, or test/pretrain/all")
    if not scans:
        raise ValueError("no scans given")
    return sorted(set(scans))


def code_version() -> str:
    """Package version plus the preparation format; part of the stamp's inputs."""
    try:
        version = importlib.metadata.version("viewneti")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    return f"viewneti {version} / prepare format {PREPARE_FORMAT}"


# ---- CLI glue ----------------------------------------------------------------------------------


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `viewneti data prepare`."""
    parser.add_argument("--source", action="extend", nargs="+", default=[], metavar="URL_OR_PATH",
                        help="DTU archive(s) (http(s) URL, zip file, file:// URL) or extracted tree(s); "
                             "list several after one --source, or repeat it. Default: the official "
                             "Rectified.zip and SampleSet.zip. Masks (RegNeRF/IDR release) have no "
                             "official URL: pass them here.")
    parser.add_argument("--scans", required=True, type=parse_scans,
                        help="comma list of scan numbers / ranges, or test, pretrain, all")
    parser.add_argument("--out", required=True, type=Path, help="output directory of the prepared tree")
    parser.add_argument("--light", type=int, default=dtu.DEFAULT_LIGHT, choices=range(dtu.NUM_LIGHTS),
                        help="light index to extract (default %(default)s, the protocol's)")
    parser.add_argument("--sha256", action="append", default=[], metavar="NAME_OR_URL=HEX",
                        help="expected sha256 of a source (key: the source as given, or its file name)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where downloads go (default OUT/.downloads)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries without progress per download (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_prepare(args: argparse.Namespace) -> int:
    """Run `viewneti data prepare`; user-facing failures are printed, not raised (exit code 1)."""
    try:
        checksums = {}
        for item in args.sha256:
            key, sep, digest = item.rpartition("=")
            if not sep or not key:
                raise PrepareError(f"--sha256 {item!r}: expected NAME_OR_URL=HEX")
            checksums[key] = digest
        result = prepare_dtu(
            args.source, args.scans, args.out, light=args.light, sha256=checksums,
            cache_dir=args.cache_dir, retries=args.retries, progress=not args.no_progress,
        )
    except (PrepareError, DownloadError, UnsafeArchiveError, InsufficientSpaceError, CorruptArchiveError,
            DestinationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.message)
    print(f"manifest: {result.manifest}")
    return 0


# ---- sources -----------------------------------------------------------------------------------


def _source_name(source: str) -> str:
    return url_filename(source) if is_url(source) else local_path(source).name


def _open_source(source: str, cache_dir: Path, sha256: str | None, retries: int, backoff_s: float,
                 timeout_s: float, progress: bool) -> tuple[FetchedFile, RangeFile | None, str]:
    """(what was fetched, the remote archive in partial mode, why a URL was downloaded whole)."""
    if not is_url(source):
        return _fetch_source(source, cache_dir, sha256, retries, backoff_s, timeout_s, progress), None, ""
    if sha256 is not None:
        note = "a sha256 was given for it: the whole archive is downloaded so that it can be checked"
    elif (cache_dir / url_filename(source)).exists():
        note = "a complete download was already in the cache"
    else:
        try:
            remote = open_remote_zip(source, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s)
        except (RangeNotSupportedError, NotAnArchiveError) as exc:
            note = f"partial reading is not possible ({exc})"
            logger.info("%s: %s; downloading the whole archive", source, note)
        else:
            logger.info("reading the needed members of %s over HTTP Range (%d bytes in all)", source, remote.size)
            fetched = FetchedFile(source, cache_dir / url_filename(source), remote.size, None, True)
            return fetched, remote, ""
    return _fetch_source(source, cache_dir, sha256, retries, backoff_s, timeout_s, progress), None, note


def _whole_instead(inv: _Inventory, mapping: dict[str, str], exc: Exception, cache_dir: Path, retries: int,
                   backoff_s: float, timeout_s: float, progress: bool) -> _Inventory:
    """Partial reading failed after it began: download the archive whole (verified like any download;
    each member is CRC-checked again on extraction) and read the same members from it."""
    note = f"partial reading failed midway ({exc})"
    logger.warning("%s: %s; downloading the whole archive instead", inv.label, note)
    fetched = _fetch_source(inv.fetched.source, cache_dir, None, retries, backoff_s, timeout_s, progress)
    whole = _inventory(fetched, None, note)
    held = {*whole.images.values(), *whole.cameras.values(), *whole.masks.values()}
    missing = sorted(set(mapping) - held)
    if missing:
        raise PrepareError(f"{inv.label}: the whole download lacks member(s) {missing[:5]} that its central "
                           "directory listed when read over HTTP Range: the archive changed on the server; run again")
    return whole


def _source_record(inv: _Inventory, mapping: dict[str, str], sha256_given: bool) -> dict:
    """What the stamp says about one source: where it came from, how it was read, what was verified."""
    record = {"source": inv.label, "size": inv.fetched.size, "holds": inv.holds()}
    crc = f"CRC-32 of each of the {len(mapping)} extracted member(s)" if inv.is_zip else None
    if inv.remote is not None:
        record.update({
            "mode": "partial", "path": None, "sha256": None, "bytes_transferred": inv.remote.bytes_received,
            "verified": [crc, "the whole-archive sha256 is NOT checked in partial mode: only the central "
                              "directory and the needed members were read"]})
        return record
    sha = "sha256 of the whole archive, against the given value" if sha256_given else None
    record.update({"mode": "full" if inv.fetched.downloaded else "local", "path": str(inv.fetched.path),
                   "sha256": inv.fetched.sha256, "verified": [v for v in (sha, crc) if v]})
    if inv.note:
        record["why_full"] = inv.note
    return record


def _fetch_source(source: str, cache_dir: Path, sha256: str | None, retries: int, backoff_s: float,
                  timeout_s: float, progress: bool) -> FetchedFile:
    try:
        return fetch(source, cache_dir, sha256=sha256, retries=retries, backoff_s=backoff_s,
                     timeout_s=timeout_s, progress=progress, expect_zip=True)
    except FileNotFoundError as exc:
        raise PrepareError(str(exc)) from None


def _extract(inv: _Inventory, mapping: dict[str, str], out_dir: Path, progress: bool,
             limits: ExtractionLimits) -> None:
    try:
        extract_members(inv.remote or inv.fetched.path, mapping, out_dir, progress=progress, limits=limits)
    except CorruptArchiveError as exc:
        if not inv.fetched.downloaded:
            raise
        if inv.remote is not None:
            raise CorruptArchiveError(f"{exc}. It was read over HTTP Range from {inv.label}: the server's copy "
                                      "may be damaged; a run with its sha256 given downloads and checks it "
                                      "whole") from None
        # Not deleted automatically: a damaged member may be the server's copy, and a re-download
        # of 100+ GB should be the user's decision.
        raise CorruptArchiveError(
            f"{exc}. {inv.fetched.path} was downloaded from {inv.label}: delete it to download it again "
            "(--sha256 checks a download against a published digest)") from None


def _inventory(fetched: FetchedFile, remote: RangeFile | None = None, note: str = "") -> _Inventory:
    """Classify a source's members into images / calibration / masks by their names."""
    if remote is None and fetched.path.is_dir():
        names = _directory_files(fetched.path)
        inv = _Inventory(fetched, is_zip=False)
    else:
        try:
            names = member_names(remote or fetched.path)
        except NotAnArchiveError as exc:
            raise PrepareError(f"source {fetched.source!r}: {exc}; expected a zip archive or a "
                               "directory") from None
        inv = _Inventory(fetched, is_zip=True, remote=remote, note=note)
    for name in names:
        if (image := dtu.parse_rectified_member(name)) is not None:
            inv.images.setdefault(image, name)
        elif (cam := dtu.parse_calibration_member(name)) is not None:
            inv.cameras.setdefault(cam, name)
        elif (mask := dtu.parse_mask_member(name)) is not None:
            # Both release layouts may coexist; prefer `scan{N}/mask/{cam}.png`.
            if mask not in inv.masks or "/mask/" in name:
                inv.masks[mask] = name
    if not inv.holds():
        raise PrepareError(
            f"source {fetched.source!r} holds no DTU content: expected members like "
            "'Rectified/scan{N}/rect_001_3_r5000.png' (Rectified.zip), "
            "'.../Calibration/cal18/pos_001.txt' (SampleSet.zip) or "
            "'submission_data/idrmasks/scan{N}/mask/000.png' (mask release)"
        )
    logger.info("source %s holds %s (%d images, %d cameras, %d masks)", fetched.source,
                ", ".join(inv.holds()), len(inv.images), len(inv.cameras), len(inv.masks))
    return inv


def _directory_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files under an extracted tree (symlinked folders not followed)."""
    files = []
    for dirpath, _dirs, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).as_posix()
        files.extend(name if rel == "." else f"{rel}/{name}" for name in filenames)
    return sorted(files)


# ---- planning ----------------------------------------------------------------------------------


def _plan(inventories: list[_Inventory], scans: list[int], light: int) -> list[dict[str, str]]:
    """Per source (same order), member name -> destination; raises the actionable errors before
    anything is written. When several sources hold an item, the first one given wins."""
    plan: list[dict[str, str]] = [{} for _ in inventories]

    def owner(has) -> int | None:
        return next((i for i, inv in enumerate(inventories) if has(inv)), None)

    image_sources = [inv for inv in inventories if inv.images]
    if not image_sources:
        raise MissingScanError(
            f"no source holds DTU rectified images; add Rectified.zip ({dtu.RECTIFIED_URL}) with "
            f"--source. Sources given: {[inv.label for inv in inventories]}"
        )
    available = sorted({key[0] for inv in image_sources for key in inv.images})
    missing_scans = [s for s in scans if s not in available]
    if missing_scans:
        raise MissingScanError(
            f"scan(s) {missing_scans} not found in {[inv.label for inv in image_sources]}; "
            f"the sources hold scans {_ranges(available)}"
        )
    for scan in scans:
        for cam in range(dtu.NUM_VIEWS):
            key = (scan, cam, light)
            i = owner(lambda inv, key=key: key in inv.images)
            if i is None:
                raise MissingScanError(_missing_views_message(image_sources, scan, light))
            plan[i][inventories[i].images[key]] = dtu.image_relpath(scan, cam, light)

    camera_sources = [inv for inv in inventories if inv.cameras]
    for cam in range(dtu.NUM_CAMERAS):
        i = owner(lambda inv, cam=cam: cam in inv.cameras)
        if i is None:
            raise MissingCalibrationError(_missing_calibration_message(inventories, camera_sources))
        plan[i][inventories[i].cameras[cam]] = dtu.camera_relpath(cam)

    for scan in scans:
        for cam in range(dtu.NUM_VIEWS):
            key2 = (scan, cam)
            i = owner(lambda inv, key2=key2: key2 in inv.masks)
            if i is not None:
                plan[i][inventories[i].masks[key2]] = dtu.mask_relpath(scan, cam)
    return plan


def _missing_views_message(image_sources: list[_Inventory], scan: int, light: int) -> str:
    present = {cam for inv in image_sources for (s, cam, lt) in inv.images if s == scan and lt == light}
    missing = [cam for cam in range(dtu.NUM_VIEWS) if cam not in present]
    lights = sorted({lt for inv in image_sources for (s, _c, lt) in inv.images if s == scan})
    holders = [inv.label for inv in image_sources if any(k[0] == scan for k in inv.images)]
    return (
        f"scan {scan} is incomplete at light {light} in {holders}: {len(missing)} of {dtu.NUM_VIEWS} views "
        f"missing (0-based cams {_ranges(missing)}); lights present for this scan: {lights}. "
        "The archive may be truncated, or choose another --light."
    )


def _missing_calibration_message(inventories: list[_Inventory], camera_sources: list[_Inventory]) -> str:
    if camera_sources:
        have = sorted({cam for inv in camera_sources for cam in inv.cameras})
        missing = [cam + 1 for cam in range(dtu.NUM_CAMERAS) if cam not in have]
        return (
            f"calibration is incomplete in {[inv.label for inv in camera_sources]}: missing "
            f"pos_XXX.txt for XXX in {_ranges(missing)} (all {dtu.NUM_CAMERAS} are needed)"
        )
    return (
        "no source holds the DTU calibration (Calibration/cal18/pos_001.txt .. pos_064.txt); it is "
        f"expected in SampleSet.zip ({dtu.SAMPLESET_URL}) under '{dtu.SAMPLESET_CALIBRATION_DIR}/'. "
        f"Add it with --source. Sources given: {[inv.label for inv in inventories]}"
    )


def _note_unlisted_scans(out_dir: Path, scans: list[int]) -> None:
    """Earlier runs may have left other scans; they are kept (never delete data) but not listed."""
    present = {p.name for p in (out_dir / "Rectified").glob("scan*") if p.is_dir()}
    extra = sorted(present - {f"scan{s}" for s in scans})
    if extra:
        logger.info("%s also holds %s from earlier runs; they are not in this manifest", out_dir, extra)


def _warn_missing_masks(scans: list[int], mask_keys: set[tuple[int, int]]) -> None:
    without = [s for s in scans if s in dtu.TEST_SCANS and not any(k[0] == s for k in mask_keys)]
    if without:
        logger.warning("test scan(s) %s have no masks in the sources; their metrics will be unmasked. "
                       "Pass the RegNeRF/IDR mask zip with --source to add them.", without)


# ---- validation and manifest -------------------------------------------------------------------


def _validate_tree(out_dir: Path, scans: list[int], light: int,
                   mask_keys: set[tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Check cameras parse and every image/mask decodes; returns {image relpath: (width, height)}."""
    try:
        dtu.load_cameras(out_dir)
    except (OSError, ValueError) as exc:
        raise TreeValidationError(f"calibration does not validate: {exc}") from None
    images = [dtu.image_relpath(s, c, light) for s in scans for c in range(dtu.NUM_VIEWS)]
    masks = [dtu.mask_relpath(s, c) for s, c in sorted(mask_keys)]
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        image_sizes = dict(zip(images, pool.map(lambda rel: _decoded_size(out_dir, rel), images), strict=True))
        list(pool.map(lambda rel: _decoded_size(out_dir, rel), masks))
    for rel, (width, height) in image_sizes.items():
        if width * 3 != height * 4:
            raise TreeValidationError(f"{out_dir / rel}: {width}x{height} is not 4:3 like DTU images")
    return image_sizes


def _decoded_size(root: Path, rel: str) -> tuple[int, int]:
    """Size of a fully decoded image whose chunk CRCs hold (decoding alone skips some of them)."""
    try:
        return load_image(root / rel, mode=None, verify=True).size
    except (ImageDecodeError, OSError) as exc:
        raise TreeValidationError(str(exc)) from None


def _manifest_frame(out_dir: Path, scans: list[int], light: int, mask_keys: set[tuple[int, int]],
                    sizes: dict[str, tuple[int, int]]) -> pd.DataFrame:
    rows = []
    for scan in scans:
        for cam in range(dtu.NUM_VIEWS):
            rel = dtu.image_relpath(scan, cam, light)
            has_mask = (scan, cam) in mask_keys
            rows.append({
                "scan": scan, "cam": cam, "light": light, "path": rel,
                "view_role": dtu.view_role(cam),
                "train_rank": dtu.TRAIN_VIEWS.index(cam) if cam in dtu.TRAIN_VIEWS else -1,
                "scan_role": dtu.scan_role(scan),
                "has_mask": has_mask,
                "mask_path": dtu.mask_relpath(scan, cam) if has_mask else None,
                "width": sizes[rel][0], "height": sizes[rel][1],
                "file_size": (out_dir / rel).stat().st_size,
            })
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return frame.astype({"scan": "int32", "cam": "int32", "light": "int8", "train_rank": "int8",
                         "width": "int32", "height": "int32", "file_size": "int64", "has_mask": "bool"})


def _tree_problem(out_dir: Path, scans: list[int], light: int) -> str | None:
    """Cheap check (stat only) that a stamped tree is still intact; None if it is."""
    try:
        manifest = pd.read_parquet(out_dir / MANIFEST_NAME)
    except (OSError, ValueError) as exc:
        return f"its manifest is unreadable ({exc})"
    if sorted(set(manifest["scan"].tolist())) != scans or set(manifest["light"].tolist()) != {light}:
        return "its manifest lists other scans/light"
    for rel, size, mask in zip(manifest["path"], manifest["file_size"], manifest["mask_path"], strict=True):
        path = out_dir / rel
        if not path.is_file() or path.stat().st_size != size:
            return f"{rel} is missing or changed"
        if isinstance(mask, str) and mask and not (out_dir / mask).is_file():  # NaN/None: scan has no mask
            return f"{mask} is missing"
    for cam in range(dtu.NUM_CAMERAS):
        if not (out_dir / dtu.camera_relpath(cam)).is_file():
            return f"{dtu.camera_relpath(cam)} is missing"
    return None


# ---- small helpers -----------------------------------------------------------------------------


def _normalise_scans(scans: Sequence[int]) -> list[int]:
    result = sorted({int(s) for s in scans})
    if not result:
        raise PrepareError("no scans requested")
    return result


def _input_fingerprint(sources: list[str], expected: dict[str, str], scans: list[int], light: int) -> dict:
    """What the output depends on. URLs are identified by URL + expected sha256 (no network needed
    to decide a skip); local files by absolute path, size and mtime."""
    described = []
    for source in sources:
        item: dict = {"source": source, "sha256": expected.get(source)}
        if not is_url(source):
            path = local_path(source).absolute()
            item["path"] = str(path)
            if path.is_file():
                stat = path.stat()
                item.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        described.append(item)
    return {"sources": described, "scans": scans, "light": light, "code_version": code_version()}


def _read_stamp(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


def _result(out_dir: Path, scans: list[int], light: int, stamp: dict, *, skipped: bool,
            message: str) -> PrepareResult:
    outputs = stamp.get("outputs", {})
    return PrepareResult(
        out_dir=out_dir, manifest=out_dir / MANIFEST_NAME, stamp=out_dir / STAMP_NAME,
        scans=tuple(scans), light=light, skipped=skipped, n_images=int(outputs.get("n_images", 0)),
        scans_with_masks=tuple(outputs.get("scans_with_masks", ())), message=message,
    )


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_parquet_atomically(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


_TEMP_FILE_RE = re.compile(r"^\..+\.\d+\.tmp$")  # `.NAME.PID.tmp`: archives._write_atomically, the files below


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Delete the `.NAME.PID.tmp` files a killed prepare left behind. Only prepare writes them in this
    tree, and it holds the directory's exclusive lock while it does, so under the lock every one is stale."""
    stale = [Path(d) / name for d, _dirs, names in os.walk(out_dir) for name in names if _TEMP_FILE_RE.match(name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temporary file(s) left in %s by an interrupted prepare (e.g. %s)", len(stale),
                    out_dir, stale[0].relative_to(out_dir))


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """One prepare per output directory at a time (flock; a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepareError(f"another 'viewneti data prepare' is writing {path.parent}; wait for it "
                               "to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ranges(values: Sequence[int]) -> str:
    """[1,2,3,7] -> '1-3, 7' so long scan lists stay readable in error messages."""
    values = sorted(values)
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:  # type: ignore[list-item]
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)
