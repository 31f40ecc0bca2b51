"""Checks of what `viewneti infer` and `generate` are asked to render, run before any model is loaded
or any file is written: a bad camera path found after the predictions were written, or a size that
only fails when the sampler allocates it, wastes the work and leaves a half-made output behind.

The limits are generous for the method (SD 2.1 renders 768x576; DTU has 64 cameras) and exist so that
a typo (an extra zero) is refused with a message instead of running for hours or exhausting memory.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

logger = logging.getLogger(__name__)

MAX_PATH_FRAMES = 1000  # frames of one --camera-path GIF
MAX_IMAGE_SIDE = 4096  # pixels per side of a render (5.3x SD 2.1's 768)
MAX_IMAGES = 10_000  # images (cameras x seeds) of one call
MAX_HELD_BYTES = 16 << 30  # the rendered images are held as float32 until they are written


class RenderArgumentError(ValueError):
    """An argument of `infer`/`generate` that cannot be rendered; raised before any work."""


def _few(values: Sequence[int], limit: int = 5) -> str:
    """A short rendering of offending values: a typo can be thousands of them, or thousands of digits."""
    shown = [str(v) if abs(v) < 10**24 else f"<a {abs(v).bit_length()}-bit number>" for v in values[:limit]]
    return "[" + ", ".join(shown) + (f", ... {len(values) - limit} more" if len(values) > limit else "") + "]"


def unique(values: Sequence[int], what: str) -> list[int]:
    """`values` in their order without repeats; one log line names what was dropped."""
    kept = list(dict.fromkeys(values))
    if len(kept) != len(values):
        dropped = sorted(v for v, n in Counter(values).items() if n > 1)
        logger.warning("%s: dropped %d repeated value(s) %s; each is rendered once", what,
                       len(values) - len(kept), _few(dropped))
    return kept


def check_seeds(seeds: Sequence[int], what: str = "--seeds") -> list[int]:
    if not seeds:
        raise RenderArgumentError(f"{what}: the seeds list is empty: give at least one seed, e.g. {what} 0,1,2")
    bad = [s for s in seeds if not -(2**63) <= s < 2**64]
    if bad:
        raise RenderArgumentError(f"{what}: seed(s) {_few(bad)} do not fit a 64-bit generator seed")
    return unique(seeds, what)


def check_cameras(indices: Sequence[int], n_cameras: int, what: str) -> list[int]:
    """Camera indices in 0..n_cameras-1 (a negative index never wraps around), without repeats."""
    if not indices:
        raise RenderArgumentError(f"{what}: no camera given: list camera indices, e.g. {what} 25,22,28")
    bad = [i for i in indices if not 0 <= i < n_cameras]
    if bad:
        raise RenderArgumentError(f"{what}: camera index(es) {_few(bad)} out of range: the cameras are "
                                  f"0..{n_cameras - 1}")
    return unique(indices, what)


def check_camera_path(path: Sequence[int] | None, n_cameras: int) -> tuple[int, int, int] | None:
    """(FROM, TO, FRAMES) of --camera-path: two cameras in range and 2..MAX_PATH_FRAMES frames."""
    if path is None:
        return None
    if len(path) != 3:
        raise RenderArgumentError(f"--camera-path takes FROM TO FRAMES, got {_few(list(path))}")
    start, end, frames = (int(v) for v in path)
    bad = [i for i in (start, end) if not 0 <= i < n_cameras]
    if bad:
        raise RenderArgumentError(f"--camera-path: camera index(es) {_few(bad)} out of range: the cameras are "
                                  f"0..{n_cameras - 1} (a negative index does not count from the end)")
    if not 2 <= frames <= MAX_PATH_FRAMES:
        raise RenderArgumentError(f"--camera-path: FRAMES is {_few([frames])[1:-1]}; a path needs "
                                  f"2..{MAX_PATH_FRAMES} frames")
    if start == end:
        raise RenderArgumentError(f"--camera-path: FROM and TO are the same camera ({start}): the path would "
                                  "not move")
    return start, end, frames


def check_render_size(width: int, height: int, n_images: int, path_frames: int = 0) -> None:
    """Refuse sizes and counts whose images could not be held (the sampler would fail allocating)."""
    big = [f"eval.{key} {_few([value])[1:-1]}" for key, value in (("width", width), ("height", height)) if value > MAX_IMAGE_SIDE]
    if big:
        raise RenderArgumentError(f"{', '.join(big)} exceeds the {MAX_IMAGE_SIDE}-pixel limit of a render side "
                                  "(SD 2.1 renders 768x576)")
    if n_images > MAX_IMAGES:
        raise RenderArgumentError(f"{n_images} images (cameras x seeds) requested; one call renders at most "
                                  f"{MAX_IMAGES}: split the cameras or seeds over several calls")
    held = (n_images + path_frames) * 3 * width * height * 4
    if held > MAX_HELD_BYTES:
        raise RenderArgumentError(
            f"{n_images + path_frames} images of {width}x{height} need {held / 2**30:.1f} GiB held in memory before "
            f"they are written (limit {MAX_HELD_BYTES >> 30} GiB): lower eval.width/eval.height or render fewer "
            "cameras or seeds per call")
