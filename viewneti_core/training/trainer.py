"""Training of the ViewNeTI mappers for learnable modes 0, 2, 3, 4, 5 (DESIGN 3.2, 3.6).

Read it top to bottom like a diffusers training example: check the inputs, build the data, build the
model, set up accelerate, then the loop. Only mapper parameters are optimised; the UNet, VAE and text
encoder stay frozen. Every `log.save_steps` a checkpoint is written (safetensors + JSON) that lets
`--resume latest` continue bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from torch import nn
from tqdm.auto import tqdm

from viewneti_core.atomic_files import naming_path, temp_file_beside
from viewneti_core.base_model.sd_models import SDComponents, load_components, resolve_device
from viewneti_core.config import ViewNetiConfig, dump_config
from viewneti_core.method.acceleration import AccelerationOptions, apply_acceleration
from viewneti_core.method.conditioning import VIEW_MAPPER_KEY, TextConditioner
from viewneti_core.method.model import ViewNetiModel, build_model
from viewneti_core.run_lock import RunLock, hold_run_lock
from viewneti_core.training.batches import (
    SeededItems,
    TrainingData,
    build_training_data,
    collate,
    seeded_batches,
)
from viewneti_core.training.checkpoints import (
    RESUMABLE_KEYS,
    TrainingState,
    list_checkpoints,
    load_checkpoint_mappers,
    load_training_state,
    read_checkpoint_info,
    read_training_state,
    remove_stale_temp_dirs,
    resolve_checkpoint,
    resume_problems,
    save_checkpoint,
)
from viewneti_core.training.cpu_budget import training_work, warn_if_slow_on_cpu
from viewneti_core.training.validation import render_validation
from viewneti_core.training.view_mapper_registry import load_pretrained_view_mapper

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class TrainingSetupError(ValueError):
    """A problem found before the first training step; nothing was trained or written."""


@dataclass
class TrainResult:
    run_dir: Path
    final_checkpoint: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # one mean loss per optimizer step of this process
    weights: str = "pretrained"


class MapperForward(nn.Module):
    """The trainable part as one module, so accelerate/DDP see every mapper call in `forward`."""

    def __init__(self, conditioner: TextConditioner):
        super().__init__()
        self.mappers = conditioner.mappers
        self._conditioner = [conditioner]  # a list keeps the frozen encoder out of this module's parameters

    def forward(self, input_ids: torch.Tensor, timesteps: torch.Tensor, cameras: torch.Tensor | None):
        return self._conditioner[0].encode(input_ids, timesteps, cameras)


ITEM_NOISE_SEED_OFFSET = 0x9E3779B97F4A7C15  # keeps an item's noise stream apart from its augmentation stream


def training_draws(
    mean: torch.Tensor, std: torch.Tensor, scaling_factor: float, num_timesteps: int, item_seeds: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random side of one training micro-batch: (scaled latents sampled from the posterior, noise, timesteps).

    With `item_seeds` each image draws from its own generator, seeded by its place in the epoch: what
    an image gets does not depend on who computes it. Data-parallel ranks then draw different noise (with
    the global RNG every rank, seeded alike, would draw the same), and N ranks equal one process that
    accumulates their N micro-batches. Without seeds: the global RNG, drawn exactly as the original
    (`latent_dist.sample()`, then `randn_like` of the scaled latents, then the timesteps).
    """
    device, dtype = mean.device, mean.dtype
    if item_seeds is None:
        latents = (mean + std * torch.randn(mean.shape, device=device, dtype=dtype)) * scaling_factor
        noise = torch.randn_like(latents)  # like the latents' strides, as the original draws it
        return latents, noise, torch.randint(0, num_timesteps, (mean.shape[0],), device=device)
    if len(item_seeds) != mean.shape[0]:
        raise ValueError(f"{len(item_seeds)} item seeds for a micro-batch of {mean.shape[0]} images")
    draws = []
    for seed in item_seeds.tolist():  # seeds live on the host: no device sync
        generator = torch.Generator(device=device).manual_seed((int(seed) + ITEM_NOISE_SEED_OFFSET) % 2**63)
        draws.append((torch.randn(mean.shape[1:], generator=generator, device=device, dtype=dtype),
                      torch.randn(mean.shape[1:], generator=generator, device=device, dtype=dtype),
                      torch.randint(0, num_timesteps, (1,), generator=generator, device=device)))
    eps, noise, timesteps = zip(*draws, strict=True)
    return (mean + std * torch.stack(eps)) * scaling_factor, torch.stack(noise), torch.cat(timesteps)


def diffusion_loss(
    components: SDComponents,
    mapper_module: nn.Module,
    pixels: torch.Tensor,
    input_ids: torch.Tensor,
    cameras: torch.Tensor | None,
    posterior: tuple[torch.Tensor, torch.Tensor] | None = None,
    item_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss of DESIGN 3.6 for one micro-batch of images in [-1, 1] (fp32 MSE).

    `posterior` = cached (mean, std) of the VAE latents of `pixels`; sampling from it is the same
    computation as re-encoding un-augmented images. `item_seeds` (one per image, from `seeded_batches`)
    gives every image its own latent sample, noise and timestep; without it they are drawn from the
    global RNG for the whole micro-batch, as the original does (see `training_draws`). Kept separate from
    the loop so benchmarks time exactly what training runs.
    """
    scheduler, unet, vae = components.scheduler, components.unet, components.vae
    if posterior is None:
        distribution = vae.encode(pixels).latent_dist
        mean, std = distribution.mean, distribution.std
    else:
        mean, std = posterior
    latents, noise, timesteps = training_draws(mean, std, vae.config.scaling_factor,
                                               scheduler.config.num_train_timesteps, item_seeds)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    keys, values = mapper_module(input_ids, timesteps.float(), cameras)
    # Under mixed precision accelerate returns the wrapped module's outputs in fp32; the UNet runs in its dtype.
    keys, values = keys.to(unet.dtype), values.to(unet.dtype)
    prediction = unet(
        noisy, timesteps, encoder_hidden_states=keys[0],
        cross_attention_kwargs={"xti_keys": keys, "xti_values": values}, return_dict=False,
    )[0]
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def cache_vae_posteriors(vae, dataset, dtype: torch.dtype, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE posterior of every source image, encoded once (un-augmented data only)."""
    from viewneti_core.data.datasets import to_model_range

    means, stds = [], []
    for start in range(0, len(dataset.images), batch_size):
        pixels = torch.stack([to_model_range(img) for img in dataset.images[start : start + batch_size]])
        dist = vae.encode(pixels.to(vae.device, dtype=dtype)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    logger.info("cached VAE posteriors of %d images", sum(len(m) for m in means))
    return torch.cat(means), torch.cat(stds)


def run_dir_of(config: ViewNetiConfig) -> Path:
    return Path(config.log.exp_dir) / config.log.exp_name


# ---- checks before any work --------------------------------------------------------------------


def check_training_inputs(config: ViewNetiConfig, resume: str | None) -> None:
    mode = config.learnable_mode
    if mode in (4, 5) and not config.model.pretrained_view_mapper:
        raise TrainingSetupError(
            f"learnable_mode {mode} fits an object mapper next to a pretrained view mapper: set "
            "model.pretrained_view_mapper to a mode-3 run/checkpoint or a name in configs/view_mappers.yaml"
        )
    if config.data.train_data_dir is None:
        raise TrainingSetupError("data.train_data_dir is not set (a DTU tree for modes 2-5, an image folder for mode 0)")
    if not Path(config.data.train_data_dir).is_dir():
        raise TrainingSetupError(f"data.train_data_dir {config.data.train_data_dir} is not a directory")
    run_dir = run_dir_of(config)
    existing = run_dir.exists() and any(run_dir.iterdir())
    # Under torchrun / accelerate launch only rank 0 judges the run dir: the others may already see it created.
    first_rank = int(os.environ.get("RANK", "0")) == 0
    if existing and resume is None and not config.log.overwrite_ok and first_rank:
        raise TrainingSetupError(
            f"run directory {run_dir} already exists: pass --resume latest to continue it, set "
            "log.overwrite_ok true to start over, or choose another log.exp_name"
        )
    if resume is not None and not existing:
        raise TrainingSetupError(f"cannot resume: run directory {run_dir} does not exist (drop --resume to start it)")
    if config.optim.cache_vae_posteriors and (mode == 0 or config.data.augmentation != "none"):
        raise TrainingSetupError(
            "optim.cache_vae_posteriors encodes every image once, so it needs un-augmented data: set "
            "data.augmentation none (mode 0 always flips images, so it cannot cache)"
        )
    if config.log.report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise TrainingSetupError("log.report_to is 'wandb' but wandb is not installed: pip install 'viewneti[wandb]'") from None


def resume_checkpoint_of(config: ViewNetiConfig, resume: str | int | Path) -> Path:
    """The checkpoint `resume` names, if the run of `config` may continue it; else say why and what to do."""
    run_dir = run_dir_of(config)
    start_over = ("to start over set log.overwrite_ok true (the run's checkpoints and metrics are replaced) or "
                  "choose another log.exp_name")
    if str(resume) == "latest" or str(resume).isdigit():
        if not list_checkpoints(run_dir):
            raise TrainingSetupError(
                f"cannot resume {run_dir}: it holds no checkpoint yet (the run stopped before its first one; "
                f"they are written every log.save_steps = {config.log.save_steps} steps); {start_over}"
            )
    checkpoint = resolve_checkpoint(run_dir, resume)
    problems = resume_problems(checkpoint, config.model_dump(mode="json"))  # reads checkpoint.json, checked
    read_training_state(checkpoint)  # a damaged state or mapper fails now, before anything is loaded or written
    load_checkpoint_mappers(checkpoint)
    if problems:
        raise TrainingSetupError(
            f"cannot resume from {checkpoint}: " + "; ".join(problems) + ". Continue it with its own "
            f"configuration ({run_dir / 'config.yaml'}; only {', '.join(RESUMABLE_KEYS)} may change), or "
            + start_over
        )
    return checkpoint


def check_new_tokens(tokenizer, tokens: list[str], source: str) -> None:
    """Placeholders must be new to the tokenizer: a mapper replaces every position of its token, so an
    existing one (a word, or `<|endoftext|>` which pads every prompt) would be replaced everywhere."""
    vocab = tokenizer.get_vocab()
    ours = {t.content for t in tokenizer.added_tokens_decoder.values() if not t.special}  # placeholders added earlier
    taken = [t for t in dict.fromkeys(tokens) if t in vocab and t not in ours]
    if taken:
        raise TrainingSetupError(
            f"placeholder token(s) {', '.join(taken)} already exist in the tokenizer of {source}: choose new names "
            "(data.placeholder_view_token, data.placeholder_object_token, data.scan_token_pattern)"
        )


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = temp_file_beside(path)
    try:
        with naming_path(path), os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records of steps up to `step` (the resumed checkpoint's): the steps after it are trained
    again. Lines cut short by the interruption are dropped. Replaced atomically."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if record_step <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if kept == lines:
        return
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("%s: dropped %d record(s) after step %d", path, len(lines) - len(kept), step)


# ---- model -------------------------------------------------------------------------------------


def build_training_model(
    config: ViewNetiConfig, components: SDComponents, data: TrainingData, resume_checkpoint: Path | None
) -> ViewNetiModel:
    """New or pretrained mappers for the mode; on resume, the checkpoint's mappers."""
    mode = config.learnable_mode
    view_mapper = None
    view_norm = None
    object_mappers = None
    new_tokens = data.object_tokens
    if resume_checkpoint is not None:
        loaded = load_checkpoint_mappers(resume_checkpoint)
        view_mapper = loaded.pop(VIEW_MAPPER_KEY, None)
        object_mappers, new_tokens = loaded, []
    elif mode in (4, 5):
        view_mapper = load_pretrained_view_mapper(
            config.model.pretrained_view_mapper,
            text_width=components.text_width,
            camera_representation=config.data.camera_representation,
            step=config.model.pretrained_view_mapper_step,
            view_caption=config.data.view_caption,
        )
    elif mode in (2, 3):
        view_norm = data.camera_normalization
    model = build_model(
        config,
        components,
        view_mapper=view_mapper,
        object_mappers=object_mappers,
        new_object_tokens=new_tokens,
        view_camera_normalization=view_norm,
    )
    if model.conditioner.view_mapper is not None:
        model.conditioner.view_mapper.requires_grad_(mode != 5)  # mode 5: the view mapper stays frozen
    return model


# ---- the loop ----------------------------------------------------------------------------------


def train(
    config: ViewNetiConfig,
    resume: str | None = None,
    components: SDComponents | None = None,
    on_step_end: Callable[[int], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the mappers of `config.learnable_mode`; `on_step_end(step)` runs after each optimizer step.

    The run directory's lock (`run_lock`) is held from before the first check to the end: a second
    run or resume of the same directory fails at once, naming this one's host and PID. Under a
    multi-process launch, rank 0 holds it for all ranks."""
    with hold_run_lock(run_dir_of(config), enabled=int(os.environ.get("RANK", "0")) == 0) as lock:
        return _train(config, resume, components, on_step_end, progress, lock)


def _train(
    config: ViewNetiConfig,
    resume: str | None,
    components: SDComponents | None,
    on_step_end: Callable[[int], None] | None,
    progress: bool,
    lock: RunLock | None,
) -> TrainResult:
    check_training_inputs(config, resume)
    run_dir = run_dir_of(config)
    resume_checkpoint = resume_checkpoint_of(config, resume) if resume is not None else None
    data = build_training_data(config)  # fails on unusable data before anything is written

    optim = config.optim
    # accelerate keeps a process-wide state; a second run in the same process (tests, pipeline workers)
    # may ask for another precision. The distributed part (PartialState) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        mixed_precision=optim.mixed_precision,
        log_with=None if config.log.report_to == "none" else config.log.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / config.log.logging_dir)),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],  # mode 3 uses one scene per step
        cpu=resolve_device(config.run.device).type == "cpu",
    )
    if optim.seed is not None and resume_checkpoint is None:  # a resumed run restores every RNG instead
        set_seed(optim.seed)  # python's random, numpy's global RNG, torch (CPU and every GPU)
    if optim.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True

    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[optim.mixed_precision]
    if components is None:
        components = load_components(
            config.model.pretrained_model_name_or_path, revision=config.model.revision,
            device=accelerator.device, dtype=weight_dtype,
        )
    else:
        components.to(device=accelerator.device, dtype=weight_dtype).freeze()
    check_new_tokens(components.tokenizer, [config.data.placeholder_view_token, *data.object_tokens], components.source)
    model = build_training_model(config, components, data, resume_checkpoint)
    # The inference fast path, minus the dtype (optim.mixed_precision sets it): channels-last, fused
    # self-attention projections and TF32 on CUDA ("auto"), torch.compile when run.compile_unet.
    acceleration = AccelerationOptions.from_config(config, accelerator.device)
    acceleration.dtype = None
    logger.info("acceleration: %s", apply_acceleration(components, acceleration).applied or "none")
    conditioner = model.conditioner

    trainable = [p for p in conditioner.mappers.parameters() if p.requires_grad]
    lr = optim.learning_rate
    if optim.scale_lr:
        lr *= optim.train_batch_size * optim.gradient_accumulation_steps * accelerator.num_processes
    optimizer = torch.optim.AdamW(
        trainable, lr=lr, betas=(optim.adam_beta1, optim.adam_beta2),
        weight_decay=optim.adam_weight_decay, eps=optim.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        optim.lr_scheduler, optimizer=optimizer, num_warmup_steps=optim.lr_warmup_steps * accelerator.num_processes
    )
    mapper_module = MapperForward(conditioner)
    mapper_module, optimizer, lr_scheduler = accelerator.prepare(mapper_module, optimizer, lr_scheduler)

    state = TrainingState(step=0, epoch=0, batch_in_epoch=0)
    if resume_checkpoint is not None:
        state = load_training_state(resume_checkpoint, optimizer, lr_scheduler)
        logger.info("resumed from %s at step %d", resume_checkpoint, state.step)
    # The run directory changes only now, after every input (a resumed checkpoint included) was read.
    if accelerator.is_main_process:
        if resume_checkpoint is None and run_dir.exists() and config.log.overwrite_ok:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        elif resume_checkpoint is not None:
            truncate_metrics(run_dir / METRICS_FILE, read_checkpoint_info(resume_checkpoint)["step"])
        removed = remove_stale_temp_dirs(run_dir)  # we hold the lock: no other writer owns them
        if removed:
            logger.info("removed %d temp dir(s) of interrupted checkpoint writes in %s", len(removed), run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
    if accelerator.is_main_process and config.log.report_to != "none":
        accelerator.init_trackers(config.log.exp_name)

    logger.info(
        "training mode %d: %d trainable mapper parameters, %d images (each seen %d times per epoch), lr %.2e, "
        "%d steps", config.learnable_mode, sum(p.numel() for p in trainable), len(data.dataset.images),
        data.dataset.repeats, lr, optim.max_train_steps,
    )
    if accelerator.is_local_main_process:
        warn_if_slow_on_cpu(accelerator.device, components.unet, training_work(config, optim.max_train_steps - state.step))
    posteriors = cache_vae_posteriors(components.vae, data.dataset, weight_dtype) if optim.cache_vae_posteriors else None
    losses: list[float] = []
    accumulated: list[torch.Tensor] = []  # micro-batch losses, kept on the device until the step ends
    bar = tqdm(total=optim.max_train_steps, initial=state.step, desc=f"mode {config.learnable_mode}",
               disable=not progress or not accelerator.is_local_main_process)

    while state.step < optim.max_train_steps:
        # Seeds come from each batch's position in the whole epoch, before the split over processes.
        batches = seeded_batches(data.batches(state.epoch), optim.seed or 0, state.epoch)
        batches = batches[accelerator.process_index :: accelerator.num_processes]
        loader = torch.utils.data.DataLoader(
            SeededItems(data.dataset), batch_sampler=batches[state.batch_in_epoch :], collate_fn=collate,
            num_workers=loader_workers(config.data.dataloader_num_workers, accelerator.device),
            pin_memory=accelerator.device.type == "cuda",
            # The loader draws a base seed for its workers whenever an iterator starts; drawing it from
            # its own generator keeps the global RNG stream identical between a resumed and a straight run.
            generator=torch.Generator().manual_seed((optim.seed or 0) * 100_003 + state.epoch),
        )
        for batch in loader:
            state.batch_in_epoch += 1
            with accelerator.accumulate(mapper_module):
                pixels = batch["pixel_values"].to(accelerator.device, dtype=weight_dtype, non_blocking=True)
                cameras = batch.get("camera")
                ids = conditioner.tokenize(batch["caption"], cameras is not None)
                posterior = None
                if posteriors is not None:
                    index = batch["source_index"].to(accelerator.device)
                    posterior = (posteriors[0][index], posteriors[1][index])
                loss = diffusion_loss(components, mapper_module, pixels, ids, cameras, posterior, batch["item_seed"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and optim.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(trainable, optim.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            accumulated.append(loss.detach())
            if not accelerator.sync_gradients:
                continue

            state.step += 1
            step_loss = float(torch.stack(accumulated).mean())  # one host sync per optimizer step
            accumulated.clear()
            losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            record = {"step": state.step, "loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}
            if accelerator.is_main_process:
                with naming_path(run_dir / METRICS_FILE), (run_dir / METRICS_FILE).open("a") as f:
                    f.write(json.dumps(record) + "\n")
            accelerator.log({"loss": step_loss, "lr": record["lr"]}, step=state.step)

            done = state.step >= optim.max_train_steps
            if accelerator.is_main_process and (state.step % config.log.save_steps == 0 or done):
                if lock is not None:
                    lock.check_still_held()
                save_checkpoint(
                    run_dir, state.step, dict(conditioner.mappers.items()), checkpoint_info(config, model),
                    optimizer, lr_scheduler, state, config.log.checkpoints_total_limit,
                )
            if accelerator.is_main_process and (state.step % config.eval.validation_steps == 0 or (done and config.eval.final_validation)):
                render_validation(config, model, data, run_dir, state.step, accelerator, progress=progress)
            if on_step_end is not None:
                on_step_end(state.step)
            if done:
                break
        else:  # epoch exhausted
            state.epoch += 1
            state.batch_in_epoch = 0
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    final = resolve_checkpoint(run_dir, state.step)
    return TrainResult(run_dir, final, state.step, losses, model.weights_label)


def loader_workers(setting: int | str, device: torch.device) -> int:
    """`data.dataloader_num_workers`: "auto" is 4 worker processes (at most the CPUs there are) on CUDA,
    so image decoding and augmentation overlap the GPU's work, and 0 on CPU, whose cores the UNet uses."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def checkpoint_info(config: ViewNetiConfig, model: ViewNetiModel) -> dict:
    """What a checkpoint needs to be used without the training config at hand."""
    components = model.components
    return {
        "learnable_mode": config.learnable_mode,
        "base_model": components.source,
        "text_width": components.text_width,
        "num_unet_layers": model.num_layers,
        "weights": components.weights,
        "view_token": config.data.placeholder_view_token,
        "object_tokens": list(model.conditioner.object_mappers),
        "camera_representation": config.data.camera_representation,
        "output_bypass": config.model.output_bypass,
        "output_bypass_alpha_view": config.model.output_bypass_alpha_view,
        "output_bypass_alpha_object": config.model.output_bypass_alpha_object,
        "config": json.loads(json.dumps(config.model_dump(mode="json"))),
    }

