"""The embedded-default demo: ViewNeTI in the mini world, from 3 views of a held-out scene.

By default (`configs/core_demo.yaml`, model `builtin:mini-world`) it fits mode 5 on held-out scan 114
of the mini world with the world's pretrained view mapper, renders the input views and novel test
views over seeds through `viewneti infer`'s code, and scores the novel views with the DTU protocol:
real novel views in a few minutes on 2 CPU cores, labelled as the mini world (not SD 2.1, not DTU).

With `--model.pretrained_model_name_or_path builtin:tiny` it shows only the machinery: a tiny
random-weight model and untrained mappers; those images are noise-like and labelled RANDOM WEIGHTS.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from viewneti_core.base_model.sd_models import (
    build_components,
    load_components,
    resolve_device,
    resolve_dtype,
    save_components,
)
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.cameras import CameraNormalization
from viewneti_core.images import labelled_grid, save_image_atomic, to_pil
from viewneti_core.method.model import build_model
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler

logger = logging.getLogger(__name__)

RANDOM_LABEL = "RANDOM WEIGHTS - untrained mappers on a random tiny model - not benchmark quality"
DEMO_PROMPT = "<view>. A photo of a <object>"
CAMERA_PATH = (16, 25, 12)  # the middle camera row, left to right, 12 frames: the viewpoint change at a glance


@dataclass
class DemoResult:
    out_dir: Path
    images: list[Path]
    grids: list[Path]
    summary: Path
    seconds: float
    record: dict | None = None
    gif: Path | None = None  # the fitted scene along a camera path (mini-world demo)


def ensure_tiny_model(model_dir: Path) -> Path:
    """Build and save the tiny model once; later runs reuse the directory."""
    if not (model_dir / "model_index.json").is_file():
        save_components(build_components("tiny"), model_dir, builder="tiny")
    return model_dir


def ensure_synthetic_scan(data_dir: Path, scan: int, size: tuple[int, int]) -> Path:
    if not (data_dir / dtu.image_relpath(scan, dtu.TRAIN_VIEWS[0])).is_file():
        from viewneti_core.data.synthetic import make_synthetic_dtu

        make_synthetic_dtu(data_dir, scans=[scan], size=size, progress=False)
    return data_dir


def run_demo(
    config: ViewNetiConfig,
    out_dir: Path,
    scan: int = 114,
    views: tuple[int, ...] = (25, 22, 28, 1, 9, 30),
    progress: bool = True,
) -> DemoResult:
    if config.model.pretrained_model_name_or_path == "builtin:tiny":
        return run_random_demo(config, out_dir, scan, views, progress)
    return run_mini_world_demo(config, out_dir, scan, views, progress)


def run_mini_world_demo(config: ViewNetiConfig, out_dir: Path, scan: int, views: tuple[int, ...],
                        progress: bool = True, camera_path: tuple[int, int, int] = CAMERA_PATH) -> DemoResult:
    """Fit mode 5 on `scan` from its 3 training views, render `views` over seeds and an animated sweep
    along `camera_path` (first seed), score the novel views."""
    import pandas as pd

    from viewneti_core.evaluation.scoring import evaluate_predictions
    from viewneti_core.inference import run_inference
    from viewneti_core.mini_world.evaluate import EVAL_SIZE, ensure_world_tree
    from viewneti_core.mini_world.world import NOTE, SIZE
    from viewneti_core.training.trainer import train

    start = time.perf_counter()
    out_dir = Path(out_dir)
    root = ensure_world_tree(out_dir / "dtu-mini-world", [scan])
    width, height = SIZE
    config = config.model_copy(deep=True)
    config.data.train_data_dir, config.data.dtu_scan = root, scan
    config.data.width = config.data.resolution = config.eval.width = width
    config.data.height = config.eval.height = height
    config.log.exp_dir, config.log.exp_name, config.log.overwrite_ok = out_dir / "runs", f"scan{scan}", True
    fitted = train(config, progress=progress)
    inference = run_inference(fitted.run_dir, seeds=list(config.eval.seeds), views=list(views),
                              out_dir=out_dir / "predictions", camera_path=camera_path, progress=progress)
    table = evaluate_predictions(inference.out_dir, protocols=("viewneti",), lpips_weights="none",
                                 eval_size=EVAL_SIZE, progress=False, views_chosen=True)
    rows = pd.read_parquet(table)
    novel = rows[rows["role"] == "test"]
    seconds = time.perf_counter() - start
    summary = {
        "weights": inference.weights,
        "note": NOTE,
        "model": config.model.pretrained_model_name_or_path,
        "view_mapper": config.model.pretrained_view_mapper,
        "data": str(root),
        "scan": scan,
        "input_views": list(dtu.train_views(config.data.dtu_subset)),
        "views": list(views),
        "seeds": list(config.eval.seeds),
        "fit_steps": fitted.steps,
        "size": [width, height],
        "num_inference_steps": config.eval.num_denoising_steps,
        "novel_view_psnr": round(float(novel["psnr"].mean()), 3),
        "novel_view_ssim": round(float(novel["ssim"].mean()), 4),
        "metrics": str(table.relative_to(out_dir)),
        "images": [str(p.relative_to(out_dir)) for p in sorted(inference.out_dir.glob("seed*_cam*.png"))],
        "grids": [str(p.relative_to(out_dir)) for p in inference.grids],
        "camera_path": list(camera_path),
        "camera_path_gif": str(inference.gif.relative_to(out_dir)),
        "seconds": round(seconds, 2),
    }
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    images = [out_dir / p for p in summary["images"]]
    return DemoResult(out_dir, images, list(inference.grids), summary_path, seconds, summary, inference.gif)


def run_random_demo(config: ViewNetiConfig, out_dir: Path, scan: int, views: tuple[int, ...],
                    progress: bool = True) -> DemoResult:
    """Untrained mappers on the tiny random model: the machinery only, labelled RANDOM WEIGHTS."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    model_dir = ensure_tiny_model(out_dir / "model-tiny")
    data_dir = ensure_synthetic_scan(out_dir / "dtu-synthetic", scan, (160, 120))

    cameras = dtu.load_cameras(data_dir)
    normalization = CameraNormalization.from_cameras(cameras.reshape(len(cameras), 12), "dtu-12d")
    components = load_components(
        model_dir, device=resolve_device(config.run.device),
        dtype=resolve_dtype(config.run.dtype, resolve_device(config.run.device)),
    )
    torch.manual_seed(config.optim.seed or 0)  # the untrained mappers' initialisation
    model = build_model(
        config,
        components,
        view_camera_normalization=normalization,
        new_object_tokens=[config.data.placeholder_object_token],
    )
    prompt = DEMO_PROMPT.replace("<view>", config.data.placeholder_view_token).replace(
        "<object>", config.data.placeholder_object_token
    )
    settings = SamplerSettings.from_config(config)
    sampler = ViewNetiSampler(components, model.conditioner, settings)
    seeds = config.eval.seeds
    requests = [SampleRequest.with_camera(prompt, seed, cameras[cam]) for seed in seeds for cam in views]
    images = sampler.sample(requests, progress=progress)

    saved, grids = [], []
    for seed in seeds:
        row_gt, row_pred = [], []
        for cam in views:
            index = requests.index(SampleRequest.with_camera(prompt, seed, cameras[cam]))
            pil = to_pil(images[index])
            saved.append(save_image_atomic(pil, out_dir / "samples" / f"seed{seed}" / f"view{cam:02d}_random-weights.png"))
            gt = Image.open(data_dir / dtu.image_relpath(scan, cam)).convert("RGB")
            row_gt.append(gt.resize(pil.size, Image.BICUBIC))
            row_pred.append(pil)
        grid = labelled_grid([row_gt, row_pred], ["synthetic GT", f"seed {seed}"], title=RANDOM_LABEL)
        grids.append(save_image_atomic(grid, out_dir / f"grid_seed{seed}_random-weights.png"))

    seconds = time.perf_counter() - start
    summary = {
        "weights": "random",
        "note": RANDOM_LABEL,
        "model": str(model_dir),
        "data": str(data_dir),
        "scan": scan,
        "views": list(views),
        "seeds": list(seeds),
        "prompt": prompt,
        "size": [settings.width, settings.height],
        "num_inference_steps": settings.num_inference_steps,
        "images": [str(p.relative_to(out_dir)) for p in saved],
        "grids": [str(p.relative_to(out_dir)) for p in grids],
        "seconds": round(seconds, 2),
    }
    summary_path = out_dir / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return DemoResult(out_dir, saved, grids, summary_path, seconds, summary)
