"""Validation images during training: a few DTU views (modes 2-5) or the validation prompts (mode 0)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from viewneti_core.base_model.sd_models import weights_note
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data.captions import view_caption
from viewneti_core.images import labelled_grid, save_image_atomic, to_pil
from viewneti_core.method.model import ViewNetiModel
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler

logger = logging.getLogger(__name__)

RANDOM_TITLE = "RANDOM WEIGHTS - not benchmark quality"


def render_validation(config: ViewNetiConfig, model: ViewNetiModel, data, run_dir: Path, step: int, accelerator=None,
                      progress: bool = True) -> Path:
    """Render, save `validation/step-XXXXXX.png` and log it; the training RNG streams are untouched.
    `progress`: a progress bar (at SD sizes on a CPU a validation render takes minutes)."""
    conditioner = model.conditioner
    seed = config.eval.seeds[0]
    rows: list[list[Image.Image]] = []
    labels: list[str] = []
    if conditioner.view_mapper is None:  # mode 0: object only
        token = config.data.placeholder_object_token
        prompts = [p.format(token) for p in config.eval.validation_prompts]
        requests = [SampleRequest(p, seed) for p in prompts]
    else:
        token = data.object_tokens[0]
        prompt = view_caption(config.data.placeholder_view_token, token, config.data.view_caption)
        views = data.validation_views(config.eval.validation_views)
        requests = [SampleRequest.with_camera(prompt, seed, camera) for _, camera, _ in views]
        rows.append([gt for _, _, gt in views])
        labels.append("ground truth")
    settings = SamplerSettings.from_config(config)
    devices = [model.components.device] if model.components.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        images = ViewNetiSampler(model.components, conditioner, settings).sample(requests, progress=progress,
                                                                               desc=f"validation at step {step}")
    predictions = [to_pil(image) for image in images]
    if rows:
        rows[0] = [gt.convert("RGB").resize(predictions[0].size, Image.BICUBIC) for gt in rows[0]]
    rows.append(predictions)
    labels.append(f"step {step}, seed {seed}")
    note = RANDOM_TITLE if model.weights_label == "random" else weights_note(model.weights_label)
    title = f"{token} step {step}" + (f" - {note}" if note else "")
    grid = labelled_grid(rows, labels, title=title)
    path = save_image_atomic(grid, Path(run_dir) / "validation" / f"step-{step:06d}.png")
    if accelerator is not None:
        for tracker in accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
    logger.info("validation grid written to %s", path)
    return path
