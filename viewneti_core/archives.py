"""Safe, selective extraction from zip archives (and the same copy step from plain directories).

We never call `ZipFile.extractall`: a downloaded archive is untrusted, so every member name is checked
(absolute paths, `..`, drive letters, backslashes, symlinks) before anything is written, only the
members asked for are written, each one goes to a temp file that is renamed into place, and the free
disk space is checked against the uncompressed size first. A file already at its destination with the
member's size and CRC-32 is kept, so an interrupted extraction resumes cheaply.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
import stat
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
FREE_SPACE_RESERVE = 64 << 20  # keep this much free beyond what we write
_DRIVE_RE = re.compile(r"^[A-Za-z]:")


class UnsafeArchiveError(ValueError):
    """An archive member could write outside the target directory; nothing was extracted."""


class NotAnArchiveError(ValueError):
    """The file is not a readable zip archive."""


class InsufficientSpaceError(OSError):
    """Not enough free disk space for what is about to be written; nothing was written."""


@dataclass(frozen=True)
class CopyStats:
    """What an extraction/copy did (for logs and results)."""

    written: int  # files written
    kept: int  # files already present and identical
    bytes_written: int


def ensure_free_space(path: Path, needed_bytes: int, purpose: str, reserve: int = FREE_SPACE_RESERVE) -> None:
    """Raise InsufficientSpaceError if the filesystem holding `path` cannot take `needed_bytes` more."""
    if needed_bytes <= 0:
        return
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes + reserve:
        raise InsufficientSpaceError(
            f"not enough disk space for {purpose}: need {_fmt_bytes(needed_bytes)} "
            f"(+{_fmt_bytes(reserve)} reserve) but only {_fmt_bytes(free)} is free on the filesystem of "
            f"{probe}; free some space or choose another output/cache directory"
        )


def unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member is unsafe to extract, or None if it is an ordinary relative file/folder."""
    name = info.filename
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    if "\\" in name:
        return "backslash in name (Windows path separator)"
    if name.startswith("/"):
        return "absolute path"
    if _DRIVE_RE.match(name):
        return "drive letter"
    if ".." in PurePosixPath(name).parts:
        return "'..' path component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def check_archive(zf: zipfile.ZipFile, label: str) -> list[zipfile.ZipInfo]:
    """All members of an open archive, after refusing the archive if any member is unsafe."""
    infos = zf.infolist()
    for info in infos:
        reason = unsafe_member_reason(info)
        if reason is not None:
            raise UnsafeArchiveError(
                f"refusing to extract from {label}: member {info.filename!r} is unsafe ({reason}); "
                "nothing was extracted"
            )
    return infos


def member_names(zip_path: Path) -> list[str]:
    """Names of the file members of a zip (safety-checked), for identifying what it holds."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return [i.filename for i in check_archive(zf, str(zip_path)) if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise NotAnArchiveError(f"{zip_path} is not a readable zip archive ({exc})") from exc


def extract_members(zip_path: Path, mapping: Mapping[str, str], dest_root: Path,
                    *, progress: bool = False) -> CopyStats:
    """Extract the members named by `mapping` (member name -> relative destination) under `dest_root`."""
    dest_root = Path(dest_root)
    targets = {name: _safe_destination(dest_root, rel) for name, rel in mapping.items()}
    with zipfile.ZipFile(zip_path) as zf:
        infos = {i.filename: i for i in check_archive(zf, str(zip_path))}
        missing = [name for name in targets if name not in infos]
        if missing:
            raise KeyError(f"{zip_path} has no member(s) {missing[:5]}")
        todo = [(infos[name], dest) for name, dest in targets.items() if not _zip_member_present(infos[name], dest)]
        kept = len(targets) - len(todo)
        needed = sum(info.file_size for info, _ in todo)
        ensure_free_space(dest_root, needed, f"extracting {len(todo)} files from {Path(zip_path).name}")
        logger.info("extracting %d files (%s) from %s into %s (%d already present)",
                    len(todo), _fmt_bytes(needed), zip_path, dest_root, kept)
        with tqdm(total=needed, unit="B", unit_scale=True, desc=Path(zip_path).name,
                  disable=not progress, leave=False) as bar:
            for info, dest in todo:
                with zf.open(info) as src:  # zipfile checks the CRC-32 when the member is fully read
                    _write_atomically(src, dest, bar)
    return CopyStats(written=len(todo), kept=kept, bytes_written=needed)


def copy_files(src_root: Path, mapping: Mapping[str, str], dest_root: Path,
               *, progress: bool = False) -> CopyStats:
    """Copy files of an already-extracted tree (relative source -> relative destination)."""
    src_root, dest_root = Path(src_root), Path(dest_root)
    pairs = [(src_root / src, _safe_destination(dest_root, rel)) for src, rel in mapping.items()]
    todo = [(src, dest) for src, dest in pairs if not (dest.is_file() and filecmp.cmp(src, dest, shallow=False))]
    needed = sum(src.stat().st_size for src, _ in todo)
    ensure_free_space(dest_root, needed, f"copying {len(todo)} files from {src_root}")
    logger.info("copying %d files (%s) from %s into %s (%d already present)",
                len(todo), _fmt_bytes(needed), src_root, dest_root, len(pairs) - len(todo))
    with tqdm(total=needed, unit="B", unit_scale=True, desc=src_root.name,
              disable=not progress, leave=False) as bar:
        for src, dest in todo:
            with open(src, "rb") as fh:
                _write_atomically(fh, dest, bar)
    return CopyStats(written=len(todo), kept=len(pairs) - len(todo), bytes_written=needed)


# ---- helpers -----------------------------------------------------------------------------------


def _safe_destination(dest_root: Path, rel: str) -> Path:
    """Destination paths come from our own layout code, but are checked anyway (defence in depth)."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
        raise UnsafeArchiveError(f"refusing destination path {rel!r}")
    return dest_root.joinpath(*parts)


def _zip_member_present(info: zipfile.ZipInfo, dest: Path) -> bool:
    """True if `dest` already holds exactly this member (same size and CRC-32)."""
    try:
        if not dest.is_file() or dest.stat().st_size != info.file_size:
            return False
        crc = 0
        with open(dest, "rb") as fh:
            while chunk := fh.read(CHUNK_SIZE):
                crc = zlib.crc32(chunk, crc)
    except OSError:
        return False
    return crc == info.CRC


def _write_atomically(src, dest: Path, bar: tqdm) -> None:
    """Stream `src` into a temp file next to `dest`, then rename: `dest` is never half-written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                out.write(chunk)
                bar.update(len(chunk))
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"  # unreachable; keeps type checkers calm
