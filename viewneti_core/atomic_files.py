"""Temp files and directories for write-then-rename publishing, with normal permissions.

`tempfile.mkstemp`/`mkdtemp` create 0600 files and 0700 directories; renamed into place as they
are, results would be unreadable to other users (cluster workers, a Prefect UI served by another
account). These helpers give them the modes a plain `open`/`mkdir` would under the process umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; restore at once
    os.umask(mask)
    return mask


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
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, Path(tmp)
