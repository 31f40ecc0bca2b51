"""Scene inference: views x seeds novel views, DPM-Solver++ with CFG, timed from loaded weights to
decoded images, for our sampler and for the reference-style one."""

from __future__ import annotations

import gc
import time

import torch

from bench.common import count_flops, peak_memory, reset_peak_memory, synchronize, tflops, timed
from bench.reference_path import ReferenceStyleSampler
from bench.setup import DTYPES, PROMPT, build_bench_model
from viewneti_core import dtu
from viewneti_core.sampler import SampleRequest, SamplerSettings, ViewNetiSampler, make_dpm_solver

FULL = {"views": 34, "seeds": 3, "steps": 30, "width": 768, "height": 576}


def scene_requests(cameras, views: int, seeds: int) -> list[SampleRequest]:
    """The evaluation views (9 train + 25 test, DTU order) x seeds, view-major like evaluation."""
    if not 1 <= views <= len(dtu.EVAL_VIEWS):
        raise ValueError(f"--views must be in 1..{len(dtu.EVAL_VIEWS)}")
    return [SampleRequest.with_camera(PROMPT, seed, cameras[view]) for view in dtu.EVAL_VIEWS[:views] for seed in range(seeds)]


def _wrap_phase(device, phases: dict, key: str, fn):
    def wrapped(*args, **kwargs):
        with timed(device, phases, key):
            return fn(*args, **kwargs)

    return wrapped


def _force_eager():
    return torch.compiler.set_stance("force_eager")


def _count_batch(sampler: ViewNetiSampler, unet, batch, timesteps) -> tuple[int, int, int]:
    holder = {}
    ctx = count_flops(lambda: holder.update(kv=sampler._contexts(batch, timesteps)))
    keys, values = holder["kv"]
    latents = torch.zeros((2 * len(batch), *sampler.latent_shape), device=unet.device, dtype=unet.dtype)
    step = count_flops(lambda: unet(
        latents, timesteps[0], encoder_hidden_states=keys[0, 0],
        cross_attention_kwargs={"xti_keys": keys[0], "xti_values": values[0]}, return_dict=False))
    dec = count_flops(lambda: sampler.decode(latents[: len(batch)]))
    return ctx, step, dec


def _count_ours(sampler: ViewNetiSampler, requests: list[SampleRequest]) -> dict:
    """FLOPs per phase, counted once per distinct batch size on the eager modules (same maths)."""
    size = sampler.settings.batch_size
    batches = [requests[i : i + size] for i in range(0, len(requests), size)]
    steps = sampler.settings.num_inference_steps
    per_size: dict[int, tuple[int, int, int]] = {}
    unet = sampler.components.unet
    timesteps = make_dpm_solver(sampler.components, steps).timesteps
    with _force_eager(), torch.no_grad():
        for batch in batches:
            if len(batch) not in per_size:
                per_size[len(batch)] = _count_batch(sampler, unet, batch, timesteps)
    totals = {"contexts": 0, "denoise": 0, "decode": 0}
    for batch in batches:
        ctx, step, dec = per_size[len(batch)]
        totals["contexts"] += ctx
        totals["denoise"] += steps * step
        totals["decode"] += dec
    totals["total"] = sum(totals.values())
    return totals


def run(args, peak_tflops: float | None) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    width, height = args.size
    settings = SamplerSettings(
        num_inference_steps=args.steps, guidance_scale=7.5, height=height, width=width, batch_size=args.batch_size
    )
    result: dict = {
        "benchmark": "scene_inference",
        "settings": {"model": args.model, "views": args.views, "seeds": args.seeds, "steps": args.steps,
                     "width": width, "height": height, "guidance_scale": 7.5, "sampler": "DPM-Solver++ (multistep)",
                     "batch_size_requests": args.batch_size, "dtype": args.dtype,
                     "reference_dtype": args.reference_dtype or args.dtype},
        "weights": "random (builtin builder; timings only, images are not meaningful)",
    }

    ours_out, images, requests = _run_ours(args, device, dtype, settings, peak_tflops)
    result["ours"] = ours_out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.reference:
        return result
    ref_out = _run_reference(args, device, settings, peak_tflops, requests, images)
    result["reference"] = ref_out
    total_s = ours_out["seconds"]
    result["speedup"] = ref_out["seconds"] / total_s
    full = (args.model == "sd21-random" and device.type == "cuda"
            and all(getattr(args, k) == v for k, v in FULL.items() if k in ("views", "seeds", "steps"))
            and (width, height) == (FULL["width"], FULL["height"]))
    if full:
        denoise_share = (ours_out.get("share_of_peak") or {}).get("denoise")
        result["targets"] = {
            "scene_seconds<=30": total_s <= 30,
            "speedup>=15": result["speedup"] >= 15,
            "denoise_share_of_peak>=0.40": None if denoise_share is None else denoise_share >= 0.40,
        }
    else:
        result["targets"] = "n/a: targets are defined for sd21-random, 34x3, 30 steps, 768x576 on one H100"
    return result


def _run_ours(args, device, dtype, settings, peak_tflops):
    ours = build_bench_model(args.model, device, dtype, acceleration=args.acceleration)
    requests = scene_requests(ours.cameras, args.views, args.seeds)
    sampler = ViewNetiSampler(ours.components, ours.conditioner, settings)
    phases: dict[str, float] = {}
    sampler._contexts = _wrap_phase(device, phases, "contexts", sampler._contexts)
    sampler.decode = _wrap_phase(device, phases, "decode", sampler.decode)
    cold_s = None
    if args.warmup:
        synchronize(device)
        start = time.perf_counter()
        sampler.sample(requests, progress=False)
        synchronize(device)
        cold_s = time.perf_counter() - start
    runs = []
    for _ in range(max(1, args.repeats)):
        phases.clear()
        reset_peak_memory(device)
        synchronize(device)
        start = time.perf_counter()
        images = sampler.sample(requests, progress=False)
        synchronize(device)
        runs.append((time.perf_counter() - start, dict(phases)))
    total_s, phases = min(runs, key=lambda r: r[0])
    phases["denoise"] = total_s - phases.get("contexts", 0.0) - phases.get("decode", 0.0)
    memory = peak_memory(device)
    out = {
        "seconds": total_s, "all_runs_s": [r[0] for r in runs], "cold_first_run_s": cold_s,
        "images": len(requests), "seconds_per_image": total_s / len(requests), "phases_s": phases,
        "acceleration": vars(ours.acceleration) if ours.acceleration else None, **memory,
    }
    if args.flops:
        flops = _count_ours(sampler, requests)
        out["flops"] = flops
        out["tflops_per_s"] = {k: tflops(flops[k], total_s if k == "total" else phases[k]) for k in flops}
        if peak_tflops:
            out["share_of_peak"] = {k: v / peak_tflops for k, v in out["tflops_per_s"].items()}
    return out, images, requests


def _run_reference(args, device, settings, peak_tflops, requests, images):
    ref_dtype = DTYPES[args.reference_dtype or args.dtype]
    ref = build_bench_model(args.model, device, ref_dtype, acceleration=None)
    ref_sampler = ReferenceStyleSampler(ref.components, ref.conditioner, settings)
    n_ref = min(args.reference_requests or len(requests), len(requests))
    reset_peak_memory(device)
    synchronize(device)
    start = time.perf_counter()
    ref_images = ref_sampler.sample(requests[:n_ref])
    synchronize(device)
    measured = time.perf_counter() - start
    out = {
        "measured_seconds": measured, "measured_images": n_ref,
        "seconds": measured * len(requests) / n_ref,
        "seconds_note": (f"EXTRAPOLATED linearly from {n_ref} of {len(requests)} images (the reference path renders "
                         "one image at a time, each the same work)") if n_ref < len(requests)
        else "measured on all images",
        "seconds_per_image": measured / n_ref, **peak_memory(device),
        "max_abs_image_diff_vs_ours": float((ref_images - images[:n_ref]).abs().max()),
    }
    if args.flops:
        with torch.no_grad():
            per_image = count_flops(lambda: ref_sampler.sample_one(requests[0]))
        out["flops"] = {"total": per_image * len(requests), "per_image": per_image}
        out["tflops_per_s"] = {"total": tflops(per_image * n_ref, measured)}
        if peak_tflops:
            out["share_of_peak"] = {"total": out["tflops_per_s"]["total"] / peak_tflops}
    return out



def table_rows(result: dict) -> list[tuple[str, object]]:
    ours, ref = result["ours"], result.get("reference")
    rows = [
        ("settings", ", ".join(f"{k}={v}" for k, v in result["settings"].items())),
        ("ours: scene seconds", ours["seconds"]),
        ("ours: cold first run seconds", ours["cold_first_run_s"]),
        ("ours: s / image", ours["seconds_per_image"]),
        ("ours: contexts / denoise / decode s", " / ".join(f"{ours['phases_s'].get(k, 0):.3g}"
                                                      for k in ("contexts", "denoise", "decode"))),
        ("ours: peak memory GiB", ours["peak_memory_gib"]),
    ]
    if "tflops_per_s" in ours:
        rows += [("ours: TFLOP total", ours["flops"]["total"] / 1e12),
                 ("ours: TFLOP/s total / denoise", f"{ours['tflops_per_s']['total']:.3g} / "
                                                    f"{ours['tflops_per_s']['denoise']:.3g}")]
        if "share_of_peak" in ours:
            rows.append(("ours: denoise share of peak", ours["share_of_peak"]["denoise"]))
    if ref:
        rows += [("reference: scene seconds", ref["seconds"]), ("reference: note", ref["seconds_note"]),
                 ("reference: peak memory GiB", ref["peak_memory_gib"]),
                 ("reference vs ours max |image diff|", ref["max_abs_image_diff_vs_ours"]),
                 ("speed-up (reference / ours)", result["speedup"])]
        if "tflops_per_s" in ref:
            rows.append(("reference: TFLOP/s", ref["tflops_per_s"]["total"]))
    rows.append(("targets", result.get("targets")))
    return rows
