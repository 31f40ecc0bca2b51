"""One clear warning before a run that its configured sizes make very long on a CPU.

The shipped configs are sized for Stable Diffusion 2.1 on a GPU (512x384 training images, 768x576
renders, 30 denoising steps). On a CPU even the tiny model then took 16 minutes for 4 training steps,
11 of them a final validation nobody saw coming. Measured on 2 busy CPU cores with the tiny model:
one UNet evaluation of one image took ~1 s at 256x192 and ~6 s at 768x576 (self-attention grows with
the square of the latent size); SD 2.1 takes minutes per image at any size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CPU_MAX_PIXELS = 256 * 192  # larger images on a CPU: seconds per UNet evaluation even for the tiny model
CPU_MAX_WORK = 1500 * 128 * 96  # UNet evaluations x pixels: a few minutes of the tiny model (the core demo: 720 at 128x96)
CPU_MAX_UNET_PARAMETERS = 50_000_000  # the tiny model has 2.4 M, SD 2.1 865 M
# One training image costs as much as a few sampling UNet evaluations at the demos' sizes: the text
# encoder runs forward and backward for all 16 layers' contexts, then the UNet forward and backward.
# Measured 2026-12-02 on 2 CPU cores: a mode-5 step of the mini world (64x48, batch 4) takes ~0.56 s,
# ~0.14 s per training image, against ~0.05 s per sampling evaluation. (An earlier constant of 30 came
# from a busy machine and warned on every 200-step demo fit, which takes about two minutes.)
TRAINING_IMAGE_COST = 3


@dataclass(frozen=True)
class Work:
    """UNet evaluations of one image at one size, and the settings that decide them."""

    what: str  # "training", "validation", "sampling"
    evaluations: int  # in sampling UNet evaluations of one image: 2 per sampled image and step (CFG)
    width: int
    height: int
    keys: tuple[str, ...]  # what to change to make it smaller

    @property
    def pixels(self) -> int:
        return self.width * self.height


def cpu_warning(device, unet_parameters: int, work: Sequence[Work]) -> str | None:
    """The warning text when `work` on `device` will take long on a CPU, else None."""
    if str(getattr(device, "type", device)).split(":")[0] != "cpu":
        return None
    work = [w for w in work if w.evaluations > 0]
    if not work:
        return None
    big_model = unet_parameters > CPU_MAX_UNET_PARAMETERS
    big_images = max(w.pixels for w in work) > CPU_MAX_PIXELS
    much = sum(w.evaluations * w.pixels for w in work) > CPU_MAX_WORK
    if not (big_model or big_images or much):
        return None
    parts = ", ".join(f"{w.what}: ~{w.evaluations} UNet evaluations' worth at {w.width}x{w.height}" for w in work)
    keys = ", ".join(dict.fromkeys(k for w in work for k in w.keys))
    model = (f"a {unet_parameters / 1e6:.0f} M-parameter UNet (minutes per image on a CPU)" if big_model
             else f"a {unet_parameters / 1e6:.1f} M-parameter UNet")
    return (f"this runs on the CPU with {model} - {parts}: expect a long run (the tiny model needs ~1 s per "
            f"evaluation at 256x192 and ~6 s at 768x576 on 2 cores). For a quick CPU run lower {keys} "
            "(configs/core_demo.yaml and configs/demo.yaml train and render 64x48), "
            "or use a GPU (run.device cuda).")


def warn_if_slow_on_cpu(device, unet, work: Sequence[Work]) -> str | None:
    """Log `cpu_warning` once (at WARNING) and return it."""
    message = cpu_warning(device, sum(p.numel() for p in unet.parameters()), work)
    if message:
        logger.warning(message)
    return message


def training_work(config, steps: int) -> list[Work]:
    """The UNet work of `steps` more training steps of `config`, validation renders included."""
    data, ev, optim = config.data, config.eval, config.optim
    width, height = (data.resolution, data.resolution) if config.learnable_mode == 0 else (data.width, data.height)
    images = steps * optim.train_batch_size * optim.gradient_accumulation_steps
    size_keys = ("data.resolution",) if config.learnable_mode == 0 else ("data.width", "data.height")
    work = [Work("training", TRAINING_IMAGE_COST * images, width, height,
                 ("optim.max_train_steps", "optim.train_batch_size", "optim.gradient_accumulation_steps", *size_keys))]
    renders = steps // ev.validation_steps + int(ev.final_validation and steps % ev.validation_steps != 0)
    per_render = len(ev.validation_prompts) if config.learnable_mode == 0 else len(ev.validation_views)
    work.append(Work("validation", renders * per_render * ev.num_denoising_steps * 2, ev.width, ev.height,
                     ("eval.width", "eval.height", "eval.num_denoising_steps", "eval.validation_steps",
                      "eval.final_validation")))
    return work


def sampling_work(config, images: int, keys: Sequence[str] = ()) -> list[Work]:
    """The UNet work of sampling `images` images with `config.eval`."""
    ev = config.eval
    return [Work("sampling", images * ev.num_denoising_steps * 2, ev.width, ev.height,
                 ("eval.width", "eval.height", "eval.num_denoising_steps", *keys))]
