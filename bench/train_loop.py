"""The real training loop, timed: `viewneti_core.training.trainer.train()` on a synthetic DTU scene, with
accelerate, the DataLoader (workers and pinned memory as configured), augmentation, the device-side
loss accumulation, the acceleration knobs `train()` applies and the final checkpoint write, timed
through its `on_step_end` callback. This is what `viewneti train` and the pipeline run; the
`diffusion_loss` micro-benchmark next to it (bench/fitting.py) isolates the model maths.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import peak_memory, reset_peak_memory, synchronize
from bench.setup import build_bench_model
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.data.synthetic import make_synthetic_dtu
from viewneti_core.method.mappers import save_mapper
from viewneti_core.training.trainer import train

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def prepare_train_run(args, mode: int, device: torch.device, dtype: torch.dtype, root: Path, steps: int,
                      learning_rate: float | None = None):
    """(bench model, config) of a `train()` run on a synthetic scene under `root` (mode 5 or 3)."""
    width, height = args.train_size
    scans = [dtu.PRETRAIN_SCANS[0]] if mode == 3 else [114]
    bench = build_bench_model(args.model, device, dtype, mode=mode, num_scenes=len(scans))
    make_synthetic_dtu(root / "dtu", scans=scans, size=(width, height), lights=[dtu.DEFAULT_LIGHT], progress=False)
    model_section = {"pretrained_model_name_or_path": f"builtin:{args.model}"}
    if mode == 5:
        stem = root / "view-mapper" / "view_mapper"
        stem.parent.mkdir()
        save_mapper(bench.conditioner.view_mapper, stem)
        model_section["pretrained_view_mapper"] = str(stem)
    config = ViewNetiConfig.model_validate({
        "learnable_mode": mode,
        "run": {"device": device.type, "compile_unet": args.compile,
                "compile_cache_dir": str(args.compile_cache_dir) if args.compile_cache_dir else None,
                **({} if args.channels_last else {"channels_last": False})},
        "log": {"exp_dir": str(root / "runs"), "exp_name": "bench", "report_to": "none", "save_steps": 10**9},
        "data": {"train_data_dir": str(root / "dtu"), "width": width, "height": height, "dtu_scan": scans[0],
                 "dtu_pretrain_scans": scans, "augmentation": "fitting" if mode == 5 else "pretraining"},
        "model": model_section,
        "eval": {"validation_steps": 10**9, "final_validation": False},
        "optim": {"max_train_steps": steps, "train_batch_size": args.batch,
                  "gradient_accumulation_steps": args.accumulation,
                  "mixed_precision": MIXED_PRECISION[args.dtype],
                  **({} if learning_rate is None else {"learning_rate": learning_rate, "scale_lr": False})},
    })
    return bench, config


def run_train_loop(args, mode: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Steps per second of `train()` after `args.train_warmup` untimed steps (mode 5 or 3)."""
    with tempfile.TemporaryDirectory(prefix="viewneti-bench-train-") as tmp:
        steps = args.train_warmup + args.train_steps
        bench, config = prepare_train_run(args, mode, device, dtype, Path(tmp), steps)
        stamps: list[float] = []

        def on_step_end(step: int) -> None:
            synchronize(device)
            stamps.append(time.perf_counter())

        reset_peak_memory(device)
        start = time.perf_counter()
        train(config, components=bench.components, on_step_end=on_step_end, progress=False)
    first = stamps[args.train_warmup - 1] if args.train_warmup else start
    seconds = stamps[-1] - first
    return {
        "timed_steps": args.train_steps, "warmup_steps": args.train_warmup, "seconds": seconds,
        "steps_per_s": args.train_steps / seconds, "setup_and_warmup_s": first - start,
        "includes": "train(): accelerate, DataLoader + augmentation, loss sync per step, final checkpoint write",
        **peak_memory(device),
    }
