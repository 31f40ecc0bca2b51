"""Training augmentations of DTU images (DESIGN 3.6), as torchvision.transforms.v2 pipelines.

Every random draw uses torch's global RNG, so `torch.manual_seed` makes a run reproducible.
Geometric ops keep the image size (512x384 for DTU): the view token must keep describing the
same camera, so augmentations only jitter it a little (small rotation and zoom), never reframe it.
Presets act on float (3, H, W) tensors in [0, 1] and return the same shape and range.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

AUGMENTATION_PRESETS = ("fitting", "pretraining", "none")
WHITE = 1.0  # fill for pixels that rotation or zooming out bring into the frame


class RandomZoom(torch.nn.Module):
    """Random resized crop at the image's own aspect ratio that may also zoom *out*.

    A side scale s ~ U(lo, hi) picks a window of s*W x s*H at a random position: s < 1 crops
    inside the image (zoom in), s > 1 pads the image with white to the window (zoom out). The
    window is resized back to W x H, so the output size never changes.
    """

    def __init__(self, scale: tuple[float, float]) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"zoom scale must satisfy 0 < lo <= hi, got {scale}")
        self.scale = scale

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(()).item()
        win_w, win_h = max(1, round(width * s)), max(1, round(height * s))
        # Offset of the window's top-left corner in image coordinates (negative when zooming out).
        u, v = torch.rand(2).tolist()
        left = round(u * (width - win_w)) if win_w <= width else -round(u * (win_w - width))
        top = round(v * (height - win_h)) if win_h <= height else -round(v * (win_h - height))
        pad = [max(0, -left), max(0, -top), max(0, left + win_w - width), max(0, top + win_h - height)]
        if any(pad):
            image = TF.pad(image, pad, fill=WHITE)
            left, top = left + pad[0], top + pad[1]
        return TF.resized_crop(image, top, left, win_h, win_w, [height, width],
                               interpolation=v2.InterpolationMode.BICUBIC, antialias=True).clamp(0.0, 1.0)


def build_augmentation(preset: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The augmentation pipeline of a preset: "fitting" (modes 2/4/5), "pretraining" (mode 3) or "none"."""
    jitter = v2.RandomApply([v2.ColorJitter(brightness=0.04, contrast=0.04, saturation=0.04, hue=0.04)], p=0.75)
    if preset == "fitting":
        return v2.Compose([
            jitter,
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 0.2))], p=0.2),
            v2.RandomApply([v2.RandomRotation(degrees=10, interpolation=v2.InterpolationMode.BILINEAR,
                                              fill=WHITE)], p=0.75),
            RandomZoom(scale=(0.7, 1.3)),
        ])
    if preset == "pretraining":
        return v2.Compose([
            jitter,
            v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 0.2))], p=0.25),
            RandomZoom(scale=(0.95, 1.05)),
        ])
    if preset == "none":
        return v2.Identity()
    raise ValueError(f"unknown augmentation preset {preset!r}; expected one of {list(AUGMENTATION_PRESETS)}")
