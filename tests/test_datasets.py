"""DTU splits, camera normalisation, datasets and micro-batches of every learnable mode."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_core.base_model.sd_models import build_byte_level_tokenizer
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.cameras import CameraNormalization
from viewneti_core.data.datasets import (
    IMAGENET_SMALL_TEMPLATES,
    DTUMultiSceneDataset,
    DTUSceneDataset,
    ImageFolderDataset,
    SingleSceneBatchSampler,
    dtu_camera_normalization,
)
from viewneti_core.method.conditioning import add_placeholder_tokens, tokenize
from viewneti_core.training.batches import build_training_data

# ---- splits and subsets ------------------------------------------------------------------------


def test_view_splits_partition_the_49_views():
    train, excluded, test = set(dtu.TRAIN_VIEWS), set(dtu.EXCLUDED_VIEWS), set(dtu.TEST_VIEWS)
    assert dtu.TRAIN_VIEWS == (25, 22, 28, 40, 44, 48, 0, 8, 13)
    assert not (train & excluded or train & test or excluded & test)
    assert train | excluded | test == set(range(49))
    assert len(test) == 25 and list(dtu.EVAL_VIEWS) == list(dtu.TRAIN_VIEWS) + sorted(test)
    assert [dtu.view_role(c) for c in (25, 3, 1)] == ["train", "excluded", "test"]


def test_subset_keys():
    assert dtu.subset_views(0) == dtu.EVAL_VIEWS
    assert dtu.subset_views(1) == (25,) and dtu.subset_views(3) == (25, 22, 28)
    assert dtu.subset_views(9) == dtu.TRAIN_VIEWS
    assert dtu.subset_views(-1) == tuple(range(12, 36))
    assert dtu.subset_views(-2) == tuple(range(12, 36, 2)) and dtu.subset_views(-3) == tuple(range(12, 36, 3))
    with pytest.raises(ValueError, match="valid keys"):
        dtu.subset_views(2)


def test_scan_sets():
    assert len(dtu.PRETRAIN_SCANS) == 88
    assert not set(dtu.PRETRAIN_SCANS) & (set(dtu.TEST_SCANS) | set(dtu.EXCLUDED_PRETRAIN_SCANS))
    assert not set(dtu.PRETRAIN_SCANS) & {78, 79, 80, 81}  # not in the DTU release


# ---- cameras -----------------------------------------------------------------------------------


def test_camera_normalisation_ranges_cover_all_64_cameras(synthetic_dtu_root):
    cameras = dtu.load_cameras(synthetic_dtu_root)
    assert cameras.shape == (64, 3, 4) and np.isfinite(cameras).all()
    norm = dtu_camera_normalization(synthetic_dtu_root)
    flat = cameras.reshape(64, 12)
    np.testing.assert_allclose(norm.minimum, flat.min(axis=0))
    np.testing.assert_allclose(norm.maximum, flat.max(axis=0))
    views_only = CameraNormalization.from_cameras(flat[:49], "dtu-12d")
    assert views_only != norm, "the 15 extra calibration cameras must widen some range"
    spherical = dtu_camera_normalization(synthetic_dtu_root, "spherical")
    assert spherical.dim == 3 and all(lo < hi for lo, hi in zip(spherical.minimum, spherical.maximum, strict=True))


# ---- datasets ----------------------------------------------------------------------------------


def test_dtu_scene_dataset_items(synthetic_dtu_root):
    ds = DTUSceneDataset(synthetic_dtu_root, 114, views=(25, 22, 28), light=3, size=(32, 24), augmentation="none",
                         repeats=4)
    assert len(ds) == 12
    item = ds[5]  # repeats cycle over the 3 views: index 5 is view 28
    assert item["caption"] == "<view>. A photo of a <object>" and item["object_token"] == "<object>"
    assert item["pixel_values"].shape == (3, 24, 32)
    assert -1.0 <= item["pixel_values"].min() and item["pixel_values"].max() <= 1.0
    cameras = dtu.load_cameras(synthetic_dtu_root)
    torch.testing.assert_close(item["camera"], torch.tensor(cameras[28].reshape(12), dtype=torch.float32))
    # DTU preprocessing: a bicubic resize of the light-3 image, nothing else when augmentation is off.
    with Image.open(synthetic_dtu_root / dtu.image_relpath(114, 28, 3)) as image:
        expected = np.asarray(image.convert("RGB").resize((32, 24), Image.Resampling.BICUBIC), dtype=np.float32)
    np.testing.assert_allclose((item["pixel_values"].permute(1, 2, 0).numpy() + 1) / 2 * 255, expected, atol=1e-3)


@pytest.mark.parametrize("mode", [2, 3])
def test_the_configured_caption_reaches_every_item(mode, synthetic_dtu_root):
    """data.view_caption decides the caption of modes 2-5 (one scene or many), placeholders filled in."""
    data = build_training_data(_config(synthetic_dtu_root, mode, view_caption="{object}; {view}"))
    token = data.object_tokens[0]
    items = [data.dataset[i] for i in range(len(data.dataset))]
    assert {item["caption"] for item in items if item["object_token"] == token} == {f"{token}; <view>"}


def test_light_selection_changes_the_images(synthetic_dtu_root):
    dark = DTUSceneDataset(synthetic_dtu_root, 114, views=(25,), light=0, size=(32, 24), augmentation="none",
                           repeats=1)[0]
    lit = DTUSceneDataset(synthetic_dtu_root, 114, views=(25,), light=3, size=(32, 24), augmentation="none",
                          repeats=1)[0]
    assert not torch.allclose(dark["pixel_values"], lit["pixel_values"])
    torch.testing.assert_close(dark["camera"], lit["camera"])


def test_augmented_items_keep_size_and_change_pixels(synthetic_dtu_root):
    ds = DTUSceneDataset(synthetic_dtu_root, 114, views=(25,), size=(32, 24), augmentation="fitting", repeats=8)
    torch.manual_seed(0)
    items = [ds[i]["pixel_values"] for i in range(8)]
    assert all(x.shape == (3, 24, 32) for x in items)
    assert len({round(float(x.sum()), 3) for x in items}) > 1


def test_token_positions_in_the_captions():
    tokenizer = build_byte_level_tokenizer()
    view_id, object_id = add_placeholder_tokens(tokenizer, ["<view>", "<object>"])
    ids = tokenize(tokenizer, ["<view>. A photo of a <object>"])[0]
    assert ids.shape == (77,)
    assert ids[0] == tokenizer.bos_token_id and ids[1] == view_id  # the view token opens the caption
    object_pos = (ids == object_id).nonzero().flatten().tolist()
    assert len(object_pos) == 1 and ids[object_pos[0] + 1] == tokenizer.eos_token_id  # and the object ends it
    assert (ids == view_id).sum() == 1


def test_mode_0_image_folder(synthetic_dtu_root, tmp_path):
    for cam in (0, 25):
        shutil.copy(synthetic_dtu_root / dtu.image_relpath(114, cam, 3), tmp_path / f"{cam}.png")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "red.JPG")
    (tmp_path / "skip.txt").write_text("x")
    ds = ImageFolderDataset(tmp_path, size=16, placeholder_token="<thing>", repeats=50)
    assert len(ds) == 150
    torch.manual_seed(0)
    items = [ds[i] for i in range(0, 150, 3)]  # always the first image (sorted: 0.png)
    assert all("<thing>" in it["caption"] and it["caption"] in {t.format("<thing>") for t in IMAGENET_SMALL_TEMPLATES}
               for it in items)
    assert len({it["caption"] for it in items}) > 5
    assert all(it["pixel_values"].shape == (3, 16, 16) and "camera" not in it for it in items)
    flipped = {bool(torch.equal(it["pixel_values"], items[0]["pixel_values"].flip(-1))) for it in items}
    assert flipped == {True, False}  # horizontal flip with p = 0.5
    with pytest.raises(ValueError, match="no usable images"):
        ImageFolderDataset(_empty_folder(tmp_path), size=16)


def _empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no images")
    return empty


def test_mode_3_micro_batches_come_from_one_scene(synthetic_dtu_root):
    ds = DTUMultiSceneDataset(synthetic_dtu_root, [2, 21, 114], views=(25, 22, 28, 40), size=(16, 12),
                              augmentation="none", repeats=2)
    assert len(ds) == 24
    sampler = SingleSceneBatchSampler(ds, batch_size=3, seed=7)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 9  # 8 images per scene -> 3 batches of (3, 3, 2)
    assert sorted(i for b in batches for i in b) == list(range(24))  # every item once per epoch
    for batch in batches:
        assert len({ds[i]["object_token"] for i in batch}) == 1
    assert {ds[b[0]]["object_token"] for b in batches} == {"<scan2>", "<scan21>", "<scan114>"}
    assert batches == list(SingleSceneBatchSampler(ds, 3, seed=7))  # deterministic per seed
    assert batches != list(SingleSceneBatchSampler(ds, 3, seed=8))
    order = [ds[b[0]]["object_token"] for b in batches]
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches > 2, order  # scenes are interleaved, not visited one after the other


def _config(root, mode, **data):
    return ViewNetiConfig.model_validate({
        "learnable_mode": mode,
        "data": {"train_data_dir": str(root), "width": 32, "height": 24, "resolution": 16,
                 "dtu_pretrain_scans": [2, 21], "repeats": 2, **data},
        "optim": {"train_batch_size": 2},
    })


@pytest.mark.parametrize(("mode", "tokens", "n_items"), [
    (2, ["<object>"], 6), (5, ["<object>"], 6), (3, ["<scan2>", "<scan21>"], 12),
])
def test_training_data_per_mode(mode, tokens, n_items, synthetic_dtu_root):
    data = build_training_data(_config(synthetic_dtu_root, mode, dtu_subset=3))
    assert data.object_tokens == tokens and len(data.dataset) == n_items
    assert data.camera_normalization == dtu_camera_normalization(synthetic_dtu_root)
    batches = data.batches(0)
    assert sorted(i for b in batches for i in b) == list(range(n_items))
    assert data.batches(0) == batches and data.batches(1) != batches  # a pure function of (seed, epoch)
    views = data.validation_views([25, 22])
    assert [v for v, _, _ in views] == [25, 22] and views[0][1].shape == (12,)


def test_cameras_json_folder_trains_like_a_dtu_scene(synthetic_dtu_root, tmp_path):
    cameras = dtu.load_cameras(synthetic_dtu_root)
    entries = []
    for cam in (25, 22, 28):
        name = f"view{cam}.png"
        shutil.copy(synthetic_dtu_root / dtu.image_relpath(114, cam, 3), tmp_path / name)
        entries.append({"file": name, "projection": cameras[cam].tolist()})
    (tmp_path / "cameras.json").write_text(json.dumps({"images": entries}))
    data = build_training_data(_config(tmp_path, 5))
    assert len(data.dataset) == 6 and data.object_tokens == ["<object>"]
    item = data.dataset[1]
    torch.testing.assert_close(item["camera"], torch.tensor(cameras[22].reshape(12), dtype=torch.float32))
    assert item["caption"] == "<view>. A photo of a <object>"
    with pytest.raises(ValueError, match="mode 3"):
        build_training_data(_config(tmp_path, 3))


def test_missing_scan_names_the_fix(synthetic_dtu_root):
    with pytest.raises(FileNotFoundError, match="viewneti data prepare --scans 8"):
        DTUSceneDataset(synthetic_dtu_root, 8, views=(25,))


def test_a_broken_image_is_named_wherever_images_are_loaded(synthetic_dtu_root, tmp_path):
    """Datasets, evaluation ground truth and masks: a truncated PNG raises an error naming its file."""
    from viewneti_core.evaluation.metrics import load_ground_truth, load_mask
    from viewneti_core.images import ImageDecodeError
    from viewneti_core.inference import dtu_ground_truth

    root = tmp_path / "dtu"
    shutil.copytree(synthetic_dtu_root / "Calibration", root / "Calibration")
    rel = dtu.image_relpath(114, 28, 3)
    broken = root / rel
    broken.parent.mkdir(parents=True)
    data = (synthetic_dtu_root / rel).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    named = re.escape(str(broken))
    with pytest.raises(ImageDecodeError, match=named):
        DTUSceneDataset(root, 114, views=(28,), size=(32, 24), repeats=1)
    with pytest.raises(ImageDecodeError, match=named):
        dtu_ground_truth(root, 114, [28], 3)
    with pytest.raises(ImageDecodeError, match=named):
        load_ground_truth(broken)
    with pytest.raises(ImageDecodeError, match=named):
        load_mask(broken)

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(data[:200])
    with pytest.raises(ImageDecodeError, match=re.escape(str(folder / "a.png"))):
        ImageFolderDataset(folder, size=16, repeats=1)
