"""Temp files and directories for write-then-rename publishing, with normal permissions.

`tempfile.mkstemp`/`mkdtemp` create 0600 files and 0700 directories; renamed into place as they
are, results would be unreadable to other users (cluster workers, a Prefect UI served by another
account). These helpers give them the modes a plain `open`/`mkdir` would under the process umask.
Libraries that create files their own way (safetensors writes 0600) are brought to the same mode
before the rename. The umask is read without `os.umask`, which sets it: setting it, even for an
instant, races with threads creating files (Dask workers run tasks in threads).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask_from_proc() -> int | None:
    """The `Umask:` line of /proc/self/status (Linux >= 4.7): a read that changes nothing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_at_import() -> int:
    mask = _umask_from_proc()
    if mask is None:  # no /proc: read it the only portable way, once, while the import lock is held
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def current_umask() -> int:
    """The process umask, read from /proc where it exists, else the value at import (never set)."""
    mask = _umask_from_proc()
    return _UMASK_AT_IMPORT if mask is None else mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def temp_dir_beside(target: Path, prefix: str | None = None) -> Path:
    """A fresh directory next to `target` (same filesystem, so `os.replace` is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def temp_file_beside(target: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    """(fd, path) of a fresh file next to `target`, for writing then `os.replace`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.fchmod(fd, file_mode())
    return fd, Path(tmp)


_RUST_OS_ERROR = re.compile(r"(?:Os \{ code: |\(os error )(\d+)")  # Rust's io::Error, Debug or Display


@contextmanager
def naming_path(path: Path | str) -> Iterator[None]:
    """OSErrors raised inside carry `path`: a failed write() (ENOSPC, EFBIG) names no file by itself,
    and safetensors' Rust writer reports I/O errors as a SafetensorError with the errno in its text."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except Exception as exc:
        found = _RUST_OS_ERROR.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """`safetensors.torch.save_file`, published atomically with the mode of our other files."""
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = temp_file_beside(path, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        with naming_path(path):
            save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, file_mode())  # safetensors (re)creates the file 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def normalize_modes(tree: Path) -> None:
    """Give every file and directory under `tree` (a temp dir about to be renamed) the umask modes."""
    os.chmod(tree, 0o777 & ~current_umask())
    for path in Path(tree).rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())
