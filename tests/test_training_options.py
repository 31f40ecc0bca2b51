"""Training options that change what `train()` does, each observed in what a run writes or computes.

LR schedule (metrics.jsonl and a resumed run), gradient clipping (the gradient norm the optimizer
sees, read by a real torch optimizer hook), fp16 mixed precision, checkpoint pruning, the output
bypass, and the pretrained view mapper's step. Tiny model, 64x48 synthetic DTU, a few steps each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.runs import make_train_config
from torch.optim.optimizer import register_optimizer_step_pre_hook

from viewneti_core.config import ViewNetiConfig
from viewneti_core.inference import load_run, mapper_camera_inputs
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.method.model import build_model
from viewneti_core.training.checkpoints import list_checkpoints, load_checkpoint_mappers, read_checkpoint_info
from viewneti_core.training.trainer import METRICS_FILE, train


def metrics_by_step(run_dir: Path) -> dict[int, dict]:
    """The last metrics.jsonl record of each step (a resumed run re-logs the steps after its checkpoint)."""
    lines = (run_dir / METRICS_FILE).read_text().splitlines()
    return {record["step"]: record for record in map(json.loads, lines)}


class Killed(RuntimeError):
    pass


def kill_at(step_to_kill: int):
    def hook(step: int) -> None:
        if step == step_to_kill:
            raise Killed

    return hook


# ---- lr_scheduler constant_with_warmup -----------------------------------------------------------


def warmup_lr(base: float, warmup: int, step: int) -> float:
    """diffusers' constant_with_warmup, stated independently: linear from 0 to `base` over `warmup`
    optimizer steps, then constant; the lr logged after optimizer step k is the one step k+1 uses."""
    return base * min(1.0, step / warmup)


def test_constant_with_warmup_schedule_and_its_resumption(synthetic_dtu_root, tiny_model_dir, tmp_path):
    sections = {"optim": {"max_train_steps": 6, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 4,
                          "learning_rate": 1e-2},
                "log": {"save_steps": 2}}
    full = train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "full", **sections), progress=False)
    logged = metrics_by_step(full.run_dir)
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    for step, record in logged.items():
        assert record["lr"] == pytest.approx(warmup_lr(1e-2, 4, step), rel=1e-9), step

    # Killed after step 3 (last checkpoint: step 2); the resumed run continues the warmup where it was,
    # it does not start it again (which would log 1/4 of the lr at step 3).
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "killed", **sections)
    with pytest.raises(Killed):
        train(config, on_step_end=kill_at(3), progress=False)
    resumed = train(config, resume="latest", progress=False)
    relogged = metrics_by_step(resumed.run_dir)
    assert [relogged[s]["lr"] for s in range(1, 7)] == pytest.approx([warmup_lr(1e-2, 4, s) for s in range(1, 7)],
                                                                     rel=1e-9)
    assert resumed.losses == pytest.approx(full.losses[2:], abs=0)  # and the same steps, bit for bit


# ---- max_grad_norm --------------------------------------------------------------------------------


@pytest.fixture
def gradient_norms():
    """The total gradient norm of every optimizer.step() in this test (a global torch optimizer hook)."""
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad.detach().float() for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    yield norms
    handle.remove()


def test_max_grad_norm_clips_the_gradient_the_optimizer_sees(synthetic_dtu_root, tiny_model_dir, tmp_path,
                                                              gradient_norms):
    steps = {"optim": {"max_train_steps": 3}}
    train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "raw", **steps), progress=False)
    raw = list(gradient_norms)
    assert len(raw) == 3 and all(n > 0 for n in raw)
    gradient_norms.clear()

    limit = raw[0] / 4  # well below the first step's norm (same seed: identical first-step gradient)
    steps["optim"]["max_grad_norm"] = limit
    train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "clipped", **steps), progress=False)
    clipped = list(gradient_norms)
    assert len(clipped) == 3
    # torch's clip_grad_norm_ scales by limit / (norm + 1e-6): the clipped norm is the limit (to 1e-6).
    assert clipped[0] == pytest.approx(limit, rel=1e-4), (raw[0], limit, clipped[0])
    assert max(clipped) <= limit * (1 + 1e-4), (limit, clipped)


# ---- mixed_precision fp16 -------------------------------------------------------------------------


def test_fp16_mixed_precision_on_cpu(synthetic_dtu_root, tiny_model_dir, tmp_path):
    """fp16 frozen weights + autocast + gradient scaling, on CPU: finite losses, fp32 mappers that moved."""
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "fp16",
                               optim={"max_train_steps": 3, "mixed_precision": "fp16"})
    result = train(config, progress=False)
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()
    mappers = load_checkpoint_mappers(result.final_checkpoint)
    assert all(p.dtype == torch.float32 for m in mappers.values() for p in m.parameters())
    assert read_checkpoint_info(result.final_checkpoint)["config"]["optim"]["mixed_precision"] == "fp16"
    # fp32 run, same seed: the fp16 run computed something different (its loss is not the fp32 one)
    fp32 = train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "fp32",
                                   optim={"max_train_steps": 1}), progress=False)
    assert result.losses[0] != fp32.losses[0]
    assert result.losses[0] == pytest.approx(fp32.losses[0], rel=5e-2)


# ---- checkpoints_total_limit ------------------------------------------------------------------------


def test_checkpoints_total_limit_prunes_the_oldest(synthetic_dtu_root, tiny_model_dir, tmp_path):
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "pruned",
                               optim={"max_train_steps": 5}, log={"save_steps": 1, "checkpoints_total_limit": 2})
    seen: list[list[str]] = []
    result = train(config, on_step_end=lambda step: seen.append([p.name for p in list_checkpoints(tmp_path / "pruned")]),
                   progress=False)
    assert seen == [["checkpoint-1"], ["checkpoint-1", "checkpoint-2"], ["checkpoint-2", "checkpoint-3"],
                    ["checkpoint-3", "checkpoint-4"], ["checkpoint-4", "checkpoint-5"]]
    assert result.final_checkpoint == tmp_path / "pruned" / "checkpoints" / "checkpoint-5"
    assert sorted(p.name for p in (tmp_path / "pruned" / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-5"]


# ---- output_bypass false ------------------------------------------------------------------------------


def _encode_view_prompt(run, cameras) -> tuple[torch.Tensor, torch.Tensor]:
    conditioner = run.model.conditioner
    vectors = mapper_camera_inputs({25: cameras[25]}, run.config.data.camera_representation)
    ids = conditioner.tokenize(["<view>. A photo of a <object>"], True)
    with torch.no_grad():
        return conditioner.encode(ids, torch.tensor([500.0]), vectors[25][None])


def test_output_bypass_false_trains_and_renders_without_the_bypass(synthetic_dtu_root, tiny_model_dir, tmp_path):
    from viewneti_core.data import dtu

    steps = {"optim": {"max_train_steps": 2}}
    with_bypass = train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "bypass", **steps),
                        progress=False)
    without = train(make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 2, "no-bypass",
                                      model={"output_bypass": False}, **steps), progress=False)
    # Same seed, same draws, same initial mappers: only the conditioning differs, so the loss does.
    assert without.losses[0] != with_bypass.losses[0]
    assert read_checkpoint_info(without.final_checkpoint)["output_bypass"] is False

    cameras = dtu.load_cameras(synthetic_dtu_root)
    run = load_run(without.run_dir, device="cpu")
    assert run.model.conditioner.output_bypass is False  # the run's setting is what inference uses
    keys, values = _encode_view_prompt(run, cameras)
    torch.testing.assert_close(values, keys, rtol=0, atol=0)  # no bypass: values are the keys
    # The same mappers with the bypass switched on: values move away from the keys.
    bypass_config = ViewNetiConfig.model_validate(
        run.config.model_dump(mode="json") | {"model": run.config.model.model_dump(mode="json") | {"output_bypass": True}})
    mappers = load_checkpoint_mappers(run.checkpoint)
    view_mapper = mappers.pop(VIEW_MAPPER_KEY)
    run.model = build_model(bypass_config, run.model.components, view_mapper=view_mapper, object_mappers=mappers)
    keys_on, values_on = _encode_view_prompt(run, cameras)
    torch.testing.assert_close(keys_on, keys, rtol=0, atol=1e-6)
    assert (values_on - keys_on).abs().max() > 1e-2


# ---- pretrained_view_mapper_step ------------------------------------------------------------------------


def test_pretrained_view_mapper_step_picks_that_checkpoint(synthetic_dtu_root, tiny_model_dir, pretrained_run,
                                                           tmp_path):
    """Mode 5 keeps the view mapper frozen, so the fitted run's view mapper is exactly the one loaded."""
    assert [p.name for p in list_checkpoints(pretrained_run)] == ["checkpoint-3", "checkpoint-6"]
    by_step = {step: load_checkpoint_mappers(pretrained_run / "checkpoints" / f"checkpoint-{step}")[VIEW_MAPPER_KEY]
               for step in (3, 6)}
    differ = [k for k, v in by_step[3].state_dict().items() if not torch.equal(v, by_step[6].state_dict()[k])]
    assert differ, "the two pretraining checkpoints must hold different view mappers for this test to mean anything"
    for step, name in ((3, "at-3"), (None, "latest")):
        config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 5, name,
                                   model={"pretrained_view_mapper": str(pretrained_run),
                                          "pretrained_view_mapper_step": step},
                                   optim={"max_train_steps": 1})
        fitted = load_checkpoint_mappers(train(config, progress=False).final_checkpoint)[VIEW_MAPPER_KEY]
        want = by_step[3 if step == 3 else 6].state_dict()
        for key, tensor in fitted.state_dict().items():
            assert torch.equal(tensor, want[key]), (name, key)
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path, 5, "at-4",
                               model={"pretrained_view_mapper": str(pretrained_run),
                                      "pretrained_view_mapper_step": 4})
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4 .*available steps: \[3, 6\]"):
        train(config, progress=False)
    assert not (tmp_path / "at-4").exists()
