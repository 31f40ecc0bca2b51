"""Measure ViewNeTI in the mini world: fit held-out scans from 1 or 3 views, render their test views
over seeds, score them with the DTU protocol, next to the ablations and baselines the paper compares.

Variants (all scored by `evaluation.evaluate_predictions`, the code that scores real DTU runs):
- `viewneti`: mode 5, the world's pretrained view mapper (frozen), a new object token;
- `untrained-view-mapper`: the same with a frozen view mapper that never trained;
- `mode2`: view mapper and object token learned from the input views alone (no pretraining);
- `nearest-view`: the input view whose camera centre is nearest, copied;
- `mean-image`: the mean of the input views.
Metrics are compared at the world's own 48x64 (the protocol's 300x400 would only upsample).

Next to the DTU protocol's masked PSNR, every row also gets the whole-image PSNR of its render
against its own camera's ground truth (`psnr_image`) and against the ground truth of the test view
in the mirrored position of the test-view list (`psnr_image_reversed`): their gap says whether the
camera decides what is drawn (view control), which the masked score of an object region the model
draws wrongly hides. The masked score is also split over the object mask's one-pixel edge band
(`psnr_edge`: is the silhouette where the camera sees it) and its interior (`psnr_interior`: are the
surfaces drawn right), which a copy of a neighbouring view and a render lose in different places.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from viewneti_core.atomic_files import temp_file_beside
from viewneti_core.config import DataConfig, ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.captions import VIEW_CAPTION
from viewneti_core.data.synthetic import make_synthetic_dtu
from viewneti_core.evaluation.metrics import load_mask, mse_to_psnr
from viewneti_core.evaluation.scoring import evaluate_predictions
from viewneti_core.images import load_image
from viewneti_core.inference import read_predictions, run_inference, write_predictions
from viewneti_core.mini_world import world as mini_world

logger = logging.getLogger(__name__)

MODEL = "builtin:mini-world"
VIEW_MAPPER = "mini-world"
EVAL_SIZE = (mini_world.SIZE[1], mini_world.SIZE[0])  # (H, W)
LEARNED = ("viewneti", "untrained-view-mapper", "mode2")
BASELINES = ("nearest-view", "mean-image")
VARIANTS = LEARNED + BASELINES
REGION_METRICS = ("psnr_edge", "psnr_interior")  # masked PSNR over the mask's edge band and interior
AUGMENTATIONS = get_args(DataConfig.model_fields["augmentation"].annotation)  # the config's choices


@dataclass
class FitSettings:
    steps: int = 200
    seeds: tuple[int, ...] = (0, 1)
    denoising_steps: int = 20
    guidance_scale: float = 3.0
    batch_size: int = 4
    learning_rate: float = 5e-3
    # Not the original's "fitting" pipeline: at 64x48 its crops (area 0.7-1.3) and turns (up to 10 degrees)
    # move the object by several pixels, and the token learns a blur of places. Measured in
    # docs/mini_world.md, "Fit settings": without them the 3-view fits gain 1.8 dB on the whole image.
    augmentation: str = "none"
    # Mode 2 learns its view mapper from the input views alone (the original trains it 3,000 steps on
    # one scene); None: the same steps as the other fits. A lever for the 9-view interpolation bar.
    mode2_steps: int | None = None
    # The fits' caption (data.view_caption). The world's base model never read "A photo of a"; mode-2 fits
    # without it measured no better (docs/mini_world.md, "What holds mode 2 back from 9 views").
    view_caption: str = VIEW_CAPTION

    def steps_for(self, variant: str) -> int:
        return self.mode2_steps if variant == "mode2" and self.mode2_steps is not None else self.steps


def ensure_world_tree(root: Path, scans: list[int]) -> Path:
    """The mini world's DTU tree (64x48, world seed 0, light 3) holding `scans`."""
    missing = [s for s in scans if not (root / dtu.image_relpath(s, dtu.NUM_VIEWS - 1)).is_file()]
    if missing:
        have = sorted(int(p.name.removeprefix("scan")) for p in (root / "Rectified").glob("scan*")) if root.is_dir() else []
        make_synthetic_dtu(root, sorted(set(have) | set(scans)), size=mini_world.SIZE, seed=mini_world.WORLD_SEED,
                           lights=[dtu.DEFAULT_LIGHT], progress=False, overwrite=True, scene_of=mini_world.scene)
    return root


def fit_config(variant: str, scan: int, n_views: int, root: Path, runs: Path, settings: FitSettings,
               view_mapper: str = VIEW_MAPPER, model: str = MODEL) -> ViewNetiConfig:
    width, height = mini_world.SIZE
    mode = 2 if variant == "mode2" else 5
    steps = settings.steps_for(variant)
    return ViewNetiConfig.model_validate({
        "learnable_mode": mode,
        "run": {"device": "cpu", "dtype": "float32"},
        "log": {"exp_dir": str(runs), "exp_name": f"{variant}-scan{scan}-{n_views}view", "report_to": "none",
                "save_steps": steps, "overwrite_ok": True},
        "data": {"train_data_dir": str(root), "dtu_scan": scan, "dtu_subset": n_views, "width": width,
                 "height": height, "resolution": width, "augmentation": settings.augmentation,
                 "view_caption": settings.view_caption},
        "model": {"pretrained_model_name_or_path": model} | ({"pretrained_view_mapper": view_mapper} if mode == 5 else {}),
        "eval": {"width": width, "height": height, "validation_steps": 10**9, "final_validation": False,
                 "seeds": list(settings.seeds), "num_denoising_steps": settings.denoising_steps,
                 "guidance_scale": settings.guidance_scale, "eval_batch_size": 16},
        "optim": {"max_train_steps": steps, "train_batch_size": settings.batch_size,
                  "gradient_accumulation_steps": 1, "learning_rate": settings.learning_rate, "scale_lr": False,
                  "mixed_precision": "no", "seed": 0},
    })


def untrained_view_mapper(root: Path, runs: Path, model: str = MODEL) -> Path:
    """A view mapper that never learned (one mode-3 step at a vanishing learning rate), so mode 5 can
    freeze it exactly as it freezes the pretrained one: the ablation of pretraining."""
    from viewneti_core.training.trainer import train

    run = runs / "untrained-view-mapper"
    if (run / "checkpoints").is_dir():
        return run
    width, height = mini_world.SIZE
    config = ViewNetiConfig.model_validate({
        "learnable_mode": 3, "run": {"device": "cpu", "dtype": "float32"},
        "log": {"exp_dir": str(runs), "exp_name": "untrained-view-mapper", "report_to": "none", "overwrite_ok": True},
        "data": {"train_data_dir": str(root), "dtu_pretrain_scans": [3], "dtu_subset": 0, "width": width,
                 "height": height, "resolution": width, "augmentation": "none"},
        "model": {"pretrained_model_name_or_path": model},
        "eval": {"width": width, "height": height, "final_validation": False, "validation_steps": 10**9},
        "optim": {"max_train_steps": 1, "learning_rate": 1e-12, "scale_lr": False, "train_batch_size": 1,
                  "gradient_accumulation_steps": 1, "mixed_precision": "no", "seed": 0},
    })
    train(config, progress=False)
    return run


def baseline_predictions(variant: str, root: Path, scan: int, n_views: int, seeds: tuple[int, ...], out: Path) -> Path:
    """Predictions of a non-learned baseline, in the format `evaluate_predictions` reads."""
    train_cams = list(dtu.train_views(n_views))
    cameras = dtu.load_cameras(root)
    centres = {cam: -np.linalg.solve(cameras[cam][:, :3], cameras[cam][:, 3]) for cam in range(dtu.NUM_VIEWS)}
    inputs = {cam: torch.from_numpy(np.array(load_image(root / dtu.image_relpath(scan, cam), "RGB"))).permute(2, 0, 1).float() / 255
              for cam in train_cams}
    mean = torch.stack(list(inputs.values())).mean(0)
    images = {}
    for cam in dtu.TEST_VIEWS:
        if variant == "nearest-view":
            nearest = min(train_cams, key=lambda c: float(np.linalg.norm(centres[c] - centres[cam])))
            image = inputs[nearest]
        else:
            image = mean
        images.update({(seed, cam): image for seed in seeds})
    meta = prediction_meta(root, scan, n_views, seeds, run_dir=variant, learnable_mode=-1, object_token=variant,
                            base_model="none", weights="baseline")
    return write_predictions(out, images, meta)


def prediction_meta(root: Path, scan: int, n_views: int, seeds: tuple[int, ...], **made_by) -> dict:
    """The predictions index of a mini-world scan's test views; `made_by` says what drew them."""
    return {"step": 0, "scan": scan, "n_views": n_views, "train_cams": list(dtu.train_views(n_views)),
            "seeds": list(seeds), "cams": list(dtu.TEST_VIEWS), "light": dtu.DEFAULT_LIGHT, "data_root": str(root),
            "size": list(mini_world.SIZE)} | made_by


def mask_edge_and_interior(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bool (H, W) object mask split in two: its edge band (mask pixels with a non-mask pixel among
    their 8 neighbours; the image border counts as inside) and its interior (the rest)."""
    eroded = -F.max_pool2d(-mask.float()[None, None], 3, stride=1, padding=1)[0, 0] > 0
    return mask & ~eroded, eroded


def view_control_columns(frame: pd.DataFrame, pred_dir: Path, root: Path, scan: int) -> pd.DataFrame:
    """Add `psnr_image` (whole image vs its own camera's truth) and `psnr_image_reversed` (vs the
    truth of the test view mirrored in the test-view list), and where the scan has masks the masked PSNR
    over their edge band and interior (`psnr_edge`, `psnr_interior`), to the rows of `frame` (one per seed, cam)."""
    _, images = read_predictions(pred_dir)
    cams = sorted({cam for _, cam in images})
    mirrored = dict(zip(cams, cams[::-1], strict=True))
    truths = {cam: torch.from_numpy(np.array(load_image(root / dtu.image_relpath(scan, cam), "RGB")))
              .permute(2, 0, 1).float() / 255 for cam in cams}
    masks = {cam: root / dtu.mask_relpath(scan, cam) for cam in cams}
    regions = {cam: mask_edge_and_interior(load_mask(path, size=tuple(truths[cam].shape[1:])))
               for cam, path in masks.items() if path.is_file()}  # pretraining scans have no masks

    def psnr(seed: int, cam: int, truth_cam: int, where: torch.Tensor | None = None) -> float:
        error = ((images[(seed, cam)] - truths[truth_cam]) ** 2).mean(0)
        return float(mse_to_psnr(error.mean() if where is None else error[where].mean()))  # empty region: NaN

    frame = frame.copy()
    pairs = list(zip(frame["seed"], frame["cam"], strict=True))
    frame["psnr_image"] = [psnr(s, c, c) for s, c in pairs]
    frame["psnr_image_reversed"] = [psnr(s, c, mirrored[c]) for s, c in pairs]
    if len(regions) == len(cams):
        frame["psnr_edge"] = [psnr(s, c, c, regions[c][0]) for s, c in pairs]
        frame["psnr_interior"] = [psnr(s, c, c, regions[c][1]) for s, c in pairs]
    return frame


def run_variant(variant: str, scan: int, n_views: int, root: Path, work: Path, settings: FitSettings) -> pd.DataFrame:
    """Fit (if learned), render the test views over seeds, score; one row per (seed, view)."""
    from viewneti_core.training.trainer import train

    pred_dir = work / "predictions" / f"{variant}-scan{scan}-{n_views}view"
    if variant in BASELINES:
        baseline_predictions(variant, root, scan, n_views, settings.seeds, pred_dir)
    else:
        runs = work / "runs"
        mapper = str(untrained_view_mapper(root, runs)) if variant == "untrained-view-mapper" else VIEW_MAPPER
        result = train(fit_config(variant, scan, n_views, root, runs, settings, view_mapper=mapper), progress=False)
        run_inference(result.run_dir, seeds=list(settings.seeds), views=list(dtu.TEST_VIEWS), out_dir=pred_dir,
                      progress=False)
    return score_predictions(pred_dir, root, scan, variant)


def score_predictions(pred_dir: Path, root: Path, scan: int, variant: str) -> pd.DataFrame:
    """The test-view rows of `pred_dir` scored by the DTU protocol, with the view-control columns."""
    table = evaluate_predictions(pred_dir, protocols=("viewneti",), lpips_weights="none", eval_size=EVAL_SIZE,
                                 progress=False, run_name=variant)
    frame = pd.read_parquet(table)
    frame = view_control_columns(frame[frame["role"] == "test"], pred_dir, root, scan)
    frame["variant"] = variant
    return frame


def per_set_means(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per image set (variant, n_views, scan, seed): the mean of its test views' scores, and its
    view gap (whole-image PSNR against its own cameras minus against the mirrored ones)."""
    metrics = ["psnr", "ssim", "psnr_image", "psnr_image_reversed"]
    metrics += [m for m in REGION_METRICS if m in rows]  # rows scored before 2026-12-07 lack them
    per_set = rows.groupby(["variant", "n_views", "scan", "seed"], as_index=False)[metrics].mean()
    per_set["view_gap"] = per_set["psnr_image"] - per_set["psnr_image_reversed"]
    return per_set


def summarize_results(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per (variant, n_views): mean and std over (scan, seed) of the per-image-set means, as DTU tables do."""
    per_set = per_set_means(pd.concat(frames, ignore_index=True))
    regions = {f"{m.removeprefix('psnr_')}_psnr_mean": (m, "mean") for m in REGION_METRICS if m in per_set}
    table = per_set.groupby(["variant", "n_views"]).agg(
        psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"), ssim_mean=("ssim", "mean"), ssim_std=("ssim", "std"),
        image_psnr_mean=("psnr_image", "mean"), image_psnr_std=("psnr_image", "std"),
        view_gap_mean=("view_gap", "mean"), view_gap_std=("view_gap", "std"), **regions,
        sets=("psnr", "size")).reset_index()
    order = {v: i for i, v in enumerate(("pretraining-token", *VARIANTS))}
    return table.sort_values(["n_views", "variant"], key=lambda c: c.map(order) if c.name == "variant" else c)


def run_results(out: Path, scans: list[int], n_views: list[int], settings: FitSettings,
                variants: tuple[str, ...] = VARIANTS, progress: bool = True) -> pd.DataFrame:
    """Every (views, scan, variant) of the table, each scored into `out/rows/` as soon as it is done.

    A rerun with the same `out` and settings skips the parts already scored, so a long measurement
    (all 15 scans) can run in pieces; other settings under the same `out` are refused.
    """
    from tqdm import tqdm

    out = Path(out)
    recorded = {"world": mini_world.NOTE, "model": MODEL, "view_mapper": VIEW_MAPPER} | {
        k: list(v) if isinstance(v, tuple) else v for k, v in settings.__dict__.items()}
    settings_file = out / "settings.json"
    if settings_file.is_file():
        before = {k: v for k, v in json.loads(settings_file.read_text()).items() if k in recorded}
        before.setdefault("mode2_steps", None)  # folders from before the setting: mode 2 ran `steps`
        before.setdefault("view_caption", VIEW_CAPTION)  # and the original's caption
        if before != recorded:
            raise ValueError(f"{out} holds results of other settings ({settings_file}: {before}); "
                             f"use another --out for {recorded}")
    else:
        _publish(settings_file, lambda path: path.write_text(json.dumps(recorded, indent=1) + "\n"))
    root = ensure_world_tree(out / "dtu", sorted(set(scans) | {3}))
    parts = [(n, scan, variant) for scan in scans for n in n_views for variant in variants]  # whole scans first
    frames = []
    for n, scan, variant in tqdm(parts, desc="mini world results", unit="fit", disable=not progress):
        part = out / "rows" / f"{variant}-scan{scan}-{n}view.parquet"
        if not part.is_file():
            logger.info("mini world results: %s, scan %d, %d view(s)", variant, scan, n)
            frame = run_variant(variant, scan, n, root, out, settings)
            _publish(part, frame.to_parquet)
        frames.append(pd.read_parquet(part))
    table = summarize_results(frames)
    pd.concat(frames, ignore_index=True).to_parquet(out / "rows.parquet")
    table.to_csv(out / "results.csv", index=False)
    return table


def _publish(path: Path, write) -> None:
    """`write(tmp)` next to `path`, then rename: a killed run never leaves half a part."""
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    write(tmp)
    os.replace(tmp, path)


def pretraining_ceiling(out: Path, scans: list[int], settings: FitSettings) -> pd.DataFrame:
    """The same scores for scenes the world's view mapper PRETRAINED on, rendered at the DTU test
    views with their own mode-3 tokens (learned from every view, no new fit), next to the copy
    baselines of their 3 input views: how close the base model's samples get when nothing is held
    out. (Pretraining scans have no masks, so the DTU columns score the whole image.)"""
    from viewneti_core.base_model.sd_models import SHIPPED, load_components
    from viewneti_core.inference import view_prompt
    from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
    from viewneti_core.method.model import build_model
    from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler
    from viewneti_core.training.checkpoints import load_checkpoint_mappers, read_checkpoint_info

    out = Path(out)
    root = ensure_world_tree(out / "dtu", scans)
    checkpoint = SHIPPED["mini-world"].parent / "view-mapper"
    config = ViewNetiConfig.model_validate(read_checkpoint_info(checkpoint)["config"])
    mappers = load_checkpoint_mappers(checkpoint)
    model = build_model(config, load_components(MODEL), view_mapper=mappers.pop(VIEW_MAPPER_KEY),
                        object_mappers=mappers)
    width, height = mini_world.SIZE
    sampler = ViewNetiSampler(model.components, model.conditioner, SamplerSettings(
        settings.denoising_steps, settings.guidance_scale, height, width))
    cameras = dtu.load_cameras(root)
    frames = []
    for scan in scans:
        prompt = view_prompt(config, f"<scan{scan}>")
        keys = [(seed, cam) for cam in dtu.TEST_VIEWS for seed in settings.seeds]
        images = sampler.sample([SampleRequest.with_camera(prompt, s, cameras[c]) for s, c in keys], progress=False)
        for variant in ("pretraining-token", *BASELINES):
            pred_dir = out / "predictions" / f"{variant}-scan{scan}"
            if variant in BASELINES:
                baseline_predictions(variant, root, scan, 3, settings.seeds, pred_dir)
            else:
                write_predictions(pred_dir, dict(zip(keys, images, strict=True)), prediction_meta(
                    root, scan, 3, settings.seeds, run_dir=str(checkpoint), learnable_mode=3,
                    object_token=f"<scan{scan}>", base_model=MODEL, weights=mini_world.WEIGHTS_LABEL))
            frames.append(score_predictions(pred_dir, root, scan, variant))
    table = summarize_results(frames)
    table.to_csv(out / "pretraining_ceiling.csv", index=False)
    return table
