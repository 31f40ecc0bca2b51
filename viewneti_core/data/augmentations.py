"""Training augmentations of DTU images (DESIGN 3.6): the original's torchvision pipelines, exactly.

The original applied `torchvision.transforms` (v1) to the 8-bit PIL image after resizing it to the
training size, and so do we, with the same transforms, parameters and order:

- "fitting" (modes 2/4/5; the original's augmentation key 7): ColorJitter(0.04, 0.04, 0.04, 0.04)
  p=0.75, GaussianBlur(5, (0.1, 0.2)) p=0.2, RandomRotation(10, fill=1) p=0.75, RandomResizedCrop(size,
  scale=(0.70, 1.3)).
- "pretraining" (mode 3; key 5): ColorJitter p=0.75, GaussianBlur p=0.25, RandomResizedCrop(size,
  scale=(0.95, 1.05)).
- "none": the image unchanged.

Two consequences that look like bugs but are the original's behaviour, kept on purpose: the rotation
uses nearest interpolation and fills with the 8-bit value 1 (near black, not white: `fill=1` on a
uint8 image), and RandomResizedCrop samples an *area* fraction and an aspect ratio in (3/4, 4/3), so a
scale above 1 can never fit; after 10 failed attempts it falls back to a centre crop of the whole
(4:3) image, which happens in about 20% of the fitting draws.

Every random draw uses torch's global RNG, so `torch.manual_seed` makes a run reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

AUGMENTATION_PRESETS = ("fitting", "pretraining", "none")
JITTER = 0.04  # brightness, contrast, saturation and hue strength
ROTATION_FILL = 1  # the original's fill=1: the 8-bit value 1 in every channel


def _compose(preset: str, size: tuple[int, int]) -> T.Compose | None:
    """The original's pipeline for `preset` at `size` = (H, W); None for "none"."""
    jitter = T.RandomApply([T.ColorJitter(JITTER, JITTER, JITTER, JITTER)], p=0.75)
    if preset == "fitting":
        return T.Compose([
            jitter,
            T.RandomApply([T.GaussianBlur(5, (0.1, 0.2))], p=0.2),
            T.RandomApply([T.RandomRotation(degrees=10, fill=ROTATION_FILL)], p=0.75),
            T.RandomResizedCrop(size, scale=(0.70, 1.3)),
        ])
    if preset == "pretraining":
        return T.Compose([
            jitter,
            T.RandomApply([T.GaussianBlur(5, (0.1, 0.2))], p=0.25),
            T.RandomResizedCrop(size, scale=(0.95, 1.05)),
        ])
    if preset == "none":
        return None
    raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {list(AUGMENTATION_PRESETS)}")


class Augmentation:
    """uint8 (3, H, W) tensor -> augmented uint8 (3, H, W) tensor, through PIL as the original did."""

    def __init__(self, preset: str, size: tuple[int, int]) -> None:
        self.preset = preset
        self.size = (int(size[0]), int(size[1]))  # (H, W)
        self.transform = _compose(preset, self.size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise TypeError(f"augmentations take uint8 (3, H, W) images, got {image.dtype} {tuple(image.shape)}")
        if self.transform is None:
            return image
        if tuple(image.shape[1:]) != self.size:
            raise ValueError(f"image is {tuple(image.shape[1:])} (H, W) but the augmentation was built for {self.size}")
        out = self.transform(Image.fromarray(image.permute(1, 2, 0).numpy()))
        return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).contiguous()


def build_augmentation(preset: str, size: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The augmentation of a preset ("fitting", "pretraining" or "none") for images of `size` = (H, W)."""
    return Augmentation(preset, size)
