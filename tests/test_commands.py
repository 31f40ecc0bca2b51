"""Commands that users run and that no other test ran: the installed `viewneti` console script,
`models make-sd21-random` (its architecture, on the meta device: the real one is 5 GB of random weights),
`models build-mini-world` as a trial build, and `python -m bench all` at the smallest settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from viewneti_core.base_model.sd_models import build_components, load_components

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("viewneti")  # what `pip install` put next to this python


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_console_script_makes_the_tiny_model(tmp_path):
    """The `viewneti` entry point itself (not `python -m`), run from outside the repository."""
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is missing: the package is not installed in this venv"
    done = _run([str(CONSOLE_SCRIPT), "models", "make-tiny", "--out", str(tmp_path / "tiny"), "--seed", "3"],
                cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"wrote the tiny model (RANDOM WEIGHTS) in diffusers format to {tmp_path / 'tiny'}" in done.stdout
    loaded, expected = load_components(tmp_path / "tiny"), build_components("tiny", seed=3)
    assert loaded.weights == "random"
    got, want = loaded.unet.state_dict(), expected.unet.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # seed 3's weights
    again = _run([str(CONSOLE_SCRIPT), "models", "make-tiny", "--out", str(tmp_path / "tiny")], cwd=tmp_path)
    assert again.returncode != 0 and "exists and is not empty" in again.stdout + again.stderr


def test_sd21_random_has_the_sd21_architecture_on_the_meta_device():
    """`make-sd21-random` builds SD 2.1's UNet, VAE and OpenCLIP text encoder: parameter counts as published
    for stabilityai/stable-diffusion-2-1, and one UNet/VAE/text forward pass with the 768x576 shapes."""
    with torch.device("meta"):
        components = build_components("sd21-random")
    counts = {name: sum(p.numel() for p in getattr(components, name).parameters())
              for name in ("unet", "vae", "text_encoder")}
    assert counts == {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}, counts
    assert components.unet.config.cross_attention_dim == components.text_encoder.config.hidden_size == 1024
    assert components.scheduler.config.prediction_type == "v_prediction"  # SD 2.1 (768) predicts v
    with torch.no_grad():
        ids = torch.zeros(2, 77, dtype=torch.long, device="meta")
        text = components.text_encoder(ids)[0]
        latents = torch.zeros(2, 4, 72, 96, device="meta")
        noise = components.unet(latents, torch.tensor(999, device="meta"), encoder_hidden_states=text).sample
        image = components.vae.decode(latents).sample
    assert text.shape == (2, 77, 1024) and noise.shape == latents.shape and image.shape == (2, 3, 576, 768)


def test_build_mini_world_refuses_a_learning_rate_that_is_not_positive(tmp_path):
    done = _run([str(CONSOLE_SCRIPT), "models", "build-mini-world", "--out", str(tmp_path / "w"), "--unet-lr", "0"],
                cwd=tmp_path)
    assert done.returncode == 2 and "--unet-lr: must be positive, got 0" in done.stderr, done.stderr
    assert not (tmp_path / "w").exists()


def test_build_mini_world_refuses_a_device_it_cannot_use(tmp_path):
    """The suite hides CUDA, so `--device cuda` must be refused at once, naming the option and the way out."""
    done = _run([str(CONSOLE_SCRIPT), "models", "build-mini-world", "--out", str(tmp_path / "w"), "--device", "cuda"],
                cwd=tmp_path)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--device cuda: PyTorch sees no CUDA device here" in done.stdout and "--device cpu" in done.stdout
    assert not (tmp_path / "w").exists() and not (tmp_path / ".w.build").exists()  # nothing started
    done = _run([str(CONSOLE_SCRIPT), "models", "build-mini-world", "--out", str(tmp_path / "w"), "--device", "gpu0"],
                cwd=tmp_path)
    assert done.returncode == 2 and "--device gpu0:" in done.stdout and "cuda:N" in done.stdout, done.stdout[-2000:]


@pytest.mark.slow  # a trial build: every phase of the real one, a few steps each (~1 min on 2 cores)
def test_build_mini_world_trial_through_the_cli(tmp_path):
    out = tmp_path / "world"
    done = _run([str(CONSOLE_SCRIPT), "models", "build-mini-world", "--out", str(out), "--scenes-per-seed", "1",
                 "--vae-steps", "2", "--unet-steps", "2", "--view-mapper-steps", "2", "--checkpoint-every", "2",
                 "--unet-lr", "5e-4", "--unet-batch", "4", "--noise-schedule", "zero-snr", "--device", "cpu"],
                cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"to {out}" in done.stdout
    components = load_components(out / "model")
    assert components.weights == "mini-world"
    assert float(components.scheduler.alphas_cumprod[-1]) == 0.0  # the zero-SNR schedule travels with the model
    from viewneti_core.training.checkpoints import read_checkpoint_info

    info = read_checkpoint_info(out / "view-mapper")
    assert info["base_model"] == str((out / "model").absolute()) and info["step"] == 2
    record = json.loads((out / "build.json").read_text())
    assert record["options"]["scenes_per_seed"] == 1 and record["options"]["unet_steps"] == 2, record
    assert record["options"]["unet_lr"] == 5e-4 and record["options"]["unet_batch"] == 4, record
    assert record["options"]["noise_schedule"] == "zero-snr", record
    assert record["devices"] == ["cpu"], record
    again = _run([str(CONSOLE_SCRIPT), "models", "build-mini-world", "--out", str(out)], cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stdout  # one clear error, nothing replaced


@pytest.mark.slow  # three benchmarks, both paths each (~1 min on 2 cores)
def test_bench_all_as_a_module(tmp_path):
    """`python -m bench all` runs scene, fit and pretrain in one go and writes one JSON per benchmark."""
    done = _run([sys.executable, "-m", "bench", "all", "--model", "tiny", "--device", "cpu", "--dtype", "fp32",
                 "--threads", "1", "--no-warmup", "--views", "1", "--seeds", "1", "--steps", "2", "--size", "32x24",
                 "--train-size", "32x24", "--batch", "1", "--accumulation", "1", "--train-steps", "1",
                 "--train-warmup", "1", "--reference-train-steps", "1", "--no-flops", "--scenes", "2",
                 "--no-infer-command", "--no-train-loop",  # tests/test_bench_cli.py runs those parts
                 "--out", str(tmp_path), "--tag", "all"], cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = {}
    for name in ("scene", "fit", "pretrain"):
        (path,) = tmp_path.glob(f"{name}-tiny-cpu-all-*.json")
        assert f"result JSON: {path}" in done.stdout
        results[name] = json.loads(path.read_text())
        assert results[name]["command"].startswith("python -m bench all --model tiny")
    assert results["scene"]["reference"]["max_abs_image_diff_vs_ours"] < 1e-4
    assert results["scene"]["ours"]["seconds"] > 0
    assert results["fit"]["settings"]["learnable_mode"] == 5 and results["pretrain"]["settings"]["learnable_mode"] == 3
    for name in ("fit", "pretrain"):
        assert results[name]["ours"]["steps_per_s"] > 0 and results[name]["reference"]["steps_per_s"] > 0
