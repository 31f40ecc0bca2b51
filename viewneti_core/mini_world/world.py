"""The mini world: synthetic multi-view scenes small enough that a base model can be trained on them
from scratch on a laptop CPU, so ViewNeTI can be seen working without SD 2.1, DTU or a GPU.

What lives here is what the world *is* (no training): its image size, which scenes belong to the
base model's training set and which are held out, the captions that describe a scene and a view,
and the configs of its small Stable-Diffusion-shaped model. `build.py` trains it.

Scenes are `scenes.two_tone_scene(seed, scan)`: one or two large two-tone objects whose every varying
attribute the caption names (why: `scenes.py`, docs/mini_world.md). Held-out scenes are the 15 DTU
test-scan ids at world seed 0, so the DTU protocol (splits, masks, metrics, pipeline) applies
unchanged; no scene with a test-scan id, at any seed, is ever rendered for the base model or the
view-mapper pretraining.
"""

from __future__ import annotations

import math

import numpy as np

from viewneti_core.base_model.sd_models import MINI_WORLD_NOTE, MINI_WORLD_WEIGHTS, _sd21_config
from viewneti_core.data import dtu
from viewneti_core.data.synthetic import CAMERA_ROWS, Scene
from viewneti_core.mini_world.options import NOISE_SCHEDULES
from viewneti_core.mini_world.scenes import two_tone_scene

SIZE = (64, 48)  # (width, height): latents 16x12 through the 4x VAE, 2x2 at the UNet's bottom
WORLD_SEED = 0  # the seed of the mini world's DTU tree (pretraining and held-out scans)
BASE_SEEDS = (0, 1, 2)  # scene seeds of the base model's training set
BASE_SCANS = tuple(s for s in dtu.ALL_SCANS if s not in dtu.TEST_SCANS)  # never a held-out id
TEXT_WIDTH = 64
MAX_CAPTION_BYTES = 75  # the byte-level tokenizer spends one token per byte; 77 with BOS/EOS
WEIGHTS_LABEL = MINI_WORLD_WEIGHTS
NOTE = MINI_WORLD_NOTE

def camera_angles() -> list[tuple[float, float]]:
    """(polar, azimuth) in degrees of the 49 rendered views, in DTU view order (as `synthetic_cameras`)."""
    angles = []
    for row, (count, polar, half_span, _) in enumerate(CAMERA_ROWS[:5]):
        azimuths = np.linspace(-half_span, half_span, count)
        angles += [(polar, float(a)) for a in (azimuths[::-1] if row % 2 else azimuths)]
    assert len(angles) == dtu.NUM_VIEWS
    return angles


def view_words(view: int) -> str:
    """Viewpoint words of a DTU view, as web captions have them: the camera's row and one of five sides
    ("far left, low"; 23 classes over the 49 cameras)."""
    polar, azimuth = camera_angles()[view]
    if azimuth < -40:
        side = "far left"
    elif azimuth < -15:
        side = "left"
    elif azimuth <= 15:
        side = "front"
    elif azimuth <= 40:
        side = "right"
    else:
        side = "far right"
    height = {38.0: "top", 48.0: "high", 57.0: "middle", 66.0: "low", 74.0: "bottom"}[polar]
    return f"{side}, {height}"


def scene_and_words(seed: int, scan: int) -> tuple[Scene, str]:
    """A scene of the world and the words that name it ("red/blue box, green/yellow ball")."""
    return two_tone_scene(seed, scan)


def scene(seed: int, scan: int) -> Scene:
    return two_tone_scene(seed, scan)[0]


def caption(words: str, view: int | None) -> str:
    """A base-model training caption: the scene's words and, for a known view, coarse view words."""
    text = words + ("" if view is None else f"; {view_words(view)}")
    if len(text) > MAX_CAPTION_BYTES:
        raise ValueError(f"caption {text!r} is longer than the tokenizer's {MAX_CAPTION_BYTES} bytes")
    return text


def base_scenes() -> list[tuple[int, int]]:
    """(seed, scan) of every scene the base model trains on: no held-out scan id at any seed."""
    return [(seed, scan) for seed in BASE_SEEDS for scan in BASE_SCANS]


def held_out_scene(scan: int) -> Scene:
    if scan not in dtu.TEST_SCANS:
        raise ValueError(f"scan {scan} is not a held-out scan of the mini world (those are {dtu.TEST_SCANS})")
    return scene(WORLD_SEED, scan)


def mini_world_configs(noise_schedule: str = "sd21") -> dict[str, dict]:
    """The mini world's model: SD 2.1's UNet block layout (16 cross-attention layers in SD's order,
    v-prediction, SD 2.1's noise schedule unless `noise_schedule` says otherwise), at a width that trains
    on two CPU cores, with a 4x VAE (three encoder blocks) and a three-layer CLIP text encoder over the
    byte-level tokenizer."""
    unet = _sd21_config("unet") | {
        "block_out_channels": [32, 32, 64, 64],
        "attention_head_dim": [2, 2, 4, 4],
        "cross_attention_dim": TEXT_WIDTH,
        "norm_num_groups": 16,
        "sample_size": 16,
    }
    vae = _sd21_config("vae") | {
        "block_out_channels": [16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": SIZE[0],
    }
    text = _sd21_config("text_encoder") | {
        "hidden_size": TEXT_WIDTH,
        "intermediate_size": 4 * TEXT_WIDTH,
        "num_attention_heads": 4,
        "num_hidden_layers": 3,
        "projection_dim": TEXT_WIDTH,
        "vocab_size": 514,
        "bos_token_id": 512,
        "eos_token_id": 513,
        "pad_token_id": 0,
    }
    return {"unet": unet, "vae": vae, "text_encoder": text, "scheduler": noise_schedule_config(noise_schedule)}


def noise_schedule_config(schedule: str) -> dict:
    """The scheduler config of a noise schedule: SD 2.1's (`sd21`), or SD 2.1's rescaled to zero SNR at
    its last timestep (`zero-snr`, Lin et al. 2023), sampled with "trailing" steps so the sampler starts
    there.

    Why: at SD's last timestep a 16x12 latent's per-channel mean still shows through the noise (SNR
    about 0.9 over its 192 pixels), so a model trained on it reads the picture's colours from the noise,
    while sampling starts from noise that holds none. diffusers does the rescale from these two keys;
    the samplers and the fits read the config from the model folder.
    """
    if schedule not in NOISE_SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}: use one of {', '.join(NOISE_SCHEDULES)}")
    config = _sd21_config("scheduler")
    if schedule == "zero-snr":
        config |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    return config


def latent_size(size: tuple[int, int] = SIZE) -> tuple[int, int]:
    factor = 2 ** (len(mini_world_configs()["vae"]["block_out_channels"]) - 1)
    return math.ceil(size[0] / factor), math.ceil(size[1] / factor)
