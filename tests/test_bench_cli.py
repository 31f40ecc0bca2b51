"""`viewneti bench` keeps working: the smallest possible runs of each benchmark through the CLI.

Not a speed test (those numbers live in BENCHMARKS.md); it checks that both paths run, that the JSON
record holds what BENCHMARKS.md quotes, and that the two scene paths render the same images.
"""

from __future__ import annotations

import json

import pytest
import torch

from viewneti_cli.viewneti import main

TINY = ["--model", "tiny", "--device", "cpu", "--dtype", "fp32", "--no-warmup", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _result(out_dir, name: str) -> dict:
    (path,) = out_dir.glob(f"{name}-tiny-cpu-test-*.json")
    return json.loads(path.read_text())


def test_bench_scene_runs_both_paths(tmp_path):
    code = main(["bench", "scene", *TINY, "--views", "2", "--seeds", "1", "--steps", "2", "--size", "32x24",
                 "--out", str(tmp_path), "--tag", "test"])
    assert code == 0
    result = _result(tmp_path, "scene")
    assert result["weights"].startswith("random") and result["command"].startswith("python -m bench scene")
    assert result["ours"]["seconds"] > 0 and result["reference"]["seconds"] > 0
    assert result["reference"]["max_abs_image_diff_vs_ours"] < 1e-4
    assert result["ours"]["flops"]["total"] > 0
    infer = result["infer_command"]  # `viewneti infer` end to end: load, render, write
    assert infer["seconds"] > 0 and infer["images"] == 2 and infer["grids"] == 1
    assert "float32 torch.mm" in result["peak_label"]  # the CPU peak is measured in the run's dtype


@pytest.mark.parametrize("which", ["fit", "pretrain"])
def test_bench_training_runs_both_paths(tmp_path, which):
    code = main(["bench", which, *TINY, "--train-size", "32x24", "--batch", "1", "--accumulation", "1",
                 "--train-steps", "1", "--train-warmup", "1", "--reference-train-steps", "1", "--no-flops",
                 "--out", str(tmp_path), "--tag", "test"])
    assert code == 0
    result = _result(tmp_path, which)
    assert result["ours"]["steps_per_s"] > 0 and result["reference"]["steps_per_s"] > 0
    assert result["settings"]["learnable_mode"] == (5 if which == "fit" else 3)
    loop = result["ours_train_loop"]  # the real train() loop, timed through its step callback
    assert loop["timed_steps"] == 1 and loop["steps_per_s"] > 0 and loop["projected_" + str(
        3000 if which == "fit" else 50_000) + "_steps_s"] > 0
