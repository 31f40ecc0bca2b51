"""Novel view synthesis and view-controlled text-to-image (DESIGN 3.7).

DPM-Solver++ (multistep, built from the model's own scheduler config), classifier-free guidance with
the empty prompt, unconditional and conditional rows in ONE UNet call, and many requests (cameras x
seeds) per batch. Every request has its own generator, so an image depends only on (seed, camera,
prompt, weights), never on which other requests shared its batch.

The text encoder runs once per distinct (prompt, camera) for all timesteps of a `sample` call and its
contexts are shared by every seed and batch that uses them (kept until their last batch); the
unconditional context is encoded once per sampler. Every batch of a call has the same shape (requests
spread evenly over the fewest calls; a ragged last batch is padded with copies of its last request,
whose images are dropped), so a UNet compiled with `dynamic=False` does not recompile within a call; the VAE decodes `decode_batch_size` images at a time.
Either size may be "auto": measured on CUDA against free memory, fixed off CUDA (`batch_sizing`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from viewneti_core.base_model.sd_models import SDComponents
from viewneti_core.method import batch_sizing
from viewneti_core.method.conditioning import TextConditioner, tokenize

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleRequest:
    """One image to generate. `camera` is the raw camera (3x4 matrix or 12/3 numbers) or None."""

    prompt: str
    seed: int
    camera: tuple[float, ...] | None = None

    @classmethod
    def with_camera(cls, prompt: str, seed: int, camera: np.ndarray | torch.Tensor | None) -> SampleRequest:
        if camera is None:
            return cls(prompt, seed, None)
        values = np.asarray(camera.detach().cpu() if torch.is_tensor(camera) else camera, dtype=np.float64)
        return cls(prompt, seed, tuple(float(v) for v in values.reshape(-1)))


@dataclass
class SamplerSettings:
    num_inference_steps: int = 30
    guidance_scale: float = 7.5
    height: int = 576
    width: int = 768
    batch_size: int | Literal["auto"] = "auto"  # requests per UNet call (each request is two rows: uncond and cond)
    final_sigmas_type: str = "sigma_min"  # the original's last step (diffusers 0.14); "zero" is today's default
    decode_batch_size: int | Literal["auto"] = "auto"  # images per VAE decode call

    @classmethod
    def from_config(cls, config) -> SamplerSettings:
        """The `eval` section of a ViewNetiConfig."""
        e = config.eval
        return cls(e.num_denoising_steps, e.guidance_scale, e.height, e.width, e.eval_batch_size, e.final_sigmas_type,
                   e.decode_batch_size)


def make_dpm_solver(components: SDComponents, num_inference_steps: int,
                    final_sigmas_type: str = "sigma_min") -> DPMSolverMultistepScheduler:
    """DPM-Solver++ from the model's scheduler config.

    The original ran diffusers 0.14, whose last step lands on the noise level of timestep 0
    (sigma_min), not on zero noise as diffusers >= 0.26 does by default (`final_sigmas_type="zero"`,
    which also forces a first-order last step): "sigma_min" reproduces it.
    """
    scheduler = DPMSolverMultistepScheduler.from_config(components.scheduler.config,
                                                        final_sigmas_type=final_sigmas_type)
    scheduler.set_timesteps(num_inference_steps, device=components.device)
    return scheduler


def initial_latents(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Noise drawn on the CPU from the request's own generator: the same on every device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


class ViewNetiSampler:
    def __init__(self, components: SDComponents, conditioner: TextConditioner, settings: SamplerSettings):
        scale = 2 ** (len(components.vae.config.block_out_channels) - 1)
        if settings.height % scale or settings.width % scale:
            raise ValueError(f"height and width must be multiples of {scale}, got {settings.width}x{settings.height}")
        sizes = (settings.num_inference_steps, settings.batch_size, settings.decode_batch_size)
        if any(size != "auto" and (not isinstance(size, int) or size < 1) for size in sizes):
            raise ValueError("num_inference_steps, batch_size and decode_batch_size must be positive "
                             f"(batch sizes may be 'auto'), got {sizes}")
        self.components = components
        self.conditioner = conditioner
        self.settings = settings
        self.latent_shape = (components.unet.config.in_channels, settings.height // scale, settings.width // scale)
        self._uncond: torch.Tensor | None = None  # (1, 77, D) empty-prompt context, encoded on first use
        self._costs: tuple[batch_sizing.MemoryCost, batch_sizing.MemoryCost] | None = None  # measured once
        self.last_plan: batch_sizing.BatchPlan | None = None  # the sizes the latest `sample` call used

    def plan(self, n_requests: int) -> batch_sizing.BatchPlan:
        """Batch sizes for a call of `n_requests`: the settings' numbers, "auto" resolved (module
        `batch_sizing`: measured against free memory on CUDA, its CPU values elsewhere)."""
        batch, decode = self.settings.batch_size, self.settings.decode_batch_size
        device = self.components.device
        if "auto" not in (batch, decode) or device.type != "cuda":
            return batch_sizing.BatchPlan(batch_sizing.CPU_BATCH if batch == "auto" else batch,
                                          batch_sizing.CPU_DECODE_BATCH if decode == "auto" else decode, None)
        conditioner, unet = self.conditioner, self.components.unet
        length, width = conditioner.tokenizer.model_max_length, unet.config.cross_attention_dim
        if self._costs is None:
            self._costs = (
                batch_sizing.measure_cost(batch_sizing.unet_probe(unet, self.latent_shape, conditioner.num_layers,
                                                                  length, width), device),
                batch_sizing.measure_cost(batch_sizing.decode_probe(self.components.vae, self.latent_shape), device),
            )
        context = batch_sizing.context_bytes_per_request(self.settings.num_inference_steps, conditioner.num_layers,
                                                         length, width, unet.dtype.itemsize)
        free = batch_sizing.cuda_free_bytes(device)
        plan = batch_sizing.plan_batches(free, *self._costs, context, n_requests, batch=None if batch == "auto" else batch,
                                         decode_batch=None if decode == "auto" else decode)
        logger.info("batch sizes for %d requests on %s: %d per UNet call, %d per VAE decode (%.1f GiB free)",
                    n_requests, device, plan.batch_size, plan.decode_batch_size, free / 2**30)
        return plan

    @torch.no_grad()
    def sample(self, requests: Sequence[SampleRequest], progress: bool = True, desc: str = "sampling") -> torch.Tensor:
        """Images in [0, 1] as a float32 CPU tensor (N, 3, H, W), in the order of `requests`."""
        if not requests:
            raise ValueError("no sample requests given")
        # Validate every prompt/camera pair before any UNet work.
        self._check_requests(requests)
        plan = self.last_plan = self.plan(len(requests))
        size = batch_shape(len(requests), plan.batch_size)  # one shape for every batch of this call
        batches = [list(requests[i : i + size]) for i in range(0, len(requests), size)]
        steps = self.settings.num_inference_steps
        timesteps = make_dpm_solver(self.components, steps, self.settings.final_sigmas_type).timesteps
        last_use = {_pair(r): index for index, batch in enumerate(batches) for r in batch}
        cache: dict = {}
        images = []
        with tqdm(total=len(batches) * steps, desc=desc, unit="step", disable=not progress) as bar:
            for index, batch in enumerate(batches):
                padded = batch + [batch[-1]] * (size - len(batch))
                keys, values = self._contexts(padded, timesteps, cache)
                latents = self._denoise(padded, keys, values, bar)
                images.append(self.decode(latents[: len(batch)], plan.decode_batch_size))  # padding never decoded
                for pair in [p for p, last in last_use.items() if last == index]:
                    cache.pop(pair, None)  # no later batch needs it
        return torch.cat(images)

    def _check_requests(self, requests: Sequence[SampleRequest]) -> None:
        self.conditioner.tokenize([r.prompt for r in requests], [r.camera is not None for r in requests])
        view = self.conditioner.view_mapper
        for r in requests:
            if r.camera is not None and view is not None and len(r.camera) != view.camera_dim:
                raise ValueError(
                    f"camera for prompt {r.prompt!r} has {len(r.camera)} numbers; the view mapper expects "
                    f"{view.camera_dim} ({view.config.camera_normalization['representation']})"
                )
            if r.camera is not None and not all(np.isfinite(r.camera)):
                raise ValueError(f"camera for prompt {r.prompt!r} (seed {r.seed}) has non-finite values")

    def _denoise(self, batch: Sequence[SampleRequest], keys: torch.Tensor, values: torch.Tensor,
                 bar: tqdm) -> torch.Tensor:
        """Final latents of one batch, given its contexts `keys`/`values` (T, L, 2B, 77, D)."""
        components, settings = self.components, self.settings
        device, unet = components.device, components.unet
        scheduler = make_dpm_solver(components, settings.num_inference_steps, settings.final_sigmas_type)
        timesteps = scheduler.timesteps

        latents = torch.cat([initial_latents(r.seed, (1, *self.latent_shape)) for r in batch])
        latents = latents.to(device=device, dtype=unet.dtype) * scheduler.init_noise_sigma

        for step, t in enumerate(timesteps):
            model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            noise = unet(
                model_input,
                t,
                encoder_hidden_states=keys[step, 0],
                cross_attention_kwargs={"xti_keys": keys[step], "xti_values": values[step]},
                return_dict=False,
            )[0]
            uncond, cond = noise.chunk(2)
            guided = uncond + settings.guidance_scale * (cond - uncond)
            latents = scheduler.step(guided, t, latents, return_dict=False)[0]
            bar.update(1)
        return latents

    def _contexts(
        self, batch: Sequence[SampleRequest], timesteps: torch.Tensor, cache: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer contexts (T, L, 2B, 77, D) of a batch: unconditional rows first, then conditional.

        Conditional contexts come from `cache` ({(prompt, camera): (keys, values), each (T, L, 77, D)});
        the pairs it lacks are encoded for all timesteps in one batched call (rows step-major within
        it) and added. The unconditional row is the plain empty-prompt encoding, the same for every
        layer and step.
        """
        cache = {} if cache is None else cache
        conditioner, dtype = self.conditioner, self.components.unet.dtype
        missing = [p for p in dict.fromkeys(_pair(r) for r in batch) if p not in cache]
        if missing:
            ids = conditioner.tokenize([p for p, _ in missing], [c is not None for _, c in missing])
            n_steps, n_new = len(timesteps), len(missing)
            cam_dim = conditioner.view_mapper.camera_dim if conditioner.view_mapper is not None else 0
            cameras = torch.tensor([c if c is not None else (0.0,) * cam_dim for _, c in missing], dtype=torch.float32)
            keys, values = conditioner.encode(  # row = step * n_new + pair
                ids.repeat(n_steps, 1),
                timesteps.to(torch.float32).repeat_interleave(n_new),
                cameras.repeat(n_steps, 1) if cam_dim else None,
            )
            layers, _, length, width = keys.shape
            keys = keys.to(dtype).reshape(layers, n_steps, n_new, length, width).permute(2, 1, 0, 3, 4)
            values = values.to(dtype).reshape(layers, n_steps, n_new, length, width).permute(2, 1, 0, 3, 4)
            for i, pair in enumerate(missing):
                cache[pair] = (keys[i], values[i])
        cond_keys = torch.stack([cache[_pair(r)][0] for r in batch], dim=2)
        cond_values = torch.stack([cache[_pair(r)][1] for r in batch], dim=2)
        uncond = self._unconditional().expand(*cond_keys.shape[:2], len(batch), *cond_keys.shape[3:])
        return torch.cat([uncond, cond_keys], dim=2), torch.cat([uncond, cond_values], dim=2)

    def _unconditional(self) -> torch.Tensor:
        if self._uncond is None:
            empty = self.conditioner.encode_plain(tokenize(self.conditioner.tokenizer, [""]))  # (1, 77, D)
            self._uncond = empty.to(self.components.unet.dtype)
        return self._uncond

    def decode(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Images in [0, 1] (float32, CPU), `chunk` latents per VAE call (default: the plan's)."""
        vae = self.components.vae
        chunk = chunk or self.plan(len(latents)).decode_batch_size
        out = []
        for part in latents.split(chunk):
            images = vae.decode(part.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            out.append((images.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)


def batch_shape(n_requests: int, batch_size: int) -> int:
    """Requests per UNet call: as few calls as `batch_size` allows, spread evenly, so the padding of
    the last batch stays below one request per batch (102 at 8: 13 calls of 8, 2 pads; 12 at 8: 2 of 6)."""
    n_batches = -(-n_requests // batch_size)
    return -(-n_requests // n_batches)


def _pair(request: SampleRequest) -> tuple[str, tuple[float, ...] | None]:
    """What a request's text contexts depend on (not its seed)."""
    return request.prompt, request.camera
