"""Checkpoints: atomic layout, pruning, exact restore of optimizer/scheduler/RNG, no pickle."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.optimization import get_scheduler

from viewneti_core import atomic_files
from viewneti_core.config import ViewNetiConfig
from viewneti_core.method.mappers import build_mapper
from viewneti_core.training.checkpoints import (
    TrainingState,
    config_differences,
    list_checkpoints,
    load_checkpoint_mappers,
    load_training_state,
    resolve_checkpoint,
    resume_problems,
    save_checkpoint,
)

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip


def _setup(camera_normalization):
    torch.manual_seed(0)
    mappers = {
        "view": build_mapper("view", 16, 0.5, token="<view>", super_category_token="view", camera_normalization=camera_normalization),
        "<scan8>": build_mapper("object", 16, 0.7, token="<scan8>", super_category_token="object"),
    }
    params = [p for m in mappers.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
    scheduler = get_scheduler("constant", optimizer=optimizer)
    return mappers, params, optimizer, scheduler


def _step(mappers, optimizer, scheduler):
    word, bypass = mappers["view"](torch.randint(0, 1000, (4,)), torch.randint(0, 16, (4,)), torch.randn(4, 12))
    word2, _ = mappers["<scan8>"](torch.randint(0, 1000, (4,)), torch.randint(0, 16, (4,)))
    loss = (word.sum() + bypass.pow(2).mean() + word2.pow(3).sum()) * torch.rand(())
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def resume_continues_exactly(tmp_path: Path, cameras: np.ndarray) -> None:
    """Save at step 3, run 3 more steps, restore and run them again: same weights and same RNG draws
    (torch, numpy and python's global `random`, which the steps and the checks below draw from)."""
    from viewneti_core.data.cameras import CameraNormalization

    tmp_path.mkdir(parents=True, exist_ok=True)
    camera_normalization = CameraNormalization.from_cameras(cameras.reshape(-1, 12), "dtu-12d")
    mappers, params, optimizer, scheduler = _setup(camera_normalization)
    for _ in range(3):
        _step(mappers, optimizer, scheduler)
    random.random(), np.random.rand()
    ckpt = save_checkpoint(tmp_path, 3, mappers, {"base_model": "x"}, optimizer, scheduler, TrainingState(3, 1, 4))
    for _ in range(3):  # uninterrupted continuation
        _step(mappers, optimizer, scheduler)
    expected = {k: m.state_dict() for k, m in mappers.items()}
    tail_draws = (random.random(), float(np.random.rand()))

    restored = load_checkpoint_mappers(ckpt)
    _, _, optimizer2, scheduler2 = _setup(camera_normalization)
    params2 = [p for m in restored.values() for p in m.parameters()]
    optimizer2 = torch.optim.AdamW(params2, lr=1e-2, weight_decay=1e-2)
    scheduler2 = get_scheduler("constant", optimizer=optimizer2)
    torch.manual_seed(12345)  # garbage RNG state that the restore must overwrite
    state = load_training_state(ckpt, optimizer2, scheduler2)
    assert state == TrainingState(3, 1, 4)
    for _ in range(3):
        _step(restored, optimizer2, scheduler2)
    for key, mapper in restored.items():
        for name, value in mapper.state_dict().items():
            assert torch.equal(value, expected[key][name]), (key, name)
    assert (random.random(), float(np.random.rand())) == tail_draws


def test_resume_continues_exactly(tmp_path, dtu_like_cameras):
    """Runs in a fresh interpreter: threads that earlier tests leave behind (Dask comms, Prefect clients)
    draw from python's global `random` at any moment, which would change the draws compared here."""
    np.save(tmp_path / "cameras.npy", dtu_like_cameras)
    script = ("import sys; from pathlib import Path; import numpy as np; import test_checkpoints as t; "
              "t.resume_continues_exactly(Path(sys.argv[1]), np.load(sys.argv[2])); print('restored exactly')")
    env = dict(os.environ) | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run"), str(tmp_path / "cameras.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("restored exactly"), done.stdout + done.stderr[-3000:]


def test_layout_pruning_and_resolution(tmp_path, camera_normalization):
    mappers, _, optimizer, scheduler = _setup(camera_normalization)
    (tmp_path / "checkpoints" / ".checkpoint-9.tmp").mkdir(parents=True)  # an interrupted write
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, mappers, {}, optimizer, scheduler, TrainingState(step, 0, step), total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-6"
    assert resolve_checkpoint(tmp_path, "4").name == "checkpoint-4"
    with pytest.raises(FileNotFoundError, match=r"available steps: \[4, 6\]"):
        resolve_checkpoint(tmp_path, 2)
    files = sorted(p.relative_to(tmp_path / "checkpoints" / "checkpoint-6").as_posix()
                   for p in (tmp_path / "checkpoints" / "checkpoint-6").rglob("*") if p.is_file())
    assert files == [
        "checkpoint.json",
        "mappers/object-scan8.json",
        "mappers/object-scan8.safetensors",
        "mappers/view.json",
        "mappers/view.safetensors",
        "training_state.json",
        "training_state.safetensors",
    ]
    info = json.loads((tmp_path / "checkpoints" / "checkpoint-6" / "checkpoint.json").read_text())
    assert info["mappers"] == {"view": "mappers/view", "<scan8>": "mappers/object-scan8"}
    view_meta = json.loads((tmp_path / "checkpoints" / "checkpoint-6" / "mappers" / "view.json").read_text())
    assert view_meta["camera_normalization"]["representation"] == "dtu-12d"
    assert len(view_meta["camera_normalization"]["min"]) == 12


def test_no_checkpoint_file_is_a_pickle(tmp_path, camera_normalization):
    mappers, _, optimizer, scheduler = _setup(camera_normalization)
    _step(mappers, optimizer, scheduler)
    ckpt = save_checkpoint(tmp_path, 1, mappers, {}, optimizer, scheduler, TrainingState(1, 0, 1))
    for path in ckpt.rglob("*"):
        if path.is_file():
            assert path.suffix in (".json", ".safetensors"), path
            assert not path.read_bytes()[:4].startswith(PICKLE_MAGIC), path


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoint_files_share_the_umask_modes(tmp_path, camera_normalization, umask):
    """safetensors creates its files 0600: every file of a checkpoint gets 0666 & ~umask like the JSON."""
    mappers, _, optimizer, scheduler = _setup(camera_normalization)
    _step(mappers, optimizer, scheduler)
    previous = os.umask(umask)
    try:
        ckpt = save_checkpoint(tmp_path, 1, mappers, {}, optimizer, scheduler, TrainingState(1, 0, 1))
    finally:
        os.umask(previous)
    modes = {p.relative_to(ckpt).as_posix(): oct(p.stat().st_mode & 0o777) for p in ckpt.rglob("*") if p.is_file()}
    assert len(modes) == 7 and set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_saved_models_share_the_umask_modes(tiny_model_dir):
    """diffusers' save_pretrained writes safetensors 0600 too; `viewneti models make-tiny` output is readable."""
    umask = os.umask(0o022)
    os.umask(umask)
    files = [p for p in tiny_model_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the umask from /proc")
def test_the_umask_is_read_without_setting_it(monkeypatch):
    """os.umask sets the mask: another thread creating a file meanwhile would get the temporary one."""
    previous = os.umask(0o037)
    try:
        def no_umask(mask):
            raise AssertionError("os.umask called: it changes the process umask for every thread")

        monkeypatch.setattr(atomic_files.os, "umask", no_umask)
        assert atomic_files.current_umask() == 0o037
    finally:
        monkeypatch.undo()
        os.umask(previous)


def _run_config(**sections) -> dict:
    return ViewNetiConfig.model_validate({"learnable_mode": 2, **sections}).model_dump(mode="json")


def test_resume_rule_names_what_makes_a_checkpoint_meaningless(tmp_path, camera_normalization):
    """One rule for `viewneti train --resume` and the pipeline's retries (tasks/training.py)."""
    mappers, _, optimizer, scheduler = _setup(camera_normalization)
    saved = _run_config(data={"dtu_scan": 8}, optim={"max_train_steps": 10})
    ckpt = save_checkpoint(tmp_path, 4, mappers, {"config": saved}, optimizer, scheduler, TrainingState(4, 0, 4))

    allowed = _run_config(data={"dtu_scan": 8, "dataloader_num_workers": 2},
                          optim={"max_train_steps": 20, "mixed_precision": "bf16"},
                          log={"save_steps": 7, "report_to": "none", "exp_dir": "elsewhere", "overwrite_ok": True},
                          run={"device": "cuda:1"}, eval={"validation_steps": 3, "seeds": [5]})
    assert resume_problems(ckpt, allowed) == []

    changed = _run_config(data={"dtu_scan": 21, "placeholder_object_token": "<thing>"},
                          optim={"max_train_steps": 10, "learning_rate": 0.5, "seed": 3},
                          model={"mapper_hidden_dim": 32})
    (problem,) = resume_problems(ckpt, changed)
    for key in ("data.dtu_scan: 8 -> 21", 'data.placeholder_object_token: "<object>" -> "<thing>"',
                "optim.learning_rate: 0.001 -> 0.5", "optim.seed: 0 -> 3", "model.mapper_hidden_dim: 64 -> 32"):
        assert key in problem, (key, problem)
    assert config_differences(saved, _run_config(learnable_mode=3, data={"dtu_scan": 8},
                                                 optim={"max_train_steps": 10})) == ["learnable_mode: 2 -> 3"]

    fewer = _run_config(data={"dtu_scan": 8}, optim={"max_train_steps": 3})
    assert resume_problems(ckpt, fewer) == ["optim.max_train_steps 3 is below the checkpoint's step 4"]
