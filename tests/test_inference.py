"""Novel view synthesis and view-controlled generation from trained runs (tiny model, CPU sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_cli.viewneti import main as cli_main
from viewneti_core.data import dtu
from viewneti_core.errors import PromptError
from viewneti_core.inference import load_run, read_predictions, render_cameras, run_generate, run_inference

FAST = {"num_denoising_steps": 3, "width": 64, "height": 48}
VIEWS = [25, 22, 28, 1, 2]  # the 3 training views of the fit run, then two test views


@pytest.fixture(scope="module")
def inferred(fitted_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("infer") / "step-latest"
    result = run_inference(fitted_run, seeds=[0, 1], views=VIEWS, out_dir=out, camera_path=(25, 28, 3),
                           overrides={"eval": FAST | {"eval_batch_size": 3}}, progress=False)
    return result


def test_infer_writes_predictions_grids_and_a_camera_path(inferred):
    meta, images = read_predictions(inferred.out_dir)
    assert sorted(images) == sorted((seed, cam) for seed in (0, 1) for cam in VIEWS)
    assert all(img.shape == (3, 48, 64) for img in images.values())
    assert meta["weights"] == "random" and inferred.weights == "random"
    assert meta["scan"] == 114 and meta["step"] == 4
    assert {p.name for p in inferred.out_dir.glob("seed*_cam*.png")} == {
        f"seed{s}_cam{c:02d}.png" for s in (0, 1) for c in VIEWS}
    assert [g.name for g in inferred.grids] == ["grid_seed0.png", "grid_seed1.png"]
    with Image.open(inferred.gif) as gif:
        assert gif.n_frames == 3 + 1  # there and back: 3 frames forward, 1 interior frame backward
    # The files hold no pickle: a predictions dir is safetensors + JSON + PNG.
    suffixes = {p.suffix for p in inferred.out_dir.iterdir()}
    assert suffixes <= {".safetensors", ".json", ".png", ".gif"}, suffixes


def test_an_n_view_run_marks_exactly_its_training_views(inferred):
    meta, _ = read_predictions(inferred.out_dir)
    assert meta["n_views"] == 3 and meta["train_cams"] == sorted(dtu.TRAIN_VIEWS[:3])
    # The yellow bar is drawn over exactly the training columns of the ground-truth row.
    grid = np.asarray(Image.open(inferred.grids[0]).convert("RGB")).astype(int)
    yellow = (grid[..., 0] > 230) & (grid[..., 1] > 200) & (grid[..., 1] < 240) & (grid[..., 2] < 30)
    columns = np.flatnonzero(yellow.any(axis=0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(runs) == 3, f"expected 3 yellow-marked columns, found {len(runs)}"
    assert all(len(r) >= 60 for r in runs)  # each bar spans a whole 64-px tile


def test_each_image_depends_only_on_its_seed_and_camera(fitted_run, synthetic_dtu_root):
    """Batch size and the set of other requests do not change an image (beyond float rounding)."""
    cameras = dtu.load_cameras(synthetic_dtu_root)
    run = load_run(fitted_run)
    run.config = run.config.model_copy(update={"eval": run.config.eval.model_copy(update=FAST)})
    batched = render_cameras(run, "<object>", {c: cameras[c] for c in (25, 1)}, [0, 1], progress=False)
    run.config.eval.eval_batch_size = 1
    alone = render_cameras(run, "<object>", {1: cameras[1]}, [1], progress=False)
    torch.testing.assert_close(alone[(1, 1)], batched[(1, 1)], atol=1e-4, rtol=0)
    assert not torch.allclose(batched[(0, 1)], batched[(1, 1)])  # different seeds differ
    assert not torch.allclose(batched[(0, 25)], batched[(0, 1)])  # different cameras differ


def test_cli_infer_and_bad_inputs(fitted_run, synthetic_dtu_root, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["infer", "--run-dir", str(fitted_run), "--step", "2", "--seeds", "3", "--views", "0",
                     "--out", str(out)] + [])
    assert code == 0 and "RANDOM WEIGHTS" in capsys.readouterr().out
    assert json.loads((out / "predictions.json").read_text())["step"] == 2
    # --step 2 rendered with checkpoint 2's mappers: its image is checkpoint 2's render, not the latest's
    _, images = read_predictions(out)
    camera = {0: dtu.load_cameras(synthetic_dtu_root)[0]}
    rendered = {step: render_cameras(load_run(fitted_run, step=step), "<object>", camera, [3], progress=False)[(3, 0)]
                for step in (2, 4)}
    # predictions.safetensors holds 8-bit levels: half a level of rounding, plus float noise
    torch.testing.assert_close(images[(3, 0)], rendered[2], atol=0.5 / 255 + 1e-4, rtol=0)
    assert (images[(3, 0)] - rendered[4]).abs().max() > 2 / 255  # the two checkpoints render differently

    def error_of(*argv: str) -> str:
        assert cli_main(["infer", "--run-dir", str(fitted_run), *argv]) == 2
        return capsys.readouterr().err

    assert "no checkpoint for step 7" in error_of("--step", "7") and "available steps: [2, 4]" in error_of("--step", "7")
    assert "seeds list is empty" in error_of("--seeds", ",")
    assert "out of range" in error_of("--views", "0,49")
    assert "was trained on base model" in error_of("--model", "builtin:sd21-random")
    assert not (fitted_run / "inference").exists()  # nothing half-written by the failed calls


def test_infer_overrides_reach_the_sampler(fitted_run, tmp_path, capsys, monkeypatch):
    """`viewneti infer` takes dotted run/eval overrides on top of the run's saved config."""
    import viewneti_core.inference as inference

    seen = []
    real_sample = inference.ViewNetiSampler.sample

    def spy(self, requests, progress=True):  # records what the real sampler ran with, then runs it
        seen.append((self.settings, self.components.unet.dtype, len(requests)))
        return real_sample(self, requests, progress)

    monkeypatch.setattr(inference.ViewNetiSampler, "sample", spy)
    code = cli_main(["infer", "--run-dir", str(fitted_run), "--seeds", "0,1", "--views", "0", "--out", str(tmp_path / "o"),
                     "--run.dtype", "float32", "--eval.eval_batch_size", "16", "--eval.decode_batch_size", "1",
                     "--eval.num_denoising_steps", "2", "--eval.width", "32", "--eval.height", "24"])
    assert code == 0, capsys.readouterr().err
    [(settings, dtype, n)] = seen
    assert (settings.batch_size, settings.decode_batch_size, settings.num_inference_steps) == (16, 1, 2)
    assert (settings.width, settings.height, dtype, n) == (32, 24, torch.float32, 2)
    _, images = read_predictions(tmp_path / "o")
    assert images[(1, 0)].shape == (3, 24, 32)
    # Only how/what to render may change; the trained part of the config may not.
    assert cli_main(["infer", "--run-dir", str(fitted_run), "--optim.learning_rate", "1"]) == 2
    assert "cannot change for a trained run" in capsys.readouterr().err


def test_generate_with_a_user_prompt(fitted_run, synthetic_dtu_root, tmp_path):
    from viewneti_core.config import ViewNetiConfig

    config = ViewNetiConfig.model_validate({"eval": FAST, "run": {"device": "cpu"}})
    cameras = {c: dtu.load_cameras(synthetic_dtu_root)[c] for c in (25, 40)}
    paths = run_generate(str(fitted_run), "<view>. A photo of a teddy bear", cameras, [0], tmp_path / "gen",
                         config=config, progress=False)
    assert [p.name for p in paths] == ["seed0_cam25_random-weights.png", "seed0_cam40_random-weights.png"]
    first, second = (np.asarray(Image.open(p)) for p in paths)
    assert first.shape == (48, 64, 3) and not np.array_equal(first, second)
    with pytest.raises(PromptError):
        run_generate(str(fitted_run), "A photo of a teddy bear", cameras, [0], tmp_path / "bad", config=config,
                     progress=False)


def test_cli_generate_from_dtu_indices(fitted_run, synthetic_dtu_root, tmp_path, capsys):
    code = cli_main(["generate", "--view-mapper", str(fitted_run), "--prompt", "<view>. A photo of a chair",
                     "--cameras", "25", "--camera-root", str(synthetic_dtu_root), "--out", str(tmp_path / "g"),
                     "--eval.num_denoising_steps", "2", "--eval.width", "64", "--eval.height", "48",
                     "--run.device", "cpu"])
    assert code == 0
    assert (tmp_path / "g" / "seed0_cam25_random-weights.png").is_file()
    code = cli_main(["generate", "--view-mapper", str(fitted_run), "--prompt", "<view>. A photo of a chair",
                     "--cameras", "25,64", "--camera-root", str(synthetic_dtu_root), "--out", str(tmp_path / "h")])
    assert code == 2 and "out of range" in capsys.readouterr().err
