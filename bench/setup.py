"""Deterministic benchmark models: random-weight SD components + view/object mappers.

Every call with the same arguments builds the same weights (fixed seeds), so our path and the
reference-style path can each get their own copy (the fast path changes modules in place).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from viewneti_core.base_model.sd_models import build_components
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.cameras import CameraNormalization
from viewneti_core.data.synthetic import synthetic_cameras
from viewneti_core.method.acceleration import AccelerationOptions, AccelerationReport, apply_acceleration
from viewneti_core.method.model import ViewNetiModel, build_model

PROMPT = "<view>. A photo of a <object>"
OBJECT_TOKEN = "<object>"

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class BenchModel:
    model: ViewNetiModel
    cameras: np.ndarray  # (64, 3, 4)
    object_tokens: list[str]
    acceleration: AccelerationReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def components(self):
        return self.model.components

    @property
    def conditioner(self):
        return self.model.conditioner


def build_bench_model(
    model_name: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    mode: int = 5,
    num_scenes: int = 1,
    acceleration: AccelerationOptions | None = None,
    seed: int = 0,
) -> BenchModel:
    """Components (random weights, `model_name` = 'tiny' | 'sd21-random') + mappers for `mode`.

    Mode 5 (and inference): a view mapper (random weights standing in for a pretrained one; frozen)
    and one object mapper. Mode 3: a trainable view mapper and one object mapper per scene.
    """
    components = build_components(model_name, seed=seed).to(device=device, dtype=dtype).freeze()
    cameras = synthetic_cameras((1600, 1200))  # DTU-like calibration at DTU's full size
    normalization = CameraNormalization.from_cameras(cameras.reshape(-1, 12), "dtu-12d")
    if mode == 3:
        tokens = [f"<scan{scan}>" for scan in dtu.PRETRAIN_SCANS[:num_scenes]]
    else:
        tokens = [OBJECT_TOKEN]
    torch.manual_seed(seed)
    model = build_model(
        ViewNetiConfig(learnable_mode=mode), components,
        view_camera_normalization=normalization, new_object_tokens=tokens,
    )
    for mapper in model.conditioner.mappers.values():
        mapper.to(device)  # mappers train in fp32 (autocast-free); the frozen nets are in `dtype`
    view = model.conditioner.view_mapper
    view.requires_grad_(mode != 5)  # mode 5: the pretrained view mapper is frozen
    bench = BenchModel(model, cameras, tokens)
    if acceleration is not None:
        bench.acceleration = apply_acceleration(components, acceleration)
    return bench
