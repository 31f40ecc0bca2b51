"""Training augmentations (DESIGN 3.6) against the original's pipelines (its keys 7 and 5).

The original composed torchvision (v1) transforms on the 8-bit PIL image; the tests restate those
pipelines literally, and the crop sampling (area fraction, log-uniform aspect ratio, 10 attempts,
centre-crop fallback) as plain code, and compare ours with them draw for draw.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from viewneti_core.data.augmentations import AUGMENTATION_PRESETS, build_augmentation

H, W = 96, 128  # 4:3 like DTU's 384x512, small enough to be quick
DRAWS = 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small images: intra-op threads only add contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(h: int = H, w: int = W) -> torch.Tensor:
    """A textured uint8 image (gradients + a disk) with no pixel at 1, so fill pixels can be told apart."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    disk = (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.08).float()
    image = torch.stack([40 + 150 * xx, 60 + 120 * yy, 90 + 100 * disk])
    return image.round().to(torch.uint8)


def _original_pipeline(key: int, size: tuple[int, int]) -> T.Compose:
    """The original's training/dataset.py augmentation keys 7 (fitting) and 5 (pretraining), restated."""
    if key == 7:
        return T.Compose([
            T.RandomApply([T.ColorJitter(0.04, 0.04, 0.04, 0.04)], p=0.75),
            T.RandomApply([T.GaussianBlur(5, (0.1, 0.2))], p=0.2),
            T.RandomApply([T.RandomRotation(degrees=10, fill=1)], p=0.75),
            T.RandomResizedCrop(size, scale=(0.70, 1.3)),
        ])
    assert key == 5
    return T.Compose([
        T.RandomApply([T.ColorJitter(0.04, 0.04, 0.04, 0.04)], p=0.75),
        T.RandomApply([T.GaussianBlur(5, (0.1, 0.2))], p=0.25),
        T.RandomResizedCrop(size, scale=(0.950, 1.05)),
    ])


@pytest.mark.parametrize(("preset", "key"), [("fitting", 7), ("pretraining", 5)])
def test_presets_equal_the_original_pipelines_draw_for_draw(preset, key):
    image = _image()
    ours = build_augmentation(preset, (H, W))
    original = _original_pipeline(key, (H, W))
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    changed = 0
    for seed in range(DRAWS):
        torch.manual_seed(seed)
        got = ours(image)
        torch.manual_seed(seed)
        want = torch.from_numpy(np.asarray(original(pil)).copy()).permute(2, 0, 1)
        assert got.dtype == torch.uint8 and got.shape == (3, H, W)
        assert torch.equal(got, want), f"draw {seed} differs from the original's pipeline"
        changed += not torch.equal(got, image)
    assert changed > DRAWS * 0.5  # the draws really augment (pretraining often falls back to the whole image)


def _restated_crop_box(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box, written out: area fraction ~ U(scale), log-aspect ~ U(log 3/4,
    log 4/3), 10 attempts, then the centre crop of the largest box of allowed aspect (the whole 4:3 image)."""
    area = height * width
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * 4 / 3)
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _fit_probability_of_one_attempt(lo: float, hi: float) -> float:
    """P(a sampled box fits) for a 4:3 image: needs area A <= 1 and aspect a in [4A/3, 4/3] (log-uniform
    over [3/4, 4/3]); integrated over A ~ U(lo, hi): (1/(hi-lo)) * int_lo^min(hi,1) -ln(A) dA / ln(16/9)."""
    top = min(hi, 1.0)
    integral = (top - top * math.log(top)) - (lo - lo * math.log(lo))
    return integral / (hi - lo) / math.log(16 / 9)


@pytest.mark.parametrize(("preset", "scale"), [("fitting", (0.70, 1.3)), ("pretraining", (0.95, 1.05))])
def test_crop_samples_area_and_aspect_with_centre_fallback(preset, scale):
    crop = build_augmentation(preset, (384, 512)).transform.transforms[-1]
    draws, fallbacks = 2000, 0
    torch.manual_seed(0)
    ours = [crop.get_params(torch.empty(384, 512), crop.scale, crop.ratio) for _ in range(draws)]
    torch.manual_seed(0)
    restated = [_restated_crop_box(384, 512, scale) for _ in range(draws)]
    assert [tuple(int(v) for v in box) for box in ours] == restated
    fallbacks = sum(box == (0, 0, 384, 512) for box in restated)
    expected = (1 - _fit_probability_of_one_attempt(*scale)) ** 10  # ~0.21 for fitting
    assert abs(fallbacks / draws - expected) < 4 * math.sqrt(expected * (1 - expected) / draws) + 0.01
    if preset == "fitting":
        assert 0.15 < expected < 0.26  # the "about 20% centre crops" of the original's fitting setting


def test_fitting_rotation_fills_with_the_value_one_using_nearest():
    rotation = build_augmentation("fitting", (H, W)).transform.transforms[2].transforms[0]
    assert isinstance(rotation, T.RandomRotation)
    assert rotation.interpolation == T.InterpolationMode.NEAREST and rotation.fill == 1
    image = _image()
    fill_draws = 0
    for seed in range(DRAWS):
        torch.manual_seed(seed)
        out = build_augmentation("fitting", (H, W))(image)
        near_black = (out <= 3).all(dim=0)  # fill 1, softened at the edges only by the crop's resize
        fill_draws += bool(near_black.any())
        assert not (out >= 250).all(dim=0).any(), "no white fill: the original filled with the value 1"
    assert fill_draws > DRAWS * 0.3  # p = 0.75 of a rotation, most of which leave filled corners in frame


def test_pretraining_never_rotates():
    image = _image()
    augment = build_augmentation("pretraining", (H, W))
    assert not any(isinstance(t, T.RandomApply) and isinstance(t.transforms[0], T.RandomRotation)
                   for t in augment.transform.transforms)
    for seed in range(DRAWS // 2):
        torch.manual_seed(seed)
        assert not (augment(image) <= 3).all(dim=0).any()


@pytest.mark.parametrize("preset", AUGMENTATION_PRESETS)
def test_presets_keep_size_dtype_and_are_seeded(preset):
    image = _image(384, 512)
    augment = build_augmentation(preset, (384, 512))
    torch.manual_seed(3)
    first = augment(image)
    torch.manual_seed(3)
    assert torch.equal(augment(image), first)
    assert first.shape == (3, 384, 512) and first.dtype == torch.uint8
    if preset == "none":
        assert torch.equal(first, image)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"unknown augmentation preset 'heavy'.*fitting.*pretraining.*none"):
        build_augmentation("heavy", (H, W))
    with pytest.raises(TypeError, match="uint8"):
        build_augmentation("fitting", (H, W))(torch.rand(3, H, W))
    with pytest.raises(ValueError, match=r"built for \(96, 128\)"):
        build_augmentation("fitting", (H, W))(_image(48, 64))
