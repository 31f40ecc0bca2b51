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


MAX_IMAGE_SIDE = 16384  # pixels per side of a stored image (predictions); more is a damaged file


def image_tensor_problem(image: torch.Tensor) -> str | None:
    """Why a stored image tensor is not an RGB image (None when it is one).

    Accepted: uint8 (3, H, W), the format `viewneti infer` writes, or a floating (3, H, W) tensor with
    finite values in [0, 1]. Integers of other widths and bools are ambiguous and refused, as are
    NaN/inf, values outside [0, 1] and sides outside 1..MAX_IMAGE_SIDE."""
    import torch

    shape = tuple(image.shape)
    if image.dim() != 3 or shape[0] != 3:
        return f"has shape {shape}, expected an RGB image (3, H, W)"
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in shape[1:]):
        return f"is {shape[2]}x{shape[1]} (W x H); each side must be 1..{MAX_IMAGE_SIDE} pixels"
    if image.dtype == torch.uint8:
        return None
    if not image.is_floating_point():
        return f"has dtype {str(image.dtype).removeprefix('torch.')}; images are uint8 (0..255) or floats in [0, 1]"
    values = image.float()
    if not torch.isfinite(values).all():
        return f"holds {int((~torch.isfinite(values)).sum())} NaN or infinite value(s)"
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        return f"has values in [{low:.4g}, {high:.4g}]; float images must lie in [0, 1] (or be stored as uint8)"
    return None


def image_to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """A checked image tensor (see `image_tensor_problem`) as float32 in [0, 1]."""
    import torch

    return image.float() / 255 if image.dtype == torch.uint8 else image.to(torch.float32)
