"""The data side of training: which dataset each learnable mode uses, and its micro-batch order.

The micro-batch order of an epoch is a pure function of (seed, epoch), so a resumed run can skip
exactly the micro-batches the interrupted run had consumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.cameras import CameraNormalization

CAMERA_FILE = "cameras.json"  # a bring-your-own capture folder instead of a DTU tree (docs/cameras_json.md)


@dataclass
class TrainingData:
    dataset: torch.utils.data.Dataset
    object_tokens: list[str]
    camera_normalization: CameraNormalization | None
    batches: Callable[[int], list[list[int]]]  # epoch -> micro-batches (lists of dataset indices)
    validation_views: Callable[[list[int]], list[tuple[int, torch.Tensor, Image.Image]]]  # (view, camera vector, GT)


def collate(items: list[dict]) -> dict:
    batch = {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "caption": [item["caption"] for item in items],
        "object_token": [item["object_token"] for item in items],
        "source_index": torch.tensor([item["source_index"] for item in items]),
        "item_seed": torch.tensor([item["item_seed"] for item in items], dtype=torch.int64),
    }
    cameras = [item.get("camera") for item in items]
    if any(c is not None for c in cameras):
        if any(c is None for c in cameras):
            raise ValueError("a micro-batch mixes items with and without cameras")
        batch["camera"] = torch.stack(cameras)
    return batch


class SeededItems(torch.utils.data.Dataset):
    """`dataset[index]` under its own RNG seed: items are `(index, seed)` pairs.

    The augmentations draw from torch's global RNG. Seeding each item from (run seed, epoch, position)
    makes what an item gets independent of who computes it: the main process or any DataLoader worker
    process, a straight run or one resumed mid-epoch all augment every item identically. The seed rides
    along as `item_seed`: the loss draws the item's noise and timestep from it (`training_draws`)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return {**self.dataset[index], "item_seed": seed}


def seeded_batches(batches: list[list[int]], seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The epoch's micro-batches with a seed for every item (its augmentation and noise, see `SeededItems`)."""
    base = (seed * 1_000_003 + epoch) * 1_000_003
    return [[(index, base + position * 1_009 + slot) for slot, index in enumerate(batch)]
            for position, batch in enumerate(batches)]


def shuffled_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n_items, batch_size)]


def build_training_data(config: ViewNetiConfig) -> TrainingData:
    """Dataset, tokens and camera normalisation for `config.learnable_mode`; raises on unusable data."""
    from viewneti_core.data import datasets

    data, optim = config.data, config.optim
    root = Path(data.train_data_dir)
    seed = optim.seed or 0
    size = (data.width, data.height)

    if config.learnable_mode == 0:
        dataset = datasets.ImageFolderDataset(
            root, size=data.resolution, placeholder_token=data.placeholder_object_token, repeats=data.repeats
        )
        return TrainingData(
            dataset, [data.placeholder_object_token], None,
            lambda epoch: shuffled_batches(len(dataset), optim.train_batch_size, seed, epoch),
            lambda views: [],
        )

    representation = data.camera_representation
    if (root / CAMERA_FILE).is_file():
        return _camera_folder_data(config, root, seed)
    normalization = datasets.dtu_camera_normalization(root, representation)
    cameras = datasets.camera_vectors(dtu.load_cameras(root), representation)  # raw mapper inputs

    def validation_views(views: list[int], scan: int) -> list[tuple[int, torch.Tensor, Image.Image]]:
        return [(cam, cameras[cam], Image.open(root / dtu.image_relpath(scan, cam, data.dtu_lighting))) for cam in views]

    if config.learnable_mode == 3:
        scans = list(data.dtu_pretrain_scans)
        tokens = [data.scan_token_pattern.format(scan=s) for s in scans]
        dataset = datasets.DTUMultiSceneDataset(
            root, scans, views=dtu.subset_views(data.dtu_subset), light=data.dtu_lighting, size=size,
            augmentation=data.augmentation, view_token=data.placeholder_view_token,
            token_pattern=data.scan_token_pattern, repeats=data.repeats, camera_representation=representation,
            caption=data.view_caption,
        )

        def scene_batches(epoch: int) -> list[list[int]]:
            sampler = datasets.SingleSceneBatchSampler(dataset, optim.train_batch_size, seed=seed * 100_003 + epoch)
            return [list(b) for b in sampler]

        return TrainingData(dataset, tokens, normalization, scene_batches, lambda v: validation_views(v, scans[0]))

    dataset = datasets.DTUSceneDataset(
        root, data.dtu_scan, views=dtu.subset_views(data.dtu_subset), light=data.dtu_lighting, size=size,
        augmentation=data.augmentation, view_token=data.placeholder_view_token,
        object_token=data.placeholder_object_token, repeats=data.repeats, camera_representation=representation,
        caption=data.view_caption,
    )
    return TrainingData(
        dataset, [data.placeholder_object_token], normalization,
        lambda epoch: shuffled_batches(len(dataset), optim.train_batch_size, seed, epoch),
        lambda v: validation_views(v, data.dtu_scan),
    )


def _camera_folder_data(config: ViewNetiConfig, root: Path, seed: int) -> TrainingData:
    """Modes 2/4/5 on a folder of posed images described by cameras.json."""
    from viewneti_core.data import datasets
    from viewneti_core.data.camera_files import load_camera_folder

    data, optim = config.data, config.optim
    if config.learnable_mode == 3:
        raise ValueError(f"mode 3 pretrains on DTU scenes; {root} is a cameras.json capture folder")
    folder = load_camera_folder(root, data.camera_representation)
    if config.learnable_mode == 2 and not folder.normalization.has_range:
        raise ValueError(
            f"{root / CAMERA_FILE}: mode 2 trains a new view mapper, normalised over the cameras listed there, "
            f"and all {len(folder.image_paths)} image(s) (plus any normalization_cameras) have the same camera, so "
            "every camera would map to the zero vector: list images from different cameras, add "
            "'normalization_cameras' (docs/cameras_json.md), or fit with a pretrained view mapper (mode 5)")
    vectors = datasets.camera_vectors_of(folder.cameras, data.camera_representation)
    entries = [(path, vectors[i], data.placeholder_object_token) for i, path in enumerate(folder.image_paths)]
    dataset = datasets.ViewImagesDataset(entries, (data.width, data.height), data.placeholder_view_token,
                                         data.augmentation, data.repeats, data.view_caption)

    def validation_views(views: list[int]) -> list[tuple[int, torch.Tensor, Image.Image]]:
        views = [v for v in views if v < len(folder.image_paths)] or [0]
        return [(v, vectors[v], Image.open(folder.image_paths[v])) for v in views]

    return TrainingData(
        dataset, [data.placeholder_object_token], folder.normalization,
        lambda epoch: shuffled_batches(len(dataset), optim.train_batch_size, seed, epoch),
        validation_views,
    )
