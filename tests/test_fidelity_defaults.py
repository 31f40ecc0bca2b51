"""The shipped defaults and configs reproduce the original's settings (docs/fidelity.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from viewneti_core.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_default_evaluation_follows_the_original_inference_config():
    config = load_config()
    assert config.eval.seeds == [0, 1]  # input_configs/inference.yaml
    assert config.eval.num_denoising_steps == 30 and config.eval.guidance_scale == 7.5
    assert config.eval.final_sigmas_type == "sigma_min"  # diffusers 0.14's last step


def test_pretraining_is_the_released_50k_step_run():
    config = load_config(CONFIGS / "pretrain_mode3.yaml")
    assert config.optim.max_train_steps == 50_000 and config.log.save_steps == 5_000
    assert config.data.augmentation == "pretraining"
    from flows.params import load_benchmark_config

    bench = load_benchmark_config(CONFIGS / "dtu_benchmark.yaml")
    assert bench.pretrain.optim.max_train_steps == 50_000
    assert bench.fit.eval.seeds == [0, 1]


@pytest.mark.parametrize("name", ["fit_mode5_1view.yaml", "fit_mode5_3view.yaml", "pretrain_mode3.yaml",
                                  "train_mode2_single_scene.yaml"])
def test_paper_variants_train_in_float32_without_tf32_and_differ_in_nothing_else(name):
    fast = load_config(CONFIGS / name).model_dump()
    paper = load_config(CONFIGS / "paper" / name).model_dump()
    assert paper["optim"]["mixed_precision"] == "no" and paper["optim"]["allow_tf32"] is False
    assert fast["optim"]["mixed_precision"] == "bf16"
    assert paper["log"]["exp_name"] == "paper_" + fast["log"]["exp_name"]  # never resumes the bf16 run
    for section in ("optim", "log"):
        for key in ("mixed_precision", "allow_tf32", "exp_name"):
            fast[section].pop(key, None)
            paper[section].pop(key, None)
    assert paper == fast


def test_run_configs_written_before_debug_was_retired_still_load(tmp_path):
    """Run directories of earlier versions carry `debug: false` in config.yaml; they must stay usable."""
    old = tmp_path / "config.yaml"
    old.write_text("learnable_mode: 5\ndebug: false\noptim: {max_train_steps: 7}\n")
    config = load_config(old)
    assert config.optim.max_train_steps == 7 and "debug" not in config.model_dump()
    with pytest.raises(ConfigError, match="debg"):  # other unknown keys are still refused, by name
        load_config(None, {"debg": True})
