"""`viewneti models build-mini-world`: train the mini world's base model from scratch, then pretrain
its view mapper (mode 3), deterministically from one seed and resumable at any point. It runs on the CPU
(the shipped weights' build, about 90 minutes on 2 cores) or on a CUDA device (`--device cuda`): every
step's draws are made on the CPU, so both take the same batches, noise and timesteps.

Phases, each checkpointed into a work directory beside the output (`.NAME.build/`):
1. scenes: render the base model's training views (every base scene, all 49 DTU views, light 3)
   with captions that name the content and, for most images, coarse view words;
2. vae: train the small AutoencoderKL (reconstruction + a small KL term, as SD's VAE);
3. unet: train the UNet and the text encoder on cached VAE posteriors, v-prediction with SD 2.1's
   noise schedule, captions dropped 10% of the time so classifier-free guidance has an unconditional
   branch to work with;
4. view-mapper: mode-3 pretraining of ViewNeTI on the world's 88 pretraining scans with our own
   `train()` (the same code users run on SD 2.1).
The output (model in diffusers format + the view mapper's checkpoint + build.json) appears only when
everything is done: it is assembled in a temp directory and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from tqdm import tqdm

from viewneti_core.atomic_files import save_safetensors, temp_dir_beside, temp_file_beside
from viewneti_core.base_model.sd_models import (
    SDComponents,
    _build_from_configs,
    resolve_device,
    save_components,
)
from viewneti_core.data import dtu
from viewneti_core.data.synthetic import make_synthetic_dtu, render_view, synthetic_cameras
from viewneti_core.mini_world import world as mini_world
from viewneti_core.mini_world.options import BuildOptions
from viewneti_core.training.checkpoints import list_checkpoints, optimizer_tensors, restore_optimizer

logger = logging.getLogger(__name__)

PHASES = ("scenes", "vae", "unet", "view-mapper", "done")
MODEL_DIR, VIEW_MAPPER_DIR, BUILD_INFO = "model", "view-mapper", "build.json"
NEEDED_DISK_BYTES = 600 * 2**20  # rendered views, latents, checkpoints and the DTU tree, with room


class BuildError(RuntimeError):
    """The output or work directory is not in a state a build can start or resume from."""


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.build"


def build_device(name: str) -> torch.device:
    """The device `--device NAME` trains on, refused before anything is written if it cannot be used here."""
    try:
        device = resolve_device(name)
    except RuntimeError as exc:
        raise BuildError(f"--device {name}: {exc}; use cpu, cuda, cuda:N or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise BuildError(f"--device {name}: the build runs on cpu or cuda only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BuildError(f"--device {name}: PyTorch sees no CUDA device here; build on the CPU with --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BuildError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


# ---- state ---------------------------------------------------------------------------------------


def _read_state(work: Path) -> dict:
    path = work / "state.json"
    return json.loads(path.read_text()) if path.is_file() else {"phase": "scenes", "step": 0}


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = temp_file_beside(path)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _save_phase(work: Path, phase: str, step: int, modules: dict[str, torch.nn.Module],
                optimizer: torch.optim.Optimizer | None, extra: dict | None = None) -> None:
    """Weights and optimizer moments of a phase at `step` (safetensors), then the state file that points at them."""
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous() for name, module in modules.items()
               for key, value in module.state_dict().items()}
    groups = None
    if optimizer is not None:
        opt_tensors, groups = optimizer_tensors(optimizer)
        tensors |= opt_tensors
    save_safetensors(tensors, work / f"{phase}.safetensors")
    state = _read_state(work) | {"phase": phase, "step": step, f"{phase}_param_groups": groups} | (extra or {})
    _write_json(work / "state.json", state)


def _load_phase(work: Path, phase: str, modules: dict[str, torch.nn.Module],
                optimizer: torch.optim.Optimizer | None) -> None:
    tensors = load_file(str(work / f"{phase}.safetensors"))
    for name, module in modules.items():
        prefix = f"{name}."
        module.load_state_dict({k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)})
    if optimizer is not None:
        restore_optimizer(optimizer, tensors, _read_state(work)[f"{phase}_param_groups"])


def _step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    """Each step's draws (batch, noise, timesteps, dropout) depend on (seed, phase, step) only, so a
    resumed build takes exactly the draws an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + PHASES.index(phase) * 100_000_007 + step)


# ---- phase 1: scenes -----------------------------------------------------------------------------


def base_scenes_used(options: BuildOptions) -> list[tuple[int, int]]:
    """(seed, scan) of the scenes the base model trains on with these options."""
    scenes = mini_world.base_scenes()
    if options.scenes_per_seed is not None:
        scenes = [s for s in scenes if s[1] in mini_world.BASE_SCANS[: options.scenes_per_seed]]
    return scenes


def render_base_set(options: BuildOptions, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """(N, H, W, 3) uint8 views of every base scene and their captions."""
    scenes = base_scenes_used(options)
    cameras = synthetic_cameras(mini_world.SIZE)
    rng = np.random.default_rng(np.random.SeedSequence([options.seed, 7]))
    images, captions = [], []
    for seed, scan in tqdm(scenes, desc="mini world: rendering scenes", unit="scene", disable=not progress):
        scene, words = mini_world.scene_and_words(seed, scan)
        for view in range(dtu.NUM_VIEWS):
            images.append(render_view(scene, cameras[view], mini_world.SIZE, [dtu.DEFAULT_LIGHT]).images[dtu.DEFAULT_LIGHT])
            with_view = rng.uniform() < options.view_words_share
            captions.append(mini_world.caption(words, view if with_view else None))
    return np.stack(images), captions


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ---- model ---------------------------------------------------------------------------------------


def build_modules(seed: int, noise_schedule: str) -> SDComponents:
    """The untrained mini-world model (seeded), labelled with the weights it will hold once trained."""
    components = _build_from_configs(mini_world.mini_world_configs(noise_schedule), "mini-world build", seed)
    components.weights = mini_world.WEIGHTS_LABEL
    return components


def _tokenize(components: SDComponents, captions: list[str]) -> torch.Tensor:
    tokenizer = components.tokenizer
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ---- phases 2 and 3: training loops --------------------------------------------------------------


def _train_vae(work: Path, components: SDComponents, images: torch.Tensor, options: BuildOptions,
               start: int, progress: bool) -> list[float]:
    vae = components.vae.train().requires_grad_(True)
    device = vae.device
    optimizer = torch.optim.AdamW(vae.parameters(), lr=options.vae_lr, weight_decay=0.0)
    if start:
        _load_phase(work, "vae", {"vae": vae}, optimizer)
    losses = []
    bar = tqdm(total=options.vae_steps, initial=start, desc="mini world: VAE", disable=not progress)
    for step in range(start, options.vae_steps):
        g = _step_generator(options.seed, "vae", step)
        batch = _pixels(images[torch.randint(len(images), (options.vae_batch,), generator=g)]).to(device)
        posterior = vae.encode(batch).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        loss = F.mse_loss(vae.decode(z).sample, batch) + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if (step + 1) % options.checkpoint_every == 0 or step + 1 == options.vae_steps:
            _save_phase(work, "vae", step + 1, {"vae": vae}, optimizer)
    bar.close()
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def _encode_all(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for chunk in images.split(256):
        posterior = vae.encode(_pixels(chunk).to(vae.device)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def _train_unet(work: Path, components: SDComponents, posteriors: tuple[torch.Tensor, torch.Tensor],
                ids: torch.Tensor, empty_ids: torch.Tensor, options: BuildOptions, start: int,
                progress: bool) -> list[float]:
    unet, text = components.unet.train().requires_grad_(True), components.text_encoder.train().requires_grad_(True)
    device = unet.device
    modules = {"unet": unet, "text_encoder": text}
    params = [*unet.parameters(), *text.parameters()]
    optimizer = torch.optim.AdamW(params, lr=options.unet_lr, weight_decay=1e-2)
    if start:
        _load_phase(work, "unet", modules, optimizer)
    scheduler, scale = components.scheduler, components.vae.config.scaling_factor
    warmup = min(200, options.unet_steps // 10 + 1)
    losses = []
    bar = tqdm(total=options.unet_steps, initial=start, desc="mini world: UNet + text encoder", disable=not progress)
    for step in range(start, options.unet_steps):
        for group in optimizer.param_groups:  # linear warm-up, then cosine decay to 10%
            progress_share = (step - warmup) / max(1, options.unet_steps - warmup)
            factor = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + np.cos(np.pi * progress_share))
            group["lr"] = options.unet_lr * factor
        g = _step_generator(options.seed, "unet", step)
        index = torch.randint(len(ids), (options.unet_batch,), generator=g)
        on_device = index.to(device)
        mean, std = posteriors[0][on_device], posteriors[1][on_device]
        latents = (mean + std * torch.randn(mean.shape, generator=g).to(device)) * scale
        noise = torch.randn(latents.shape, generator=g).to(device)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (len(index),), generator=g).to(device)
        drop = torch.rand(len(index), generator=g) < options.caption_dropout
        tokens = torch.where(drop[:, None], empty_ids, ids[index]).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text(tokens)[0]).sample
        loss = F.mse_loss(prediction, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % options.checkpoint_every == 0 or step + 1 == options.unet_steps:
            _save_phase(work, "unet", step + 1, modules, optimizer)
    bar.close()
    return losses


# ---- phase 4: the view mapper --------------------------------------------------------------------


def view_mapper_config(model_dir: Path, dtu_root: Path, runs: Path, options: BuildOptions, device: str = "cpu"):
    from viewneti_core.config import ViewNetiConfig

    width, height = mini_world.SIZE
    return ViewNetiConfig.model_validate({
        "learnable_mode": 3,
        "run": {"device": device, "dtype": "float32"},
        "log": {"exp_dir": str(runs), "exp_name": "view-mapper", "report_to": "none",
                "save_steps": options.checkpoint_every, "checkpoints_total_limit": 2},
        "data": {"train_data_dir": str(dtu_root), "width": width, "height": height, "resolution": width,
                 "dtu_subset": 0, "dtu_pretrain_scans": list(options.pretrain_scans), "augmentation": "pretraining"},
        "model": {"pretrained_model_name_or_path": str(model_dir)},
        "eval": {"width": width, "height": height, "validation_steps": 10**9, "final_validation": False},
        "optim": {"max_train_steps": options.view_mapper_steps, "train_batch_size": 4,
                  "gradient_accumulation_steps": 1, "mixed_precision": "no", "seed": options.seed},
    })


# ---- the command ---------------------------------------------------------------------------------


def check_output(out: Path, resume: bool, overwrite: bool) -> Path:
    """Refuse to start where a build would lose or mix up work; return the work directory."""
    work = work_dir_for(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise BuildError(f"{out} exists and is not empty; pass --overwrite to replace it, or choose another --out")
    if work.exists() and not resume and not overwrite:
        state = _read_state(work)
        raise BuildError(f"{work} holds an unfinished build (phase {state['phase']}, step {state['step']}); "
                         "pass --resume to continue it or --overwrite to start again")
    if resume and not work.exists():
        raise BuildError(f"--resume: there is no unfinished build of {out} (no {work})")
    if overwrite and not resume:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < NEEDED_DISK_BYTES:
        raise BuildError(f"only {free / 2**20:.0f} MiB free under {work.parent}; the build needs about "
                         f"{NEEDED_DISK_BYTES / 2**20:.0f} MiB")
    return work


def _train_base_model(work: Path, options: BuildOptions, where: torch.device, progress: bool) -> None:
    """Phases 1-3 (scenes, VAE, UNet + text encoder), each from where the state says, then the model's save."""
    if not (work / "scenes.safetensors").is_file():
        images, captions = render_base_set(options, progress)
        (work / "captions.json").write_text(json.dumps(captions) + "\n")
        save_safetensors({"images": torch.from_numpy(images)}, work / "scenes.safetensors")
    images = load_file(str(work / "scenes.safetensors"))["images"]
    captions = json.loads((work / "captions.json").read_text())

    components = build_modules(options.seed, options.noise_schedule).to(device=where)
    state = _read_state(work)
    phase = state["phase"]
    history = state.get("losses", {})
    if PHASES.index(phase) <= PHASES.index("vae"):
        history["vae"] = _train_vae(work, components, images, options, state["step"] if phase == "vae" else 0, progress)
        _write_json(work / "state.json", _read_state(work) | {"phase": "unet", "step": 0, "losses": history})
        phase, state = "unet", _read_state(work)
    else:
        _load_phase(work, "vae", {"vae": components.vae}, None)
    components.vae.eval().requires_grad_(False)
    if PHASES.index(phase) <= PHASES.index("unet"):
        posteriors = _encode_all(components.vae, images)
        components.vae.register_to_config(scaling_factor=float(1.0 / posteriors[0].std()))
        ids = _tokenize(components, captions)
        empty = _tokenize(components, [""])
        start = state["step"] if phase == "unet" else 0
        history["unet"] = _train_unet(work, components, posteriors, ids, empty, options, start, progress)
        state = _read_state(work) | {"losses": history, "scaling_factor": components.vae.config.scaling_factor}
        _write_json(work / "state.json", state | {"phase": "view-mapper", "step": 0})
    else:
        _load_phase(work, "unet", {"unet": components.unet, "text_encoder": components.text_encoder}, None)
        components.vae.register_to_config(scaling_factor=state["scaling_factor"])
    model_dir = work / MODEL_DIR
    shutil.rmtree(model_dir, ignore_errors=True)
    save_components(components.to(device="cpu").freeze(), model_dir, builder=mini_world.WEIGHTS_LABEL)


def build_mini_world(out: Path | str, options: BuildOptions | None = None, resume: bool = False,
                     overwrite: bool = False, progress: bool = True, device: str = "cpu") -> Path:
    """`device` says where, not what: it is not one of the options a resume must repeat, and build.json
    lists every device that trained a part of the build."""
    from viewneti_core.training.trainer import train

    out, options = Path(out), options or BuildOptions()
    where = build_device(device)
    work = check_output(out, resume, overwrite)
    state = _read_state(work)
    if state.get("options", options.to_dict()) != options.to_dict():
        raise BuildError(f"{work} was started with other options ({state['options']}); resume with the same "
                         "options or pass --overwrite")
    devices = sorted({*state.get("devices", []), str(where)})
    _write_json(work / "state.json", state | {"options": options.to_dict(), "devices": devices})
    started = time.time()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    model_dir = work / MODEL_DIR
    if not (model_dir / "model_index.json").is_file():  # once the model is saved, its phases' files are not read
        _train_base_model(work, options, where, progress)
    history = _read_state(work).get("losses", {})
    dtu_root = work / "dtu"
    if not (dtu_root / "Cameras").is_dir():
        make_synthetic_dtu(dtu_root, options.pretrain_scans, size=mini_world.SIZE, seed=mini_world.WORLD_SEED,
                           lights=[dtu.DEFAULT_LIGHT], progress=progress, overwrite=True, scene_of=mini_world.scene)
    runs = work / "runs"
    config = view_mapper_config(model_dir, dtu_root, runs, options, str(where))
    checkpoints = list_checkpoints(runs / "view-mapper") if (runs / "view-mapper").is_dir() else []
    if (runs / "view-mapper").exists() and not checkpoints:  # killed before its first checkpoint
        shutil.rmtree(runs / "view-mapper")
    result = train(config, resume="latest" if checkpoints else None, progress=progress)
    history["view_mapper"] = result.losses
    _write_json(work / "state.json", _read_state(work) | {"phase": "done", "step": 0, "losses": history})
    return _publish(out, work, result.final_checkpoint, options, history, time.time() - started)


def _publish(out: Path, work: Path, checkpoint: Path, options: BuildOptions, history: dict, seconds: float) -> Path:
    tmp = temp_dir_beside(out)
    try:
        shutil.copytree(work / MODEL_DIR, tmp / MODEL_DIR)
        shutil.copytree(checkpoint, tmp / VIEW_MAPPER_DIR,
                        ignore=shutil.ignore_patterns("training_state.*"))  # optimizer moments: not shipped
        rebase_view_mapper(tmp / VIEW_MAPPER_DIR, str(out.absolute() / MODEL_DIR))
        info = {
            "what": mini_world.NOTE,
            "options": options.to_dict(),
            "devices": _read_state(work).get("devices", ["cpu"]),
            "final_losses": {k: float(np.mean(v[-50:])) for k, v in history.items() if v},
            "build_seconds_this_session": round(seconds, 1),
            "command": "viewneti models build-mini-world --out DIR",
        }
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return out


def rebase_view_mapper(checkpoint: Path, base_model: str) -> None:
    """Name the base model the view mapper goes with where it will be found (the build's work
    directory is deleted): the published model directory, or `builtin:mini-world` once shipped."""
    path = checkpoint / "checkpoint.json"
    info = json.loads(path.read_text())
    info["base_model"] = base_model
    info["config"]["model"]["pretrained_model_name_or_path"] = base_model
    _write_json(path, info)


def run_build(args: argparse.Namespace) -> int:
    options = BuildOptions(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                           unet_batch=args.unet_batch, unet_lr=args.unet_lr, noise_schedule=args.noise_schedule,
                           view_mapper_steps=args.view_mapper_steps, checkpoint_every=args.checkpoint_every,
                           scenes_per_seed=args.scenes_per_seed)
    try:
        out = build_mini_world(args.out, options, resume=args.resume, overwrite=args.overwrite, device=args.device)
    except BuildError as exc:
        print(f"error: {exc}")
        return 2
    print(f"wrote the mini world ({mini_world.NOTE}) to {out}")
    return 0
