"""Safe, selective extraction from zip archives (and the same copy step from plain directories).

We never call `ZipFile.extractall`: a downloaded archive is untrusted, so every member name is checked
(absolute paths, `..`, drive letters, backslashes, symlinks) before anything is written, only the
members asked for are written, each one goes to a temp file that is renamed into place, and the free
disk space is checked against the uncompressed size first. Declared sizes and compression ratios are
bounded before writing (zip bombs), and while streaming a member may not produce more bytes than it
declared, nor end short of them or fail its CRC-32: the temp file is then deleted. Destinations are
never reached through a symlink already inside the output tree, and a directory source's symlinks
are never copied from. A file already at its destination with the member's size and CRC-32 is kept,
so an interrupted extraction resumes cheaply.
"""

from __future__ import annotations

import copy
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
    """An archive member or source file could write or read outside its tree; nothing was extracted."""


class ArchiveLimitError(UnsafeArchiveError):
    """A member declares (or inflates to) more than the extraction limits allow: a zip bomb or damage."""


class NotAnArchiveError(ValueError):
    """The file is not a readable zip archive."""


class CorruptArchiveError(ValueError):
    """A member's data is damaged (bad CRC-32, truncated or undecompressable); its output was deleted."""


class DestinationError(ValueError):
    """A destination inside the output tree is blocked (a directory or symlink is in the way)."""


@dataclass(frozen=True)
class ExtractionLimits:
    """Bounds on what one member may inflate to. DTU members are PNGs of a few MB (ratio ~1) and
    camera text files of a few hundred bytes; a deflate bomb reaches ratios near 1000."""

    max_member_bytes: int = 2 << 30
    max_ratio: float = 100.0  # uncompressed / compressed size
    ratio_floor_bytes: int = 1 << 20  # members smaller than this are never refused for their ratio


DEFAULT_LIMITS = ExtractionLimits()


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


def zip_problem(path: Path) -> str | None:
    """Why `path` is not a readable zip archive, or None. Reads the end record, the central directory
    and the first and last local headers only, so it is cheap even for the 123 GB Rectified.zip."""
    try:
        size = Path(path).stat().st_size
        with zipfile.ZipFile(path) as zf:
            infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
            for info in infos:
                if info.header_offset + 30 + info.compress_size > size:
                    return f"member {info.filename!r} lies beyond the end of the file (truncated)"
            for info in {id(i): i for i in infos[:1] + infos[-1:]}.values():
                if not info.flag_bits & 0x1:  # an encrypted member cannot be opened without a password
                    zf.open(info).close()  # checks the local header's signature and name
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"not a readable zip archive ({type(exc).__name__}: {exc})"
    return None


def member_names(zip_path: Path) -> list[str]:
    """Names of the file members of a zip (safety-checked), for identifying what it holds."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return [i.filename for i in check_archive(zf, str(zip_path)) if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise NotAnArchiveError(f"{zip_path} is not a readable zip archive ({exc})") from exc


def extract_members(zip_path: Path, mapping: Mapping[str, str], dest_root: Path,
                    *, progress: bool = False, limits: ExtractionLimits = DEFAULT_LIMITS) -> CopyStats:
    """Extract the members named by `mapping` (member name -> relative destination) under `dest_root`.
    `zip_path` may also be a seekable file, e.g. a remote_zip.RangeFile (members read over HTTP Range).

    Every member and destination is checked before the first byte is written."""
    dest_root = Path(dest_root)
    targets = {name: _safe_destination(dest_root, rel) for name, rel in mapping.items()}
    checked_dirs: set[Path] = set()
    with zipfile.ZipFile(zip_path) as zf:
        infos = {i.filename: i for i in check_archive(zf, str(zip_path))}
        missing = [name for name in targets if name not in infos]
        if missing:
            raise KeyError(f"{zip_path} has no member(s) {missing[:5]}")
        for name, dest in targets.items():
            _check_member(infos[name], zip_path, dest, limits)
            _check_destination(dest_root, dest, checked_dirs)
        todo = [(infos[name], dest) for name, dest in targets.items() if not _zip_member_present(infos[name], dest)]
        kept = len(targets) - len(todo)
        needed = sum(info.file_size for info, _ in todo)
        archive_name = getattr(zip_path, "name", None) or Path(zip_path).name  # a path or a remote file
        ensure_free_space(dest_root, needed, f"extracting {len(todo)} files from {archive_name}")
        logger.info("extracting %d files (%s) from %s into %s (%d already present)",
                    len(todo), _fmt_bytes(needed), zip_path, dest_root, kept)
        with tqdm(total=needed, unit="B", unit_scale=True, desc=archive_name,
                  disable=not progress, leave=False) as bar:
            for info, dest in todo:
                _extract_one(zf, info, zip_path, dest, bar)
    return CopyStats(written=len(todo), kept=kept, bytes_written=needed)


def copy_files(src_root: Path, mapping: Mapping[str, str], dest_root: Path,
               *, progress: bool = False) -> CopyStats:
    """Copy files of an already-extracted tree (relative source -> relative destination)."""
    src_root, dest_root = Path(src_root), Path(dest_root)
    pairs = [(src_root / src, _safe_destination(dest_root, rel)) for src, rel in mapping.items()]
    checked_dirs: set[Path] = set()
    for src, dest in pairs:
        _check_source_file(src_root, src)
        _check_destination(dest_root, dest, checked_dirs)
    todo = [(src, dest) for src, dest in pairs if not (dest.is_file() and filecmp.cmp(src, dest, shallow=False))]
    needed = sum(src.stat().st_size for src, _ in todo)
    ensure_free_space(dest_root, needed, f"copying {len(todo)} files from {src_root}")
    logger.info("copying %d files (%s) from %s into %s (%d already present)",
                len(todo), _fmt_bytes(needed), src_root, dest_root, len(pairs) - len(todo))
    with tqdm(total=needed, unit="B", unit_scale=True, desc=src_root.name,
              disable=not progress, leave=False) as bar:
        for src, dest in todo:
            with open(src, "rb") as fh:
                _write_atomically(fh, dest, bar, size=src.stat().st_size, what=f"file {src}")
    return CopyStats(written=len(todo), kept=len(pairs) - len(todo), bytes_written=needed)


# ---- helpers -----------------------------------------------------------------------------------


def _safe_destination(dest_root: Path, rel: str) -> Path:
    """Destination paths come from our own layout code, but are checked anyway (defence in depth)."""
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or ".." in parts or "\\" in rel:
        raise UnsafeArchiveError(f"refusing destination path {rel!r}")
    return dest_root.joinpath(*parts)


def _check_member(info: zipfile.ZipInfo, zip_path: Path, dest: Path, limits: ExtractionLimits) -> None:
    """Refuse a member before writing: not a regular file, encrypted, or over the size/ratio limits."""
    where = f"member {info.filename!r} of {zip_path} (destination {dest})"
    mode = info.external_attr >> 16
    if info.is_dir() or stat.S_ISDIR(mode):
        raise CorruptArchiveError(f"{where} is a directory where a file is expected; nothing was extracted")
    if mode and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise UnsafeArchiveError(f"refusing {where}: not a regular file (mode {mode:o}); nothing was extracted")
    if info.flag_bits & 0x1:
        raise CorruptArchiveError(f"{where} is encrypted; DTU archives are not. Nothing was extracted")
    if info.file_size > limits.max_member_bytes:
        raise ArchiveLimitError(
            f"refusing {where}: it declares {_fmt_bytes(info.file_size)} uncompressed, over the limit of "
            f"{_fmt_bytes(limits.max_member_bytes)} per member; nothing was extracted")
    if info.file_size >= limits.ratio_floor_bytes and info.file_size > limits.max_ratio * info.compress_size:
        ratio = info.file_size / max(info.compress_size, 1)
        raise ArchiveLimitError(
            f"refusing {where}: {_fmt_bytes(info.compress_size)} inflate to {_fmt_bytes(info.file_size)} "
            f"(ratio {ratio:.0f}, limit {limits.max_ratio:.0f}): a zip bomb or a damaged archive; "
            "nothing was extracted")


def _check_destination(dest_root: Path, dest: Path, checked_dirs: set[Path]) -> None:
    """No symlink may sit between `dest_root` and `dest` (writes would land outside the tree), and
    nothing but a regular file (or nothing) may sit at `dest`."""
    current = dest_root
    for part in dest.relative_to(dest_root).parts[:-1]:
        current = current / part
        if current in checked_dirs:
            continue
        if current.is_symlink():
            raise DestinationError(
                f"refusing to write {dest}: {current} is a symbolic link (-> {os.readlink(current)}) inside "
                "the output tree, so files would land outside it; replace it with a real directory")
        if current.exists() and not current.is_dir():
            raise DestinationError(f"cannot write {dest}: {current} is a file where a directory is expected")
        checked_dirs.add(current)
    if dest.is_symlink():
        raise DestinationError(
            f"refusing to write {dest}: it is a symbolic link (-> {os.readlink(dest)}) inside the output "
            "tree; remove it")
    if dest.exists() and not dest.is_file():
        kind = "a directory" if dest.is_dir() else "not a regular file"
        raise DestinationError(f"cannot write {dest}: it is {kind} where a file is expected; remove it")


def _check_source_file(src_root: Path, src: Path) -> None:
    """A directory source's files are read only if no symlink leads to them (it could point anywhere)."""
    current = src_root
    for part in src.relative_to(src_root).parts:
        current = current / part
        if current.is_symlink():
            raise UnsafeArchiveError(
                f"refusing to copy {src} from the directory source {src_root}: {current} is a symbolic "
                f"link (-> {os.readlink(current)}); copy the real files into the source instead")
    if not src.is_file():
        raise UnsafeArchiveError(f"refusing to copy {src}: it is not a regular file")


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path, dest: Path, bar: tqdm) -> None:
    """Stream one member; more bytes than declared, fewer, or a wrong CRC-32 delete the output.

    zipfile would silently stop at the declared size, so the member is opened as one byte longer and
    the CRC-32 is checked here, on exactly what was written."""
    where = f"member {info.filename!r} of {zip_path}"
    probe = copy.copy(info)
    probe.file_size = info.file_size + 1
    del probe.CRC  # zipfile skips its own check; ours below sees overruns first and names them
    try:
        with zf.open(probe) as src:
            _write_atomically(src, dest, bar, size=info.file_size, what=where, expect_crc=info.CRC)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise CorruptArchiveError(
            f"{where} is corrupt ({type(exc).__name__}: {exc}); nothing was written to {dest}. The archive "
            "is damaged: download it again (or check it against its published sha256)") from None


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


def _write_atomically(src, dest: Path, bar: tqdm, *, size: int, what: str, expect_crc: int | None = None) -> None:
    """Stream `src` into a temp file next to `dest`, then rename: `dest` is never half-written.

    Exactly `size` bytes (and, if given, CRC-32 `expect_crc`) must come out; otherwise the temp file
    is deleted and nothing reaches `dest`. A source that yields more is stopped at once."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    written, crc = 0, 0
    try:
        with open(tmp, "wb") as out:
            while chunk := src.read(CHUNK_SIZE):
                written += len(chunk)
                if written > size:
                    raise ArchiveLimitError(
                        f"{what} yields more than its declared {size} bytes; stopped, and nothing was written "
                        f"to {dest}: the archive is damaged or malicious")
                crc = zlib.crc32(chunk, crc)
                out.write(chunk)
                bar.update(len(chunk))
        if written != size:
            raise CorruptArchiveError(f"{what} ended after {written} of its {size} bytes; nothing was written "
                                      f"to {dest}: the source is truncated or damaged")
        if expect_crc is not None and crc != expect_crc:
            raise CorruptArchiveError(f"{what} fails its CRC-32 check ({crc:08x}, expected {expect_crc:08x}); "
                                      f"nothing was written to {dest}: the archive is damaged")
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
