"""`viewneti` commands as a user types them: `train --resume`, `infer --token` on a mode-3 run with
`--camera-path`, and `generate --cameras` from a JSON file (tiny model, 64x48 synthetic DTU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from viewneti_cli.viewneti import main as cli_main
from viewneti_core.data import dtu
from viewneti_core.inference import read_predictions
from viewneti_core.training.checkpoints import list_checkpoints, load_checkpoint_mappers

# ---- train --resume ---------------------------------------------------------------------------------


def _train_config(path: Path, root: Path, model: Path, runs: Path) -> Path:
    path.write_text(
        "learnable_mode: 2\nrun: {device: cpu}\n"
        f"log: {{exp_dir: '{runs}', save_steps: 2, report_to: none}}\n"
        f"data: {{train_data_dir: '{root}', width: 64, height: 48, augmentation: fitting, repeats: 4}}\n"
        f"model: {{pretrained_model_name_or_path: '{model}'}}\n"
        "eval: {validation_steps: 1000, final_validation: false}\n"
        "optim: {max_train_steps: 4, gradient_accumulation_steps: 1, train_batch_size: 1, scale_lr: false, "
        "learning_rate: 0.01}\n"
    )
    return path


@pytest.fixture
def one_thread():
    """Multi-threaded CPU reductions round differently from run to run, and Adam's first steps
    (update ~ lr * sign(g)) turn a 1e-9 flip of a near-zero gradient into a 2*lr weight change: one
    thread makes the straight and the resumed run computably identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_train_resume_continues_the_run_exactly(synthetic_dtu_root, tiny_model_dir, tmp_path, capsys, one_thread):
    config = str(_train_config(tmp_path / "mode2.yaml", synthetic_dtu_root, tiny_model_dir, tmp_path / "runs"))
    assert cli_main(["train", "--config", config, "--log.exp_name", "straight"]) == 0
    # The same run, stopped after its step-2 checkpoint (a shorter run), then resumed to 4 steps.
    assert cli_main(["train", "--config", config, "--log.exp_name", "resumed", "--optim.max_train_steps", "2"]) == 0
    capsys.readouterr()
    assert cli_main(["train", "--config", config, "--log.exp_name", "resumed", "--resume", "latest"]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    runs = tmp_path / "runs"
    assert [p.name for p in list_checkpoints(runs / "resumed")] == ["checkpoint-2", "checkpoint-4"]
    want = load_checkpoint_mappers(list_checkpoints(runs / "straight")[-1])
    got = load_checkpoint_mappers(list_checkpoints(runs / "resumed")[-1])
    assert sorted(want) == sorted(got)
    # Equal up to float rounding: two identical runs in one process already differ by ~1e-7 here (CPU
    # kernels), while a resume that lost the optimizer moments, the RNG or the data position is off by far more.
    for key in want:
        for name, tensor in want[key].state_dict().items():
            torch.testing.assert_close(got[key].state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=(key, name))
    straight = [json.loads(line) for line in (runs / "straight" / "metrics.jsonl").read_text().splitlines()]
    resumed = {r["step"]: r for r in map(json.loads, (runs / "resumed" / "metrics.jsonl").read_text().splitlines())}
    assert sorted(resumed) == [1, 2, 3, 4]
    assert [resumed[r["step"]]["loss"] for r in straight] == pytest.approx([r["loss"] for r in straight], rel=1e-5)

    # Resuming something that is not there: exit code 2 and a message, no traceback.
    assert cli_main(["train", "--config", config, "--log.exp_name", "never-ran", "--resume", "latest"]) == 2
    assert "cannot resume: run directory" in capsys.readouterr().err
    assert cli_main(["train", "--config", config, "--log.exp_name", "resumed", "--resume", "3"]) == 2
    assert "no checkpoint for step 3" in capsys.readouterr().err


# ---- infer --token (mode 3) and --camera-path ---------------------------------------------------------


def test_cli_infer_a_mode_3_token_along_a_camera_path(pretrained_run, tmp_path, capsys):
    outs = {}
    for token in ("<scan21>", "<scan2>"):
        out = tmp_path / token.strip("<>")
        code = cli_main(["infer", "--run-dir", str(pretrained_run), "--token", token, "--views", "25,1",
                         "--seeds", "0", "--camera-path", "25", "28", "3", "--out", str(out)])
        printed = capsys.readouterr().out
        assert code == 0
        gif = out / "path_cam25_to_cam28_seed0.gif"
        assert f"camera path: {gif}" in printed
        meta, images = read_predictions(out)
        assert meta["learnable_mode"] == 3 and meta["object_token"] == token
        assert meta["scan"] == {"<scan21>": 21, "<scan2>": 2}[token]  # the scan the token stands for
        assert meta["n_views"] == 0 and meta["train_cams"] == []  # mode 3 trains on all views
        assert sorted(images) == [(0, 1), (0, 25)]
        assert (out / "grid_seed0.png").is_file()  # its scan's ground truth row
        with Image.open(gif) as animation:
            assert animation.n_frames == 4  # 3 frames there, 1 interior frame back
            frames = []
            for i in range(animation.n_frames):
                animation.seek(i)
                frames.append(np.asarray(animation.convert("RGB")).astype(int))
        assert frames[0].shape == (48, 64, 3)
        assert np.abs(frames[0] - frames[2]).mean() > 1, "the camera moves along the path"
        np.testing.assert_array_equal(frames[1], frames[3])  # back through the middle frame
        outs[token] = images
    # Each token is its own object: same seed and camera, different images.
    assert (outs["<scan21>"][(0, 25)] - outs["<scan2>"][(0, 25)]).abs().float().mean() > 1e-3

    assert cli_main(["infer", "--run-dir", str(pretrained_run), "--token", "<scan8>", "--views", "25",
                     "--out", str(tmp_path / "bad")]) == 2
    assert "'<scan8>' is not a token of this run; it has ['<scan21>', '<scan2>']" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---- generate --cameras FILE.json ------------------------------------------------------------------------


def test_cli_generate_cameras_from_a_json_file(fitted_run, synthetic_dtu_root, tmp_path, capsys):
    cameras = dtu.load_cameras(synthetic_dtu_root)
    camera_file = tmp_path / "cameras.json"
    camera_file.write_text(json.dumps([cameras[25].tolist(), cameras[40].tolist()]))
    common = ["generate", "--view-mapper", str(fitted_run), "--prompt", "<view>. A photo of a chair",
              "--eval.num_denoising_steps", "2", "--eval.width", "64", "--eval.height", "48", "--run.device", "cpu"]
    assert cli_main([*common, "--cameras", str(camera_file), "--out", str(tmp_path / "json")]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    from_json = sorted((tmp_path / "json").glob("*.png"))
    assert [p.name for p in from_json] == ["seed0_cam00_random-weights.png", "seed0_cam01_random-weights.png"]
    # The file's matrices are DTU cameras 25 and 40: the same images as naming those cameras.
    assert cli_main([*common, "--cameras", "25,40", "--camera-root", str(synthetic_dtu_root),
                     "--out", str(tmp_path / "dtu")]) == 0
    by_index = [tmp_path / "dtu" / f"seed0_cam{c}_random-weights.png" for c in (25, 40)]
    for a, b in zip(from_json, by_index, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    assert not np.array_equal(np.asarray(Image.open(from_json[0])), np.asarray(Image.open(from_json[1])))

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1.0, 0.0, 0.0, 0.0]] * 3))  # one 3x4 matrix, not a list of them
    assert cli_main([*common, "--cameras", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert f"{bad} must hold a list of 3x4 projection matrices, got shape (3, 4)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_cli_generate_indices_without_a_camera_root(fitted_run, tmp_path, capsys):
    assert cli_main(["generate", "--view-mapper", str(fitted_run), "--prompt", "<view>. A photo of a chair",
                     "--cameras", "25", "--out", str(tmp_path / "g")]) == 2
    assert "DTU camera indices need --camera-root" in capsys.readouterr().err
