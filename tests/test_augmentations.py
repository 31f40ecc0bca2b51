"""Training augmentation presets (DESIGN 3.6): size and range kept, seeded, the right geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viewneti_core.augmentations import AUGMENTATION_PRESETS, RandomZoom, build_augmentation

H, W = 96, 128  # 4:3 like DTU's 512x384, small enough to be quick
DRAWS = 48


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small images: intra-op threads only add contention (20x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _edge_image() -> torch.Tensor:
    """Dark (0.2) top half, grey (0.6) bottom half, a faint colour gradient; nothing near white."""
    image = torch.full((3, H, W), 0.2)
    image[:, H // 2:] = 0.6
    image[0] += torch.linspace(0.0, 0.1, W)  # some colour, so jitter has something to act on
    return image


def _edge_line(image: torch.Tensor) -> tuple[float, float]:
    """(slope, row at the centre column) of the dark->grey edge, fitted over the central columns.

    Per column the edge is the first upward crossing of 0.4 going down (sub-pixel, green channel,
    which has no gradient): white fill (from rotation or zooming out) above the dark half only
    crosses downwards, below the grey half not at all."""
    green = image[1].numpy()
    xs, ys = [], []
    for x in range(int(W * 0.3), int(W * 0.7)):
        column = green[:, x]
        up = np.nonzero((column[:-1] < 0.4) & (column[1:] >= 0.4))[0]
        if len(up):
            y = up[0]
            xs.append(x + 0.5)
            ys.append(y + 0.5 + (0.4 - column[y]) / (column[y + 1] - column[y]))
    assert len(xs) > W * 0.3, "edge not found"
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(slope), float(slope * W / 2 + intercept)


def _white_fraction(image: torch.Tensor) -> float:
    return float((image > 0.95).all(dim=0).float().mean())


def _draws(preset: str, seed: int = 0, image: torch.Tensor | None = None) -> list[torch.Tensor]:
    augment = build_augmentation(preset)
    image = _edge_image() if image is None else image
    torch.manual_seed(seed)
    return [augment(image.clone()) for _ in range(DRAWS)]


@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS)
def test_presets_keep_size_dtype_and_range(preset):
    rng = torch.Generator().manual_seed(0)
    image = torch.rand((3, H, W), generator=rng)
    for out in _draws(preset, image=image)[:16]:
        assert out.shape == (3, H, W) and out.dtype == torch.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    augment = build_augmentation(preset)
    torch.manual_seed(0)
    assert augment(torch.rand(3, 384, 512)).shape == (3, 384, 512)  # the real training size


@pytest.mark.parametrize("preset", ["fitting", "pretraining"])
def test_presets_are_deterministic_under_manual_seed(preset):
    first, again, other = _draws(preset, seed=7), _draws(preset, seed=7), _draws(preset, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert len({out.sum().item() for out in first}) > DRAWS // 2  # draws differ from each other


def test_none_is_the_identity():
    image = _edge_image()
    assert torch.equal(build_augmentation("none")(image), image)


def test_fitting_rotates_and_zooms_with_white_fill():
    outs = _draws("fitting")
    lines = [_edge_line(out) for out in outs]
    slopes = np.array([s for s, _ in lines])
    rows = np.array([r for _, r in lines])
    max_tilt = math.tan(math.radians(10.0))
    # Rotation: the edge tilts in most draws (p = 0.75), both ways, never beyond +-10 degrees
    # (the zoom keeps W:H, so it does not change the angle).
    assert (np.abs(slopes) > 0.02).mean() > 0.5
    assert slopes.min() < -0.05 and slopes.max() > 0.05
    assert np.abs(slopes).max() <= max_tilt + 0.03
    # Zoom 0.7-1.3 moves the edge (at H/2 before) by up to ~21% of the height.
    shifts = np.abs(rows - H / 2) / H
    assert shifts.max() > 0.08 and shifts.max() < 0.25
    # White fill appears (rotated corners or a zoomed-out border), sometimes a lot of it.
    white = np.array([_white_fraction(out) for out in outs])
    assert (white > 0.005).mean() > 0.5 and white.max() > 0.15


def test_pretraining_only_zooms_a_little():
    outs = _draws("pretraining")
    lines = [_edge_line(out) for out in outs]
    slopes = np.array([s for s, _ in lines])
    rows = np.array([r for _, r in lines])
    assert np.abs(slopes).max() < 0.01  # no rotation
    # Zoom 0.95-1.05: the edge moves by at most ~2.6% of the height, but it does move.
    shifts = np.abs(rows - H / 2) / H
    assert shifts.max() < 0.035 and shifts.max() > 0.003
    white = np.array([_white_fraction(out) for out in outs])
    assert white.max() < 1 - (1 / 1.05) ** 2 + 0.01  # at most a thin zoomed-out border
    # Colour jitter (p = 0.75, strength 0.04) changes intensities a little: the dark level, measured
    # away from the edge and any border, moves in most draws, never by much.
    dark = np.array([out[1, int(H * 0.1):int(H * 0.35), int(W * 0.2):int(W * 0.8)].median().item() for out in outs])
    change = np.abs(dark - 0.2)
    assert (change > 0.001).mean() > 0.4 and change.max() < 0.05


def test_random_zoom_out_pads_white_and_zoom_in_does_not():
    image = _edge_image()
    torch.manual_seed(0)
    zoom_out = RandomZoom((1.3, 1.3))(image)
    zoom_in = RandomZoom((0.7, 0.7))(image)
    assert zoom_out.shape == zoom_in.shape == image.shape
    assert _white_fraction(zoom_out) > 0.3  # 1 - 1/1.3^2 = 41% of the window is padding
    assert _white_fraction(zoom_in) == 0.0
    torch.testing.assert_close(RandomZoom((1.0, 1.0))(image), image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [(0.0, 1.0), (1.2, 1.1), (-0.5, 0.5)])
def test_random_zoom_rejects_bad_scales(scale):
    with pytest.raises(ValueError, match="zoom scale"):
        RandomZoom(scale)


def test_unknown_preset_errors():
    with pytest.raises(ValueError, match=r"unknown augmentation preset 'heavy'.*fitting.*pretraining.*none"):
        build_augmentation("heavy")
