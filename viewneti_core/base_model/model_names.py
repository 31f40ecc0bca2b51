"""How a base-model name is read: a builtin builder, a local directory or a hub id.

Kept free of torch so the pipeline's parameters can resolve model paths without loading it.
"""

from __future__ import annotations

import os
from pathlib import Path

BUILTIN_PREFIX = "builtin:"


def looks_local(name: str, base: Path | None = None) -> bool:
    """Existing paths (relative to `base`, default the cwd), explicit relative/absolute paths, and
    anything deeper than `owner/name`."""
    if name.startswith(BUILTIN_PREFIX):
        return False
    path = Path(name).expanduser()
    if path.exists() or (base is not None and (Path(base) / path).exists()) or name.startswith((".", "/", "~")):
        return True
    return not looks_like_hub_id(name) and ("/" in name or os.sep in name)


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))
