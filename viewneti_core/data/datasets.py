"""Training datasets for the learnable modes (DESIGN 3.1, 3.2, 3.6).

Every item is a dict with `pixel_values` (3, H, W) in [-1, 1], its `caption`, the `object_token`
it teaches and, for view-conditioned modes, the raw `camera` vector (the view mapper normalises it
with the ranges stored in the mapper, so datasets never normalise).

Images are decoded and resized once and kept as uint8 (a 512x384 view is 0.6 MB), so `repeats`
costs nothing; augmentations run per item on the fly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from viewneti_core.data import dtu
from viewneti_core.data.augmentations import build_augmentation
from viewneti_core.data.cameras import CameraNormalization, camera_vector
from viewneti_core.data.captions import VIEW_CAPTION, view_caption
from viewneti_core.images import load_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# The 27 "small" ImageNet templates of textual inversion, used for mode-0 captions.
IMAGENET_SMALL_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
)


def load_resized(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """Decode an image as RGB and resize it (bicubic) to `size` = (W, H): uint8 (3, H, W).

    A truncated or corrupt file raises ImageDecodeError naming it."""
    return _resized(load_image(path, "RGB"), size)


def _resized(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


ASPECT_TOLERANCE = 0.01  # relative; DTU's 1600x1200 -> 512x384 is exact


def load_all_resized(paths: Sequence[Path], size: tuple[int, int], keys: str) -> list[torch.Tensor]:
    """`load_resized` for every path, with one warning when some images have another aspect ratio than
    `size` (they are stretched, not cropped, as the original did); `keys` names the size settings."""
    images, stretched = [], []
    for path in paths:
        image = load_image(path, "RGB")
        width, height = image.size
        if abs(width * size[1] - height * size[0]) > ASPECT_TOLERANCE * height * size[0]:
            stretched.append((path, width, height))
        images.append(_resized(image, size))
    if stretched:
        path, width, height = stretched[0]
        logger.warning(
            "%d of %d training image(s) are stretched to %dx%d (aspect %.2f) from another aspect ratio, e.g. %s "
            "(%dx%d, aspect %.2f): crop them to %.2f, or set %s to their shape", len(stretched), len(images),
            size[0], size[1], size[0] / size[1], path, width, height, width / height, size[0] / size[1], keys)
    return images


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float -> float in [-1, 1] (what the VAE encoder expects)."""
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    return image * 2.0 - 1.0


def dtu_camera_normalization(root: Path | str, representation: str = "dtu-12d") -> CameraNormalization:
    """Ranges over all 64 cameras of the calibration set, so every view and scene shares them."""
    cameras = dtu.load_cameras(root)
    return CameraNormalization.from_cameras(camera_vectors(cameras, representation).numpy(), representation)


def camera_vectors(matrices: np.ndarray, representation: str) -> torch.Tensor:
    """(N, 3, 4) projection matrices -> (N, dim) raw camera vectors of `representation`."""
    if representation == "spherical":
        from viewneti_core.data.camera_files import spherical_from_projection

        return torch.stack([camera_vector(spherical_from_projection(m), representation) for m in matrices])
    return torch.stack([camera_vector(m, representation) for m in matrices])


class ViewImagesDataset(torch.utils.data.Dataset):
    """Posed images of one or more scenes: the common core of the DTU and cameras.json datasets.

    `entries` are (image path, raw camera vector, object token); each appears `repeats` times.
    """

    def __init__(
        self,
        entries: Sequence[tuple[Path, torch.Tensor, str]],
        size: tuple[int, int],
        view_token: str,
        augmentation: str = "fitting",
        repeats: int = 1,
        caption: str = VIEW_CAPTION,
    ) -> None:
        if not entries:
            raise ValueError("the dataset has no images")
        self.size = tuple(size)
        self.view_token = view_token
        self.caption = caption
        self.repeats = int(repeats)
        self.paths = [Path(p) for p, _, _ in entries]
        self.cameras = torch.stack([c.to(torch.float32) for _, c, _ in entries])
        self.tokens = [t for _, _, t in entries]
        self.images = load_all_resized(self.paths, self.size, "data.width/data.height")
        self.augment = build_augmentation(augmentation, (self.size[1], self.size[0]))  # (H, W)

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def source_index(self, index: int) -> int:
        return index % len(self.paths)

    def __getitem__(self, index: int) -> dict:
        i = self.source_index(index)
        image = self.augment(self.images[i])  # uint8 in, uint8 out: the original augmented 8-bit PIL images
        return {
            "pixel_values": to_model_range(image),
            "caption": view_caption(self.view_token, self.tokens[i], self.caption),
            "object_token": self.tokens[i],
            "camera": self.cameras[i],
            "source_index": i,
        }


def _dtu_entries(root: Path, scan: int, views: Sequence[int], light: int, token: str,
                 cameras: torch.Tensor) -> list[tuple[Path, torch.Tensor, str]]:
    entries = []
    for cam in views:
        path = root / dtu.image_relpath(scan, cam, light)
        if not path.is_file():
            raise FileNotFoundError(
                f"DTU image {path} is missing (scan {scan}, view {cam}, light {light}); "
                f"prepare the scan with `viewneti data prepare --scans {scan} --out {root}`"
            )
        entries.append((path, cameras[cam], token))
    return entries


class DTUSceneDataset(ViewImagesDataset):
    """One DTU scene (modes 2, 4, 5): the chosen views at one light, resized to `size`."""

    def __init__(self, root: Path | str, scan: int, views: Sequence[int], light: int = dtu.DEFAULT_LIGHT,
                 size: tuple[int, int] = (512, 384), augmentation: str = "fitting", view_token: str = "<view>",
                 object_token: str = "<object>", repeats: int = 100, camera_representation: str = "dtu-12d",
                 caption: str = VIEW_CAPTION) -> None:
        root = Path(root)
        cameras = camera_vectors(dtu.load_cameras(root), camera_representation)
        super().__init__(_dtu_entries(root, scan, views, light, object_token, cameras),
                         size, view_token, augmentation, repeats, caption)
        self.scan = scan
        self.views = list(views)


class DTUMultiSceneDataset(ViewImagesDataset):
    """Many DTU scenes (mode 3), one object token per scene from `token_pattern`."""

    def __init__(self, root: Path | str, scans: Sequence[int], views: Sequence[int],
                 light: int = dtu.DEFAULT_LIGHT, size: tuple[int, int] = (512, 384),
                 augmentation: str = "pretraining", view_token: str = "<view>",
                 token_pattern: str = "<scan{scan}>", repeats: int = 100,
                 camera_representation: str = "dtu-12d", caption: str = VIEW_CAPTION) -> None:
        if not scans:
            raise ValueError("mode 3 needs at least one pretraining scan (data.dtu_pretrain_scans)")
        root = Path(root)
        cameras = camera_vectors(dtu.load_cameras(root), camera_representation)
        entries = []
        for scan in scans:
            entries += _dtu_entries(root, scan, views, light, token_pattern.format(scan=scan), cameras)
        super().__init__(entries, size, view_token, augmentation, repeats, caption)
        self.scans = list(scans)

    def indices_by_scene(self) -> dict[str, list[int]]:
        """Object token -> every dataset index (repeats included) of that scene."""
        groups: dict[str, list[int]] = {}
        for index in range(len(self)):
            groups.setdefault(self.tokens[self.source_index(index)], []).append(index)
        return groups


class SingleSceneBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Micro-batches that each hold images of one scene only, in a random order of scenes.

    Each scene's indices are shuffled and cut into batches; the batches of all scenes are then
    shuffled together, which picks a random scene per micro-batch (proportionally to its images)
    while still visiting every image once per epoch. A pure function of `seed`.
    """

    def __init__(self, dataset: DTUMultiSceneDataset, batch_size: int, seed: int = 0) -> None:
        self.groups = dataset.indices_by_scene()
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed)
        batches = []
        for token in sorted(self.groups):
            indices = list(self.groups[token])
            rng.shuffle(indices)
            batches += [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return sum(-(-len(v) // self.batch_size) for v in self.groups.values())


class ImageFolderDataset(torch.utils.data.Dataset):
    """Mode 0: any folder of .png/.jpg images, resized square, horizontal flip with p=0.5."""

    def __init__(self, root: Path | str, size: int = 512, placeholder_token: str = "<object>",
                 repeats: int = 100) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ValueError(
                f"{root} has no usable images: mode 0 trains on the .png/.jpg files directly inside "
                "data.train_data_dir (sub-folders are not searched)"
            )
        self.paths = paths
        self.images = load_all_resized(paths, (size, size), "data.resolution")  # errors name the file
        self.placeholder_token = placeholder_token
        self.repeats = int(repeats)

    def __len__(self) -> int:
        return len(self.paths) * self.repeats

    def __getitem__(self, index: int) -> dict:
        i = index % len(self.paths)
        image = self.images[i].float() / 255.0
        if torch.rand(()) < 0.5:
            image = TF.horizontal_flip(image)
        template = IMAGENET_SMALL_TEMPLATES[int(torch.randint(len(IMAGENET_SMALL_TEMPLATES), ()))]
        return {
            "pixel_values": to_model_range(image),
            "caption": template.format(self.placeholder_token),
            "object_token": self.placeholder_token,
            "source_index": i,
        }


def camera_vectors_of(cameras: np.ndarray, representation: str) -> torch.Tensor:
    """Raw camera vectors from (N, 3, 4) projections, or from (N, 3) spherical rows as they are."""
    cameras = np.asarray(cameras)
    if cameras.ndim == 3:
        return camera_vectors(cameras, representation)
    return torch.stack([camera_vector(c, representation) for c in cameras])
