"""`python -m bench.mini_world_levers` on the real build loops at toy scale: it writes its result and its
grid, and its two definitions (the mirrored camera, PSNR) say what the docs say."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from bench import mini_world_levers as levers
from viewneti_core.data import dtu
from viewneti_core.mini_world import world as mini_world


def test_mirror_view_is_the_same_row_at_the_opposite_azimuth():
    angles = mini_world.camera_angles()
    for view in range(dtu.NUM_VIEWS):
        mirrored = levers.mirror_view(view)
        assert angles[mirrored][0] == angles[view][0]
        assert angles[mirrored][1] == pytest.approx(-angles[view][1], abs=1e-9)
    assert levers.mirror_view(37) == 48 and levers.mirror_view(levers.mirror_view(20)) == 20


def test_psnr_is_the_8_bit_definition_over_the_mask():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 10  # one pixel off by 10 in all channels
    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    assert levers.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / (100 / 16)))
    assert levers.psnr(a, b, mask) == pytest.approx(10 * math.log10(255**2 / 50))


@pytest.mark.slow
def test_a_toy_run_writes_its_result_and_grid(tmp_path):
    out = tmp_path / "levers"
    args = ["--scenes", "two-tone", "--n-scenes", "2", "--vae-steps", "2", "--unet-steps", "2", "--eval-scenes", "1",
            "--denoising-steps", "2", "--threads", "1", "--out", str(out)]
    assert levers.main(args) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n_scenes"] == 2 and result["unet_steps"] == 2 and result["scenes"] == "two-tone"
    for key in ("sample_psnr", "mean_image_psnr", "view_gap", "vae_psnr_whole", "vae_psnr_objects"):
        assert math.isfinite(result[key]), key
    assert 5 < result["mean_image_psnr"] < 40  # the mean of a scene's own views against one of them
    with Image.open(out / "samples_over_truth.png") as grid:  # 1 row of samples over 1 row of truths
        assert grid.size == (len(levers.EVAL_VIEWS) * mini_world.SIZE[0], 2 * mini_world.SIZE[1])
    assert [p.name for p in tmp_path.iterdir()] == ["levers"]  # no temp directory left behind


def test_model_option_scores_the_shipped_model_without_training_it(tmp_path):
    """`--model builtin:mini-world` scores the shipped weights on their own training scenes: nothing is
    trained (no losses), the parameter count is the shipped UNet's, and the VAE ceiling is the shipped VAE's."""
    from viewneti_core.base_model.sd_models import load_components

    out = tmp_path / "shipped"
    args = ["--model", "builtin:mini-world", "--n-scenes", "1", "--eval-scenes", "1", "--denoising-steps", "2",
            "--threads", "1", "--out", str(out)]
    assert levers.main(args) == 0
    result = json.loads((out / "result.json").read_text())
    shipped = load_components("builtin:mini-world")
    assert result["model"] == "builtin:mini-world" and result["vae_loss"] is None and result["unet_loss"] is None
    assert result["unet_parameters"] == sum(p.numel() for p in shipped.unet.parameters())
    assert "unet_s" not in result["seconds"] and "vae_s" not in result["seconds"]
    # The shipped VAE reconstructs its own world far better than the 2-step toy VAE above could (measured
    # 28.9 dB on whole images over 6 scenes, 2026-12-05); a random or untrained VAE scores near 10 dB.
    assert result["vae_psnr_whole"] > 24, result["vae_psnr_whole"]
