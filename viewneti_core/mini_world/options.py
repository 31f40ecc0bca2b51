"""The options of `viewneti models build-mini-world`, without torch: the CLI builds its parser from
them, and `viewneti --help` must not import torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from viewneti_core.data import dtu

NOISE_SCHEDULES = ("sd21", "zero-snr")


@dataclass
class BuildOptions:
    seed: int = 0
    vae_steps: int = 800
    vae_batch: int = 16
    vae_lr: float = 1e-3
    # from 5,000: base samples +1.67 -> +2.15 dB over their mean image (docs/mini_world.md)
    unet_steps: int = 10000
    unet_batch: int = 32
    unet_lr: float = 4e-4
    noise_schedule: str = "sd21"  # one of NOISE_SCHEDULES: world.noise_schedule_config
    caption_dropout: float = 0.1
    view_words_share: float = 0.8  # the share of captions that carry view words
    # from 3,000: held-out fits +0.4/+0.6 dB masked (1/3 views); 15,000 overfit (docs/mini_world.md)
    view_mapper_steps: int = 9000
    checkpoint_every: int = 200
    scenes_per_seed: int | None = None  # fewer base scenes (tests); None: every base scan
    pretrain_scans: tuple[int, ...] = dtu.PRETRAIN_SCANS

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}



def _positive(kind: type):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = BuildOptions()
    parser.add_argument("--out", required=True, type=Path, help="output directory (model/, view-mapper/, build.json)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted build of --out")
    parser.add_argument("--overwrite", action="store_true", help="replace --out and any unfinished build of it")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="cpu",
                        help="where to train: cpu (the default, bit-for-bit deterministic), cuda[:N], or auto "
                             "(cuda when visible). The draws are the same on every device; CUDA's kernels are "
                             "not bit-deterministic, so a CUDA build is repeatable to float rounding only")
    for name in ("vae_steps", "unet_steps", "unet_batch", "view_mapper_steps", "checkpoint_every"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=_positive(int), default=getattr(defaults, name))
    parser.add_argument("--unet-lr", type=_positive(float), default=defaults.unet_lr,
                        help="peak learning rate of the UNet and text encoder (warm-up, then cosine to 10%%); "
                             "1e-3 drew better samples at reduced scale, not in the full build (docs/mini_world.md)")
    parser.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=defaults.noise_schedule,
                        help="the base model's noise schedule: SD 2.1's, or SD 2.1's rescaled to zero SNR at its "
                             "last timestep (docs/mini_world.md)")
    parser.add_argument("--scenes-per-seed", type=int, default=None,
                        help="train the base model on fewer scenes (quick trial builds)")
