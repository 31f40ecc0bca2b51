"""`viewneti infer` / `generate` refuse bad arguments before any work: one clear error, nothing written
(issue 21, items 4 and 5). The refusals come before the model is loaded: a wrong `--model` given with a
bad argument is not what is reported."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from viewneti_cli.viewneti import main as cli_main
from viewneti_core.errors import PromptError
from viewneti_core.render_args import MAX_PATH_FRAMES

REPO = Path(__file__).resolve().parents[1]
FAST = ["--eval.num_denoising_steps", "2", "--eval.width", "64", "--eval.height", "48"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--camera-path", "25", "28", "0"], "FRAMES is 0; a path needs 2..1000 frames"),
    (["--camera-path", "25", "28", "1"], "FRAMES is 1"),
    (["--camera-path", "25", "28", "-3"], "FRAMES is -3"),
    (["--camera-path", "25", "28", str(MAX_PATH_FRAMES + 1)], f"FRAMES is {MAX_PATH_FRAMES + 1}"),
    (["--camera-path", "-1", "28", "3"], "camera index(es) [-1] out of range: the cameras are 0..63"),
    (["--camera-path", "25", "64", "3"], "camera index(es) [64] out of range"),
    (["--camera-path", "25", "25", "3"], "FROM and TO are the same camera"),
    (["--views", ","], "--views: no camera given"),
    (["--views=-1,2"], "camera index(es) [-1] out of range"),
    (["--seeds", ","], "the seeds list is empty"),
    (["--eval.width", "100000"], "eval.width 100000 exceeds the 4096-pixel limit"),
    (["--eval.width", "4096", "--eval.height", "4096", "--seeds", "0,1,2", "--views", ",".join(map(str, range(40)))],
     "120 images of 4096x4096 need 22.5 GiB held in memory"),
    (["--seeds", ",".join(map(str, range(300))), "--views", ",".join(map(str, range(49)))],
     "14700 images (cameras x seeds) requested; one call renders at most 10000"),
])
def test_infer_refuses_bad_arguments_before_any_work(fitted_run, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    # --model names another base model: load_run would refuse it, so the argument check must come first
    code = cli_main(["infer", "--run-dir", str(fitted_run), "--out", str(out), "--model", "builtin:sd21-random",
                     *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "was trained on base model" not in err
    assert not out.exists() and not (fitted_run / "inference").exists()  # nothing written


def test_repeated_seeds_and_views_are_rendered_once_with_one_log_line(fitted_run, tmp_path, capsys, caplog,
                                                                      listen_to):
    out = tmp_path / "out"
    with listen_to("viewneti_core.render_args", logging.WARNING):
        code = cli_main(["infer", "--run-dir", str(fitted_run), "--out", str(out), "--seeds", "1,0,1",
                         "--views", "2,25,2,2", *FAST])
    assert code == 0, capsys.readouterr().err
    index = json.loads((out / "predictions.json").read_text())
    assert index["seeds"] == [1, 0] and index["cams"] == [2, 25]
    assert sorted((e["seed"], e["cam"]) for e in index["images"]) == [(0, 2), (0, 25), (1, 2), (1, 25)]
    lines = [r.getMessage() for r in caplog.records if r.name == "viewneti_core.render_args"]
    assert lines == ["--seeds: dropped 1 repeated value(s) [1]; each is rendered once",
                     "--views: dropped 2 repeated value(s) [2]; each is rendered once"]


def test_negative_camera_path_endpoint_in_a_real_process(fitted_run, tmp_path):
    """`-1 28 3` used to wrap to camera 63 silently; now the command fails at once and writes nothing."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "viewneti_cli.viewneti", "infer", "--run-dir", str(fitted_run),
                           "--out", str(out), "--camera-path", "-1", "28", "3"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--camera-path: camera index(es) [-1] out of range" in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--cameras", ","], "--cameras: no camera given"),
    (["--cameras", "25,-1"], "camera index(es) [-1] out of range"),
    (["--seeds", ","], "the seeds list is empty"),
    (["--cameras", "25", "--eval.height", "99999"], "eval.height 99999 exceeds"),
    (["--prompt", "<view>. a photo of a <object>"], "uses placeholder(s) ['<object>'] that have no mapper"),
    (["--prompt", "<view>. <scan8> on a table"], "['<scan8>']"),
    (["--prompt", "a photo of a chair"], "has no <view> token, so the cameras would be ignored"),
])
def test_generate_refuses_bad_arguments_before_loading(synthetic_dtu_root, tmp_path, capsys, argv, message):
    # the view mapper does not exist: every check above must fire before it is looked for
    base = {"--view-mapper": str(tmp_path / "no-such-run"), "--prompt": "<view>. A photo of a chair",
            "--cameras": "25", "--camera-root": str(synthetic_dtu_root), "--out": str(tmp_path / "g")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    code = cli_main(["generate", *[x for pair in base.items() for x in pair]])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "g").exists()


def test_a_placeholder_without_a_mapper_is_refused_by_the_text_conditioner(model):
    """The class of the failure: any <name> the loaded mappers do not cover, whatever the caller."""
    ids = model.conditioner.tokenize(["<view>. A photo of a <object>"], has_camera=True)  # loaded: accepted
    assert ids.shape[0] == 1
    with pytest.raises(PromptError, match=r"\['<teddy>'\] that have no mapper"):
        model.conditioner.tokenize(["<view>. A photo of a <teddy>"], has_camera=True)
