"""Image files: decoding that names the broken file, atomic PNG writes and labelled grids.

torch is imported only where a tensor is converted, so `data prepare` can validate images without it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from viewneti_core.atomic_files import temp_file_beside

if TYPE_CHECKING:
    import torch


class ImageDecodeError(ValueError):
    """An image file that does not decode (truncated, corrupt, not an image); the message names it."""


def load_image(path: Path | str, mode: str | None = "RGB", *, verify: bool = False) -> Image.Image:
    """Fully decode `path` (converted to `mode` unless None); any decoding failure names the file.

    PIL decodes lazily, so without `load()` a truncated PNG fails later with an error naming no file.
    `verify` also checks every chunk's CRC, which decoding skips (for validating a prepared tree)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        if verify:
            with Image.open(path) as image:
                image.verify()
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"image {path} does not decode ({type(exc).__name__}: {exc}); the file is "
                               "truncated or corrupt: replace it (in a DTU tree: run `viewneti data prepare` again)") from None


def to_pil(image: torch.Tensor | np.ndarray) -> Image.Image:
    """(3, H, W) tensor or (H, W, 3) array in [0, 1] -> 8-bit RGB image."""
    import torch

    if torch.is_tensor(image):
        image = image.detach().float().cpu().permute(1, 2, 0).numpy()
    array = np.clip(np.asarray(image, dtype=np.float32) * 255 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def save_image_atomic(image: Image.Image, path: Path | str) -> Path:
    """Write next to the target and rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=path.suffix)
    os.close(fd)
    try:
        image.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] = (),
    title: str = "",
    pad: int = 2,
    label_width: int = 90,
    title_height: int = 16,
) -> Image.Image:
    """A grid of equally sized tiles with a text label left of each row and a title bar on top."""
    tile_w, tile_h = rows[0][0].size
    cols = max(len(r) for r in rows)
    left = label_width if row_labels else 0
    top = title_height if title else 0
    grid = Image.new("RGB", (left + cols * (tile_w + pad) + pad, top + len(rows) * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.rectangle([0, 0, grid.width, title_height - 1], fill=(200, 30, 30))
        draw.text((4, 2), title, fill="white")
    for r, row in enumerate(rows):
        y = top + pad + r * (tile_h + pad)
        if r < len(row_labels):
            draw.text((4, y + tile_h // 2 - 6), row_labels[r], fill="black")
        for c, tile in enumerate(row):
            grid.paste(tile.resize((tile_w, tile_h)), (left + pad + c * (tile_w + pad), y))
    return grid
