"""Training throughput: optimizer steps per second of mode 5 (per-scene fitting) and mode 3
(pretraining), for our path (`viewneti_core.training.trainer.diffusion_loss`, exactly what `train()` runs)
and for the reference-style path (per-layer encoder calls, fp32).

What one optimizer step is here: `accumulation` micro-batches of `batch` images, each
`diffusion_loss` forward + backward (loss / accumulation, as accelerate scales it), then AdamW.step
and zero_grad. Not included: data loading and augmentation (CPU dataloader workers run them
concurrently in training), checkpoint writes and validation renders. The real `train()` loop, which
includes them (validation off), is timed next to it (bench/train_loop.py, `ours_train_loop`).
Multi-GPU (mode 3): launch with `torchrun --nproc_per_node N -m bench pretrain ...`; each process
wraps the mapper module in DDP (find_unused_parameters, as training does) and throughput is
reported as global optimizer steps per second (each consuming N x batch x accumulation images).
"""

from __future__ import annotations

import gc
import itertools
import os
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from bench.common import count_flops, peak_memory, reset_peak_memory, synchronize, tflops
from bench.reference_path import reference_diffusion_loss
from bench.setup import DTYPES, build_bench_model
from bench.train_loop import run_train_loop
from viewneti_core.data import dtu
from viewneti_core.training.trainer import MapperForward, diffusion_loss

PROJECTED_STEPS = {5: 3000, 3: 50_000}


class _Workload:
    """Synthetic micro-batches shaped like the training data: images in [-1, 1], captions, cameras."""

    def __init__(self, bench, mode: int, batch: int, width: int, height: int, device, dtype, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.mode = mode
        self.batch = batch
        n_images = 9
        self.pixels = (torch.rand(n_images, 3, height, width, generator=generator) * 2 - 1).to(device=device, dtype=dtype)
        views = dtu.TRAIN_VIEWS[:n_images]
        self.cameras = torch.tensor(bench.cameras[list(views)].reshape(len(views), 12), dtype=torch.float32)
        self.tokens = bench.object_tokens
        self.conditioner = bench.conditioner
        self.cursor = 0

    def next(self):
        """Mode 5: 3 of the scene's images; mode 3: every micro-batch from one scene (cycled)."""
        index = [(self.cursor * self.batch + i) % self.pixels.shape[0] for i in range(self.batch)]
        token = self.tokens[self.cursor % len(self.tokens)]
        self.cursor += 1
        caption = f"<view>. A photo of a {token}"
        ids = self.conditioner.tokenize([caption] * self.batch, True)
        return self.pixels[index], ids, self.cameras[index]


def _world() -> tuple[int, int]:
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _measure(bench, loss_fn, module, mode, args, device, dtype, steps, warmup, ddp: bool):
    width, height = args.train_size
    work = _Workload(bench, mode, args.batch, width, height, device, dtype)
    trainable = [p for p in bench.conditioner.mappers.parameters() if p.requires_grad]
    lr = 1e-3 * args.batch * args.accumulation * _world()[0]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    torch.manual_seed(0)

    def one_step():
        for micro in range(args.accumulation):
            pixels, ids, cameras = work.next()
            sync = not ddp or micro == args.accumulation - 1
            with nullcontext() if sync else module.no_sync():
                loss = loss_fn(pixels, ids, cameras) / args.accumulation
                loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    cold_start = time.perf_counter()
    for _ in range(warmup):
        one_step()
    synchronize(device)
    cold = time.perf_counter() - cold_start if warmup else None
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    synchronize(device)
    seconds = time.perf_counter() - start
    if ddp:  # the slowest rank sets the pace
        t = torch.tensor([seconds], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        seconds = float(t)
    out = {"timed_steps": steps, "warmup_steps": warmup, "warmup_seconds": cold, "seconds": seconds,
           "steps_per_s": steps / seconds, "seconds_per_step": seconds / steps, "last_loss": float(loss.detach()) * args.accumulation,
           "trainable_params": sum(p.numel() for p in trainable), **peak_memory(device)}
    if args.flops:
        def micro_batch():
            pixels, ids, cameras = work.next()
            loss_fn(pixels, ids, cameras).backward()
        with torch.compiler.set_stance("force_eager"):
            per_micro = count_flops(micro_batch)
        optimizer.zero_grad(set_to_none=True)
        out["flops_per_step"] = per_micro * args.accumulation
        out["tflops_per_s"] = tflops(per_micro * args.accumulation * steps, seconds)
    return out


_SEEDS = itertools.count()


def _item_seeds(n: int) -> torch.Tensor:
    """Fresh per-image seeds, as `train()` passes them (each image draws its noise from its own generator)."""
    return torch.tensor([next(_SEEDS) for _ in range(n)], dtype=torch.int64)


def _run_ours(args, device, dtype, mode, num_scenes, ddp) -> dict:
    ours = build_bench_model(args.model, device, dtype, mode=mode, num_scenes=num_scenes, acceleration=args.acceleration)
    module = MapperForward(ours.conditioner)
    if ddp:
        module = torch.nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
    out = _measure(
        ours, lambda p, i, c: diffusion_loss(ours.components, module, p, i, c, item_seeds=_item_seeds(len(p))),
        module, mode, args, device, dtype,
        args.train_steps, args.train_warmup, ddp,
    )
    out["acceleration"] = vars(ours.acceleration) if ours.acceleration else None
    return out


def _run_reference(args, device, mode, num_scenes) -> dict:
    ref_dtype = DTYPES[args.train_reference_dtype]
    ref = build_bench_model(args.model, device, ref_dtype, mode=mode, num_scenes=num_scenes, acceleration=None)
    return _measure(
        ref, lambda p, i, c: reference_diffusion_loss(ref.components, ref.conditioner, p, i, c), None, mode,
        args, device, ref_dtype, args.reference_train_steps or args.train_steps, args.train_warmup, False,  # same warm-up
    )


def run(args, peak_tflops: float | None, mode: int) -> dict:
    world, rank = _world()
    ddp = world > 1
    if ddp:
        backend = "nccl" if args.device == "cuda" else "gloo"
        dist.init_process_group(backend)
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if args.device == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    else:
        device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    width, height = args.train_size
    num_scenes = args.scenes if mode == 3 else 1
    result: dict = {
        "benchmark": "fitting" if mode == 5 else "pretraining",
        "settings": {"model": args.model, "learnable_mode": mode, "width": width, "height": height,
                     "batch": args.batch, "accumulation": args.accumulation, "processes": world,
                     "scenes": num_scenes, "dtype": args.dtype, "reference_dtype": args.train_reference_dtype,
                     "timed_steps": args.train_steps, "warmup_steps": args.train_warmup},
        "weights": "random (builtin builder; timings only)",
        "excludes": "data loading/augmentation, checkpoint writes, validation renders",
    }

    ours_out = _run_ours(args, device, dtype, mode, num_scenes, ddp)
    target_steps = PROJECTED_STEPS[mode]
    ours_out[f"projected_{target_steps}_steps_s"] = target_steps / ours_out["steps_per_s"]
    ours_out["projection_note"] = f"PROJECTED: {target_steps} / measured steps per second"
    if peak_tflops and "tflops_per_s" in ours_out:
        ours_out["share_of_peak"] = ours_out["tflops_per_s"] / (peak_tflops * world)
    result["ours"] = ours_out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if args.train_loop and not ddp:  # what `viewneti train` runs, data loading included
        loop = run_train_loop(args, mode, device, dtype)
        loop[f"projected_{target_steps}_steps_s"] = target_steps / loop["steps_per_s"]
        result["ours_train_loop"] = loop
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if args.reference and not ddp:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the original's default (no --allow_tf32)
        try:
            ref_out = _run_reference(args, device, mode, num_scenes)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        ref_out[f"projected_{target_steps}_steps_s"] = target_steps / ref_out["steps_per_s"]
        if peak_tflops and "tflops_per_s" in ref_out:
            ref_out["share_of_peak"] = ref_out["tflops_per_s"] / peak_tflops
        result["reference"] = ref_out
        result["speedup"] = ours_out["steps_per_s"] / ref_out["steps_per_s"]
        if "ours_train_loop" in result:  # the train() loop includes data loading; the reference does not
            result["speedup_train_loop"] = result["ours_train_loop"]["steps_per_s"] / ref_out["steps_per_s"]
    elif ddp:
        result["reference"] = "skipped under multi-process runs: measure it in a single-device run"

    if mode == 5 and args.model == "sd21-random" and device.type == "cuda" and (width, height) == (512, 384) \
            and args.batch == 3 and args.accumulation == 3:
        result["targets"] = {
            # issue 12: <= 5 min including data loading: the train() loop's projection
            "projected_3000_steps<=300s": (result["ours_train_loop"]["projected_3000_steps_s"] <= 300
                                           if "ours_train_loop" in result else None),
            "speedup>=4": result.get("speedup", 0) >= 4 if "speedup" in result else None,
        }
    elif mode == 5:
        result["targets"] = "n/a: targets are defined for sd21-random at 512x384, batch 3, accumulation 3 on one H100"
    result["rank"] = rank
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return result


def table_rows(result: dict) -> list[tuple[str, object]]:
    ours, ref = result["ours"], result.get("reference")
    key = next(k for k in ours if k.startswith("projected_") and k.endswith("_s"))
    rows = [
        ("settings", ", ".join(f"{k}={v}" for k, v in result["settings"].items())),
        ("ours: optimizer steps / s", ours["steps_per_s"]),
        ("ours: s / step", ours["seconds_per_step"]),
        (f"ours: {key} (PROJECTED)", ours[key]),
        ("ours: warm-up seconds", ours["warmup_seconds"]),
        ("ours: peak memory GiB", ours["peak_memory_gib"]),
    ]
    if "tflops_per_s" in ours:
        rows += [("ours: TFLOP / step", ours["flops_per_step"] / 1e12), ("ours: TFLOP/s", ours["tflops_per_s"])]
        if "share_of_peak" in ours:
            rows.append(("ours: share of peak", ours["share_of_peak"]))
    loop = result.get("ours_train_loop")
    if loop:
        rows += [("ours, train() loop: steps / s", loop["steps_per_s"]),
                 (f"ours, train() loop: {key} (PROJECTED)", loop[key]),
                 ("ours, train() loop: setup + warm-up s", loop["setup_and_warmup_s"])]
    if isinstance(ref, dict):
        rows += [("reference: optimizer steps / s", ref["steps_per_s"]), (f"reference: {key} (PROJECTED)", ref[key]),
                 ("reference: peak memory GiB", ref["peak_memory_gib"])]
        if "tflops_per_s" in ref:
            rows.append(("reference: TFLOP/s", ref["tflops_per_s"]))
        rows.append(("speed-up (ours / reference steps/s)", result["speedup"]))
    elif ref:
        rows.append(("reference", ref))
    if "targets" in result:
        rows.append(("targets", result["targets"]))
    return rows
