"""Training checkpoints: safetensors + JSON only, published atomically, resumable exactly.

A checkpoint directory `checkpoint-{step}` holds:
- `mappers/<name>.safetensors` + `.json`: each mapper and everything needed to rebuild it;
- `checkpoint.json`: step, learnable mode, tokens -> mapper files, base model id and text width,
  weights label, the full training config;
- `training_state.safetensors` + `training_state.json`: optimizer moments, LR schedule, RNG states and
  the data position, so that a resumed run continues exactly where the interrupted one stopped.
Nothing here needs pickle to load.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viewneti_core.atomic_files import naming_path, save_safetensors, temp_dir_beside
from viewneti_core.errors import ArtifactError
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
from viewneti_core.method.mappers import NeTIMapper, load_mapper, save_mapper
from viewneti_core.safe_io import read_json_file, read_safetensors, require, short_repr

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
FORMAT_VERSION = 1


def mapper_file_stem(key: str) -> str:
    """'view' -> 'view'; '<scan8>' -> 'object-scan8' (file-system safe, still readable)."""
    if key == VIEW_MAPPER_KEY:
        return "view"
    return "object-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", key.strip("<>"))


@dataclass
class TrainingState:
    """What must survive an interruption besides the mapper weights."""

    step: int
    epoch: int
    batch_in_epoch: int


# ---- writing -----------------------------------------------------------------------------------


def save_checkpoint(
    run_dir: Path,
    step: int,
    mappers: dict[str, NeTIMapper],
    info: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    state: TrainingState,
    total_limit: int | None = None,
) -> Path:
    """Write into a temp dir, rename to `checkpoint-{step}`, then prune the oldest beyond the limit."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    # A fresh name per writer: two writers never share (or delete) each other's temp dir.
    tmp = temp_dir_beside(final, prefix=f".checkpoint-{step}.tmp-")
    (tmp / "mappers").mkdir()
    try:
        with naming_path(final):  # a full disk names the checkpoint being written
            files = {}
            for key, mapper in mappers.items():
                stem = mapper_file_stem(key)
                save_mapper(mapper, tmp / "mappers" / stem)
                files[key] = f"mappers/{stem}"
            meta = {"format_version": FORMAT_VERSION, "step": step, "mappers": files} | info
            (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
            _save_training_state(tmp, optimizer, lr_scheduler, state)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if total_limit is not None:
        for old in list_checkpoints(run_dir)[:-total_limit]:
            shutil.rmtree(old)
    return final


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as safetensors-ready tensors (`optimizer.{param}.{name}`) plus its JSON-safe
    param groups; `restore_optimizer` undoes it."""
    opt = optimizer.state_dict()
    tensors = {f"optimizer.{index}.{name}": torch.as_tensor(value).detach().cpu().contiguous()
               for index, values in opt["state"].items() for name, value in values.items()}
    return tensors, opt["param_groups"]


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def _save_training_state(directory: Path, optimizer: torch.optim.Optimizer, lr_scheduler: Any, state: TrainingState) -> None:
    tensors, param_groups = optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    np_state = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    save_safetensors(tensors, directory / "training_state.safetensors")
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "optimizer_param_groups": param_groups,
        "lr_scheduler": lr_scheduler.state_dict(),  # LambdaLR stores lr_lambdas as [None]: JSON-safe
        "rng_numpy": {"kind": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "rng_python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    (directory / "training_state.json").write_text(json.dumps(meta, indent=1) + "\n")


# ---- reading -----------------------------------------------------------------------------------


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temp dirs of interrupted writes are ignored)."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(run_dir: Path, which: str | int | Path) -> Path:
    """'latest', a step number, or a checkpoint directory -> the checkpoint directory."""
    if isinstance(which, Path) or (isinstance(which, str) and which not in ("latest",) and not which.isdigit()):
        path = Path(which)
        if not (path / "checkpoint.json").is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint directory (no checkpoint.json)")
        return path
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints in {Path(run_dir) / CHECKPOINT_DIR}")
    if which == "latest":
        return checkpoints[-1]
    step = int(which)
    for path in checkpoints:
        if path.name == f"checkpoint-{step}":
            return path
    steps = [int(p.name.split("-")[1]) for p in checkpoints]
    raise FileNotFoundError(f"no checkpoint for step {step} in {run_dir}; available steps: {steps}")


def read_checkpoint_info(checkpoint: Path) -> dict[str, Any]:
    """checkpoint.json, checked: a step, mapper files inside the checkpoint, a config mapping if any."""
    path = Path(checkpoint) / "checkpoint.json"
    info = read_json_file(path, "checkpoint metadata")
    step = require(info, "step", int, str(path))
    if step < 0:
        raise ArtifactError(f"{path}: key 'step' must be >= 0, got {step}")
    mappers = require(info, "mappers", dict, str(path))
    for key, stem in mappers.items():
        if not isinstance(stem, str) or Path(stem).is_absolute() or ".." in Path(stem).parts or not stem:
            raise ArtifactError(f"{path}: mapper {short_repr(key, 40)} must name a file inside the checkpoint, "
                                f"got {short_repr(stem, 40)}")
    if "config" in info and not isinstance(info["config"], dict):
        raise ArtifactError(f"{path}: key 'config' must be a mapping of config sections")
    return info


def remove_stale_temp_dirs(run_dir: Path) -> list[Path]:
    """Delete temp dirs of checkpoint writes that were interrupted. Only for the holder of the run's
    lock: another live writer's temp dir would look the same."""
    root = Path(run_dir) / CHECKPOINT_DIR
    stale = sorted(root.glob(".checkpoint-*.tmp*")) if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


# ---- may a run continue from a checkpoint? (the CLI's --resume and the pipeline's retries) ------

# Config keys that may change between the run that wrote a checkpoint and the run that continues it:
# where and how often things are written or shown, and on which hardware. Anything else (data, tokens,
# model, mode, optimizer, seed, batch layout) changes what the checkpoint's weights and optimizer
# state mean, so continuing would mix two trainings under one config.
RESUMABLE_KEYS = (
    "optim.max_train_steps",  # more steps: continue; fewer than the checkpoint's: refused below
    "log", "eval", "run",
    "data.dataloader_num_workers",
    "optim.mixed_precision", "optim.allow_tf32", "optim.cache_vae_posteriors",  # same math, other hardware paths
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_KEYS)


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every dotted key outside RESUMABLE_KEYS whose value differs. A key only one
    side has (removed from, or added to, the config tree since the checkpoint) is not compared."""
    old, new = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(current, default=str)))
    return [f"{key}: {_short(old[key])} -> {_short(new[key])}"
            for key in sorted(old.keys() & new.keys()) if not _resumable(key) and old[key] != new[key]]


def resume_problems(checkpoint: Path, config: dict[str, Any]) -> list[str]:
    """Why the run of `config` (a JSON dump of a ViewNetiConfig) cannot continue from `checkpoint`."""
    info = read_checkpoint_info(checkpoint)
    saved = info.get("config")
    if saved is None:
        return [f"{Path(checkpoint) / 'checkpoint.json'} records no training configuration to compare with"]
    problems = []
    differences = config_differences(saved, config)
    if differences:
        problems.append("its configuration differs in " + "; ".join(differences))
    max_steps = config.get("optim", {}).get("max_train_steps")
    if isinstance(max_steps, int) and max_steps < info["step"]:
        problems.append(f"optim.max_train_steps {max_steps} is below the checkpoint's step {info['step']}")
    return problems


def load_checkpoint_mappers(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, NeTIMapper]:
    info = read_checkpoint_info(checkpoint)
    return {key: load_mapper(Path(checkpoint) / stem, device=device) for key, stem in info["mappers"].items()}


def read_training_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """training_state.{safetensors,json}, checked for every key `load_training_state` uses."""
    checkpoint = Path(checkpoint)
    tensors_path, meta_path = checkpoint / "training_state.safetensors", checkpoint / "training_state.json"
    meta = read_json_file(meta_path, "training state")
    where = str(meta_path)
    for key in ("step", "epoch", "batch_in_epoch"):
        if require(meta, key, int, where) < 0:
            raise ArtifactError(f"{where}: key {key!r} must be >= 0, got {meta[key]}")
    groups = require(meta, "optimizer_param_groups", list, where)
    if not groups or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise ArtifactError(f"{where}: key 'optimizer_param_groups' must list the optimizer's parameter groups")
    require(meta, "lr_scheduler", dict, where)
    np_meta = require(meta, "rng_numpy", dict, f"{where} (rng_numpy)")
    for key, kinds in (("kind", str), ("pos", int), ("has_gauss", int), ("gauss", (int, float))):
        require(np_meta, key, kinds, f"{where} (rng_numpy)")
    py = require(meta, "rng_python", dict, f"{where} (rng_python)")
    require(py, "version", int, f"{where} (rng_python)")
    state = require(py, "state", list, f"{where} (rng_python)")
    if len(state) != 625 or not all(isinstance(v, int) and not isinstance(v, bool) for v in state):
        raise ArtifactError(f"{where}: rng_python.state must be 625 integers (python's Mersenne Twister)")
    require(py, "gauss", (int, float, type(None)), f"{where} (rng_python)")

    tensors = read_safetensors(tensors_path, "training state")
    rng = tensors.get("rng.torch")
    if rng is None or rng.dtype != torch.uint8 or rng.dim() != 1:
        raise ArtifactError(f"{tensors_path}: tensor 'rng.torch' (torch's RNG state, uint8) is missing or damaged")
    keys = tensors.get("rng.numpy.keys")
    if keys is None or keys.dtype != torch.int64 or tuple(keys.shape) != (624,):
        raise ArtifactError(f"{tensors_path}: tensor 'rng.numpy.keys' (624 int64, numpy's RNG state) is missing "
                            "or damaged")
    bad = [k for k, v in tensors.items() if k.startswith("optimizer.") and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise ArtifactError(f"{tensors_path}: optimizer state {bad[:3]} holds NaN or infinite values")
    return tensors, meta


def load_training_state(checkpoint: Path, optimizer: torch.optim.Optimizer, lr_scheduler: Any) -> TrainingState:
    """Restore optimizer, LR schedule and every RNG; return the data position to continue from. The
    files are checked first; a state that does not fit this optimizer is named, not traced back."""
    checkpoint = Path(checkpoint)
    tensors, meta = read_training_state(checkpoint)
    try:
        restore_optimizer(optimizer, tensors, meta["optimizer_param_groups"])
        lr_scheduler.load_state_dict(meta["lr_scheduler"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise ArtifactError(f"{checkpoint}: its optimizer state (training_state.*) does not fit this "
                            f"run's mappers ({(str(exc) or type(exc).__name__).splitlines()[0][:160]})") from None
    try:
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        np_meta = meta["rng_numpy"]
        np.random.set_state((np_meta["kind"], tensors["rng.numpy.keys"].numpy().astype(np.uint32), np_meta["pos"],
                             np_meta["has_gauss"], np_meta["gauss"]))
        py = meta["rng_python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise ArtifactError(f"{checkpoint}: its random-generator states cannot be restored "
                            f"({(str(exc) or type(exc).__name__).splitlines()[0][:160]})") from None
    return TrainingState(step=meta["step"], epoch=meta["epoch"], batch_in_epoch=meta["batch_in_epoch"])
