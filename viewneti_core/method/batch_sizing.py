"""Sampling batch sizes that fill the accelerator: `eval.eval_batch_size: auto` and `eval.decode_batch_size: auto`.

A fixed batch size is wrong on every GPU but one: 8 requests leave most of an H200 idle, and a 768x576
VAE decode of a whole batch needs ~65 GB. So on CUDA the sizes are *measured* at the run's real shapes
before the first batch: one UNet call at 1 and at 2 requests and one VAE decode of 1 and 2 latents,
each timed for its peak allocation, give a fixed cost and a cost per item (a line through the two
points); the per-request text contexts the sampler holds (keys and values for every timestep and
layer, cond + uncond rows, plus the cache of their (prompt, camera) pair) are exact tensor sizes and
are added. The largest batch whose cost fits in `HEADROOM` of the free memory (free as the driver
reports it plus what PyTorch's allocator holds unused) is taken, capped at the request count.
The probes run the eager modules, which peak higher than a compiled UNet: the sizes err on the safe side.

On a CPU (and any other device) there is nothing to measure against: the sizes are `CPU_BATCH` and
`CPU_DECODE_BATCH`, the values that were the defaults before `auto`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

CPU_BATCH = 8  # requests per UNet call off CUDA
CPU_DECODE_BATCH = 4  # latents per VAE decode off CUDA
HEADROOM = 0.85  # share of the free memory a batch may plan to use (fragmentation, cuDNN workspaces)


@dataclass(frozen=True)
class MemoryCost:
    """Peak bytes of one call as `fixed + per_item * n` (n requests or latents)."""

    fixed: int
    per_item: int

    @classmethod
    def from_peaks(cls, peak_one: int, peak_two: int) -> MemoryCost:
        per_item = max(peak_two - peak_one, 1)
        return cls(fixed=max(peak_one - per_item, 0), per_item=per_item)

    def largest(self, budget: float, cap: int) -> int:
        """The most items whose cost stays within `budget` bytes; at least 1, at most `cap`."""
        return max(1, min(cap, int((budget - self.fixed) // self.per_item)))


def context_bytes_per_request(num_steps: int, num_layers: int, length: int, width: int, itemsize: int) -> int:
    """What the sampler holds per request: keys and values (T, L, 2 rows, 77, D) stacked for its
    batch, plus its (prompt, camera) pair's cached keys and values (T, L, 77, D) in the worst case
    that no other request of the batch shares them."""
    one = num_steps * num_layers * length * width * itemsize
    return 2 * 2 * one + 2 * one


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int  # requests per UNet call
    decode_batch_size: int  # latents per VAE decode call
    free_bytes: int | None  # what the plan was made against (None: not measured, CPU values)


def plan_batches(free_bytes: int, unet: MemoryCost, decode: MemoryCost, context_per_request: int,
                 n_requests: int, batch: int | None = None, decode_batch: int | None = None,
                 headroom: float = HEADROOM) -> BatchPlan:
    """Largest UNet batch whose call plus contexts fit; then the largest decode that fits beside
    the contexts of that batch, which are still alive while it decodes. A size given is kept."""
    budget = free_bytes * headroom
    if batch is None:
        batch = MemoryCost(unet.fixed, unet.per_item + context_per_request).largest(budget, n_requests)
    if decode_batch is None:
        decode_batch = decode.largest(budget - batch * context_per_request, batch)
    return BatchPlan(batch, decode_batch, free_bytes)


def cuda_free_bytes(device: torch.device) -> int:
    """Free memory as the driver reports it plus the allocator's cached but unused blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def cuda_peak_bytes(run: Callable[[], object], device: torch.device) -> int:
    """Peak allocation of `run()` above what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def unet_probe(unet: torch.nn.Module, latent_shape: tuple[int, ...], num_layers: int, length: int,
               width: int) -> Callable[[int], None]:
    """One guided UNet call at `n` requests (2n rows) with per-layer contexts of the real shape."""
    device, dtype = unet.device, unet.dtype

    @torch.no_grad()
    def run(n: int) -> None:
        latents = torch.zeros(2 * n, *latent_shape, device=device, dtype=dtype)
        contexts = torch.zeros(num_layers, 2 * n, length, width, device=device, dtype=dtype)
        t = torch.tensor(500, device=device)
        unet(latents, t, encoder_hidden_states=contexts[0],
             cross_attention_kwargs={"xti_keys": contexts, "xti_values": contexts}, return_dict=False)

    return run


def decode_probe(vae: torch.nn.Module, latent_shape: tuple[int, ...]) -> Callable[[int], None]:
    """One VAE decode of `n` latents."""
    device, dtype = vae.device, vae.dtype

    @torch.no_grad()
    def run(n: int) -> None:
        vae.decode(torch.zeros(n, *latent_shape, device=device, dtype=dtype), return_dict=False)

    return run


def measure_cost(probe: Callable[[int], None], device: torch.device) -> MemoryCost:
    return MemoryCost.from_peaks(cuda_peak_bytes(lambda: probe(1), device),
                                 cuda_peak_bytes(lambda: probe(2), device))
