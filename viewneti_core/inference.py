"""Novel view synthesis from a trained run (DESIGN 3.7): load a checkpoint, render cameras x seeds.

Predictions are stored as `predictions.safetensors` (uint8 images, one tensor per (seed, cam)) with a
`predictions.json` index, plus one PNG per image and one grid per seed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from viewneti_core.atomic_files import save_safetensors, temp_dir_beside
from viewneti_core.base_model.sd_models import load_components, resolve_device, resolve_dtype, weights_note
from viewneti_core.config import ConfigError, ViewNetiConfig, deep_merge, parse_overrides, validate_config
from viewneti_core.data import dtu
from viewneti_core.data.cameras import interpolate_cameras
from viewneti_core.data.captions import view_caption
from viewneti_core.errors import ArtifactError, PromptError
from viewneti_core.images import (
    image_tensor_problem,
    image_to_unit_float,
    labelled_grid,
    load_image,
    save_image_atomic,
    to_pil,
)
from viewneti_core.method.acceleration import AccelerationOptions, apply_acceleration
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY, check_prompt_placeholders
from viewneti_core.method.model import ViewNetiModel, build_model
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler
from viewneti_core.render_args import (
    RenderArgumentError,
    check_camera_path,
    check_cameras,
    check_render_size,
    check_seeds,
)
from viewneti_core.safe_io import read_json_file, read_safetensors, require, short_repr
from viewneti_core.training.checkpoints import (
    load_checkpoint_mappers,
    read_checkpoint_info,
    resolve_checkpoint,
)
from viewneti_core.training.cpu_budget import sampling_work, warn_if_slow_on_cpu

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "predictions.safetensors"
PREDICTIONS_INDEX = "predictions.json"


@dataclass
class LoadedRun:
    model: ViewNetiModel
    config: ViewNetiConfig
    checkpoint: Path
    info: dict
    step: int


def load_run(
    run_dir: Path,
    step: str | int = "latest",
    base_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    overrides: Sequence[str] | dict | None = None,
) -> LoadedRun:
    """Rebuild the model of a training run from one of its checkpoints; `overrides` (dotted strings
    like `--run.dtype float32` or a nested dict) change its saved `run`/`eval` sections."""
    checkpoint = resolve_checkpoint(Path(run_dir), step)
    info = read_checkpoint_info(checkpoint)
    config = with_overrides(ViewNetiConfig.model_validate(info["config"]), overrides)
    if base_model is not None and base_model != info["base_model"]:
        raise ValueError(
            f"run {run_dir} was trained on base model {info['base_model']!r}, not {base_model!r}: its mappers "
            "only work with the text encoder and UNet they were trained with"
        )
    run_cfg = config.run
    target = resolve_device(device or run_cfg.device)
    components = load_components(info["base_model"], device=target, dtype=resolve_dtype(dtype or run_cfg.dtype, target))
    if components.text_width != info["text_width"]:
        raise ValueError(
            f"checkpoint {checkpoint} expects a {info['text_width']}-dim text encoder, {info['base_model']} has "
            f"{components.text_width}"
        )
    mappers = load_checkpoint_mappers(checkpoint, device=components.device)
    view_mapper = mappers.pop(VIEW_MAPPER_KEY, None)
    model = build_model(config, components, view_mapper=view_mapper, object_mappers=mappers)
    apply_acceleration(components, AccelerationOptions.from_config(config, components.device))
    return LoadedRun(model, config, checkpoint, info, int(info["step"]))


INFER_OVERRIDE_SECTIONS = ("run", "eval")  # the rest is what the mappers were trained with


def with_overrides(config: ViewNetiConfig, overrides: Sequence[str] | dict | None) -> ViewNetiConfig:
    """A run's saved config with dotted overrides on top (how and what to render: `run.*`, `eval.*`)."""
    if not overrides:
        return config
    tree = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    other = sorted(set(tree) - set(INFER_OVERRIDE_SECTIONS))
    if other:
        raise ConfigError(f"override section(s) {other} cannot change for a trained run: only "
                          f"{', '.join(s + '.*' for s in INFER_OVERRIDE_SECTIONS)} may be overridden at inference")
    return validate_config(deep_merge(config.model_dump(mode="json"), tree))


def mapper_camera_inputs(cameras: dict[int, np.ndarray], representation: str) -> dict[int, torch.Tensor]:
    """3x4 projection matrices -> the raw camera vectors the view mapper was trained on."""
    from viewneti_core.data.datasets import camera_vectors

    keys = list(cameras)
    vectors = camera_vectors(np.stack([np.asarray(cameras[k], dtype=np.float64) for k in keys]), representation)
    return dict(zip(keys, vectors, strict=True))


def view_prompt(config: ViewNetiConfig, object_token: str) -> str:
    """The caption the run was trained on, for `object_token`."""
    return view_caption(config.data.placeholder_view_token, object_token, config.data.view_caption)


def render_cameras(
    run: LoadedRun, object_token: str, cameras: dict[int, np.ndarray], seeds: list[int], progress: bool = True
) -> dict[tuple[int, int], torch.Tensor]:
    """{(seed, cam): image (3, H, W) in [0, 1]} for every camera and seed, batched by the sampler."""
    if not seeds:
        raise ValueError("the seeds list is empty: give at least one seed, e.g. --seeds 0,1,2")
    if object_token not in run.model.conditioner.object_mappers:
        raise ValueError(f"{object_token!r} is not a token of this run; it has {sorted(run.model.conditioner.object_mappers)}")
    prompt = view_prompt(run.config, object_token)
    vectors = mapper_camera_inputs(cameras, run.config.data.camera_representation)
    sampler = ViewNetiSampler(run.model.components, run.model.conditioner, SamplerSettings.from_config(run.config))
    return sample_view_major(sampler, prompt, vectors, seeds, progress)


def sample_view_major(
    sampler: ViewNetiSampler, prompt: str, vectors: dict[int, torch.Tensor], seeds: list[int], progress: bool = True
) -> dict[tuple[int, int], torch.Tensor]:
    """{(seed, cam): image}, seed-major, rendered view-major: the seeds of one camera share a batch, so
    its text contexts are encoded once and dropped as soon as the camera is done."""
    order = [(seed, cam) for cam in vectors for seed in seeds]
    requests = [SampleRequest.with_camera(prompt, seed, vectors[cam]) for seed, cam in order]
    images = dict(zip(order, sampler.sample(requests, progress=progress), strict=True))
    return {(seed, cam): images[(seed, cam)] for seed in seeds for cam in vectors}


# ---- outputs -----------------------------------------------------------------------------------


def write_predictions(out_dir: Path, images: dict[tuple[int, int], torch.Tensor], meta: dict) -> Path:
    """uint8 images in one safetensors file + a JSON index; written in a temp dir, then renamed."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out_dir)
    try:
        tensors = {f"seed{seed}_cam{cam:02d}": (img * 255 + 0.5).clamp(0, 255).to(torch.uint8).contiguous()
                   for (seed, cam), img in images.items()}
        save_safetensors(tensors, tmp / PREDICTIONS_FILE)
        index = meta | {"images": [{"seed": s, "cam": c, "key": f"seed{s}_cam{c:02d}"} for s, c in images]}
        (tmp / PREDICTIONS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        for (seed, cam), img in images.items():
            to_pil(img).save(tmp / f"seed{seed}_cam{cam:02d}.png")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_predictions(pred_dir: Path) -> tuple[dict, dict[tuple[int, int], torch.Tensor]]:
    """The index and the images in [0, 1], every entry and tensor checked (ArtifactError naming the file)."""
    pred_dir = Path(pred_dir)
    index_path, tensors_path = pred_dir / PREDICTIONS_INDEX, pred_dir / PREDICTIONS_FILE
    index = read_json_file(index_path, "predictions index")
    entries = require(index, "images", list, str(index_path))
    tensors = read_safetensors(tensors_path, "predictions")
    images = {}
    for i, entry in enumerate(entries):
        where = f"{index_path} (images[{i}])"
        if not isinstance(entry, dict):
            raise ArtifactError(f"{where}: each image entry must be {{seed, cam, key}}")
        seed, cam, key = require(entry, "seed", int, where), require(entry, "cam", int, where), require(entry, "key", str, where)
        if key not in tensors:
            raise KeyError(key)  # scoring names both files
        problem = image_tensor_problem(tensors[key])
        if problem is not None:
            raise ArtifactError(f"{tensors_path}: prediction {short_repr(key, 40)} {problem}")
        if (seed, cam) in images:
            raise ArtifactError(f"{where}: seed {seed} cam {cam} is listed twice")
        images[(seed, cam)] = image_to_unit_float(tensors[key])
    return index, images


def seed_grid(
    images: dict[tuple[int, int], torch.Tensor],
    seed: int,
    cams: list[int],
    ground_truth: dict[int, Image.Image],
    masks: dict[int, np.ndarray | None],
    train_cams: set[int],
    title: str,
) -> Image.Image:
    """Rows: ground truth (yellow bar over training views), predictions, masked predictions, residuals."""
    preds = [to_pil(images[(seed, cam)]) for cam in cams]
    size = preds[0].size
    gt_row, masked_row, residual_row = [], [], []
    for cam, pred in zip(cams, preds, strict=True):
        gt = ground_truth[cam].convert("RGB").resize(size, Image.BICUBIC)
        if cam in train_cams:
            gt = gt.copy()
            ImageDraw.Draw(gt).rectangle([0, 0, size[0], max(2, size[1] // 12)], fill=(255, 220, 0))
        gt_row.append(gt)
        pred_arr = np.asarray(pred, dtype=np.float32) / 255
        mask = masks.get(cam)
        m = (np.asarray(Image.fromarray(mask).resize(size, Image.BICUBIC), dtype=np.float32) / 255 > 0.01)[..., None] \
            if mask is not None else np.ones((*pred_arr.shape[:2], 1), dtype=np.float32)
        masked_row.append(to_pil(pred_arr * m))
        gt_arr = np.asarray(ground_truth[cam].convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255
        residual_row.append(to_pil(np.abs(pred_arr - gt_arr) * m))
    return labelled_grid(
        [gt_row, preds, masked_row, residual_row],
        ["GT (yellow: train)", f"seed {seed}", "masked", "|residual|"],
        title=title,
    )


def camera_path_gif(
    run: LoadedRun, object_token: str, start: np.ndarray, end: np.ndarray, frames: int, seed: int, path: Path,
    progress: bool = True,
) -> Path:
    """Render a smooth camera path between two cameras and save it as an animated GIF."""
    if frames < 2:
        raise ValueError("a camera path needs at least 2 frames")
    cams = {i: p for i, p in enumerate(interpolate_cameras(start, end, frames))}
    images = render_cameras(run, object_token, cams, [seed], progress=progress)
    pil = [to_pil(images[(seed, i)]) for i in range(frames)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:] + pil[-2:0:-1], duration=120, loop=0)
    os.replace(tmp, path)
    return path


def dtu_ground_truth(root: Path, scan: int, cams: list[int], light: int) -> tuple[dict, dict]:
    """Ground-truth images and masks (None where the scan has none) for grids and metrics."""
    gts, masks = {}, {}
    for cam in cams:
        gts[cam] = load_image(Path(root) / dtu.image_relpath(scan, cam, light), "RGB")
        mask_path = dtu.find_mask(root, scan, cam)
        masks[cam] = np.asarray(load_image(mask_path, "L")) if mask_path is not None else None
    return gts, masks


# ---- orchestration (CLI and pipeline tasks call this with paths and small records) -------------


@dataclass
class InferenceResult:
    out_dir: Path
    predictions: Path
    grids: list[Path]
    gif: Path | None
    scan: int | None
    n_views: int
    step: int
    weights: str


def scan_of_token(config: ViewNetiConfig, token: str) -> int | None:
    """The DTU scan a token stands for: the configured scan for single-scene modes, parsed in mode 3."""
    if config.learnable_mode == 3:
        prefix, _, suffix = config.data.scan_token_pattern.partition("{scan}")
        if token.startswith(prefix) and token.endswith(suffix):
            return int(token[len(prefix) : len(token) - len(suffix)])
        return None
    return config.data.dtu_scan if config.learnable_mode != 0 else None


def run_inference(
    run_dir: Path,
    step: str | int = "latest",
    seeds: list[int] | None = None,
    views: list[int] | None = None,
    object_token: str | None = None,
    out_dir: Path | None = None,
    camera_path: tuple[int, int, int] | None = None,
    overrides: Sequence[str] | dict | None = None,
    progress: bool = True,
    base_model: str | None = None,
) -> InferenceResult:
    """Render the DTU evaluation views (or `views`) of a run for every seed and write all outputs;
    `overrides` change the run's saved `run`/`eval` config (see `with_overrides`). Every argument is
    checked (render_args.py) before the model is loaded, so a bad one costs nothing and writes nothing."""
    saved = with_overrides(ViewNetiConfig.model_validate(read_checkpoint_info(resolve_checkpoint(Path(run_dir), step))
                                                         ["config"]), overrides)
    if saved.learnable_mode == 0:
        raise ValueError("mode-0 runs have no view mapper: use `viewneti generate` with a prompt instead")
    seeds = check_seeds(list(saved.eval.seeds if seeds is None else seeds))
    views = check_cameras(list(dtu.EVAL_VIEWS if views is None else views), dtu.NUM_VIEWS, "--views")
    root = Path(saved.data.train_data_dir)
    all_cameras = dtu.load_cameras(root)
    camera_path = check_camera_path(camera_path, len(all_cameras))
    frames = camera_path[2] if camera_path is not None else 0
    check_render_size(saved.eval.width, saved.eval.height, len(views) * len(seeds), frames)

    run = load_run(run_dir, step, base_model=base_model, overrides=overrides)
    config = run.config
    tokens = list(run.model.conditioner.object_mappers)
    token = object_token or tokens[0]
    if token not in tokens:
        raise ValueError(f"--token {token!r} is not a token of this run; it has {sorted(tokens)}")
    scan = scan_of_token(config, token)
    subset = dtu.subset_views(config.data.dtu_subset)
    train_cams = set(subset) if config.learnable_mode != 3 else set()
    warn_if_slow_on_cpu(run.model.components.device, run.model.components.unet,
                        sampling_work(config, len(views) * len(seeds) + frames, ("--views", "--seeds")))
    images = render_cameras(run, token, {cam: all_cameras[cam] for cam in views}, seeds, progress=progress)

    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / "inference" / f"step-{run.step}"
    weights = run.model.weights_label
    meta = {
        "run_dir": str(run_dir), "step": run.step, "learnable_mode": config.learnable_mode, "scan": scan,
        "object_token": token, "n_views": len(train_cams), "train_cams": sorted(train_cams), "seeds": seeds,
        "cams": views, "base_model": run.info["base_model"], "weights": weights,
        "light": config.data.dtu_lighting, "data_root": str(root), "size": [config.eval.width, config.eval.height],
    }
    write_predictions(out_dir, images, meta)
    grids = []
    if scan is not None:
        gts, masks = dtu_ground_truth(root, scan, views, config.data.dtu_lighting)
        title = f"scan {scan} {token} step {run.step}" + (f" - {weights_note(weights)}" if weights_note(weights) else "")
        for seed in seeds:
            grid = seed_grid(images, seed, views, gts, masks, train_cams, title)
            grids.append(save_image_atomic(grid, out_dir / f"grid_seed{seed}.png"))
    gif = None
    if camera_path is not None:
        start, end, frames = camera_path
        gif = camera_path_gif(run, token, all_cameras[start], all_cameras[end], frames, seeds[0],
                              out_dir / f"path_cam{start:02d}_to_cam{end:02d}_seed{seeds[0]}.gif", progress)
    return InferenceResult(out_dir, out_dir / PREDICTIONS_FILE, grids, gif, scan, len(train_cams), run.step, weights)


def load_cameras_arg(spec: str, camera_root: Path | None) -> dict[int, np.ndarray]:
    """'25,22,28' (DTU camera indices, needs a DTU root) or a JSON file with a list of 3x4 matrices."""
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        try:
            mats = np.asarray(read_json_file(path, "camera file", expect=list), dtype=np.float64)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"{path} must hold a list of 3x4 projection matrices of numbers") from None
        if mats.ndim != 3 or mats.shape[1:] != (3, 4):
            raise ArtifactError(f"{path} must hold a list of 3x4 projection matrices, got shape {mats.shape}")
        if not np.isfinite(mats).all():
            raise ArtifactError(f"{path} holds NaN or infinite numbers: projection matrices must be finite")
        return dict(enumerate(mats))
    if camera_root is None:
        raise ValueError("DTU camera indices need --camera-root (a DTU tree with Calibration/cal18)")
    try:
        indices = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--cameras takes DTU indices like 25,22,28 or a .json file, got {spec[:80]!r}") from None
    cameras = dtu.load_cameras(camera_root)
    return {i: cameras[i] for i in check_cameras(indices, len(cameras), "--cameras")}


def run_generate(
    view_mapper: str,
    prompt: str,
    cameras: dict[int, np.ndarray],
    seeds: list[int],
    out_dir: Path,
    base_model: str | None = None,
    config: ViewNetiConfig | None = None,
    progress: bool = True,
) -> list[Path]:
    """View-controlled text-to-image: a user prompt with the <view> token, any cameras, any seeds."""
    from viewneti_core.training.view_mapper_registry import (
        load_pretrained_view_mapper,
        resolve_view_mapper_path,
    )

    config = config or ViewNetiConfig()
    seeds = check_seeds(list(seeds))
    if not cameras:
        raise RenderArgumentError("--cameras: no camera given")
    check_render_size(config.eval.width, config.eval.height, len(cameras) * len(seeds))
    if config.data.placeholder_view_token not in prompt:
        raise PromptError(f"prompt {prompt[:200]!r} has no {config.data.placeholder_view_token} token, so the "
                          f"cameras would be ignored; write e.g. '{config.data.placeholder_view_token}. A photo of a "
                          "teddy bear'")
    check_prompt_placeholders(prompt, config.data.placeholder_view_token, known=(),
                              hint=": generate loads only a view mapper; name the object in words (e.g. "
                                   "'a teddy bear'), or render a trained object with `viewneti infer`")
    stem = resolve_view_mapper_path(view_mapper)
    info_path = stem.parent.parent / "checkpoint.json"
    recorded = read_checkpoint_info(info_path.parent).get("base_model") if info_path.is_file() else None
    base = base_model or recorded
    if base is None:
        raise ValueError(f"{view_mapper} does not record its base model: pass --model")
    if recorded is not None and base_model is not None and base_model != recorded:
        raise ValueError(f"view mapper {view_mapper} was trained on {recorded!r}, not {base_model!r}")
    target = resolve_device(config.run.device)
    components = load_components(base, device=target, dtype=resolve_dtype(config.run.dtype, target))
    mapper = load_pretrained_view_mapper(
        view_mapper, text_width=components.text_width, camera_representation=config.data.camera_representation
    )
    model = build_model(config, components, view_mapper=mapper)
    apply_acceleration(components, AccelerationOptions.from_config(config, components.device))
    vectors = mapper_camera_inputs(cameras, config.data.camera_representation)
    sampler = ViewNetiSampler(components, model.conditioner, SamplerSettings.from_config(config))
    warn_if_slow_on_cpu(components.device, components.unet,
                        sampling_work(config, len(vectors) * len(seeds), ("--cameras", "--seeds")))
    images = sample_view_major(sampler, prompt, vectors, seeds, progress)
    label = "_random-weights" if components.weights == "random" else ""
    paths = []
    for (seed, index), image in images.items():
        paths.append(save_image_atomic(to_pil(image), Path(out_dir) / f"seed{seed}_cam{index:02d}{label}.png"))
    return paths
