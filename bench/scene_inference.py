"""Scene inference: views x seeds novel views, DPM-Solver++ with CFG, timed from loaded weights to
decoded images, for our sampler and for the reference-style one."""

from __future__ import annotations

import copy
import gc
import tempfile
import time
from pathlib import Path

import torch

from bench.common import count_flops, peak_memory, reset_peak_memory, synchronize, tflops, timed
from bench.reference_path import ReferenceStyleSampler, use_reference_attention
from bench.setup import DTYPES, PROMPT, build_bench_model
from viewneti_core.data import dtu
from viewneti_core.inference import sample_view_major
from viewneti_core.method.sampler import (
    SampleRequest,
    SamplerSettings,
    ViewNetiSampler,
    batch_shape,
    make_dpm_solver,
)

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


def _count_ours(sampler: ViewNetiSampler, requests: list[SampleRequest]) -> dict:
    """FLOPs per phase as `ViewNetiSampler.sample` spends them, counted on the eager modules (same
    maths): contexts once per distinct (prompt, camera) for all timesteps, every batch padded to one
    shape, decode of the real images only."""
    size = batch_shape(len(requests), sampler.plan(len(requests)).batch_size)
    n_batches = -(-len(requests) // size)
    n_pairs = len({(r.prompt, r.camera) for r in requests})
    steps = sampler.settings.num_inference_steps
    unet = sampler.components.unet
    timesteps = make_dpm_solver(sampler.components, steps).timesteps
    with _force_eager(), torch.no_grad():
        sampler._unconditional()  # encoded once per sampler: not part of a scene's work
        holder = {}
        per_pair = count_flops(lambda: holder.update(kv=sampler._contexts(requests[:1], timesteps, {})))
        keys, values = (t[:, :, :1].expand(-1, -1, 2 * size, -1, -1) for t in holder["kv"])
        latents = torch.zeros((2 * size, *sampler.latent_shape), device=unet.device, dtype=unet.dtype)
        step = count_flops(lambda: unet(
            latents, timesteps[0], encoder_hidden_states=keys[0, 0],
            cross_attention_kwargs={"xti_keys": keys[0], "xti_values": values[0]}, return_dict=False))
        per_image = count_flops(lambda: sampler.decode(latents[:1]))
    totals = {"contexts": n_pairs * per_pair, "denoise": n_batches * steps * step, "decode": len(requests) * per_image}
    totals["total"] = sum(totals.values())
    return totals


def run(args, peak_tflops: float | None) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    width, height = args.size
    settings = SamplerSettings(
        num_inference_steps=args.steps, guidance_scale=7.5, height=height, width=width, batch_size=args.batch_size,
        decode_batch_size=args.decode_batch_size,
    )
    result: dict = {
        "benchmark": "scene_inference",
        "settings": {"model": args.model, "views": args.views, "seeds": args.seeds, "steps": args.steps,
                     "width": width, "height": height, "guidance_scale": 7.5, "sampler": "DPM-Solver++ (multistep)",
                     "batch_size_requests": args.batch_size, "decode_batch_size": args.decode_batch_size,
                     "dtype": args.dtype,
                     "reference_dtype": args.reference_dtype or args.dtype},
        "weights": "random (builtin builder; timings only, images are not meaningful)",
    }

    ours_out, images, requests = _run_ours(args, device, dtype, settings, peak_tflops)
    result["ours"] = ours_out
    if args.infer_command:
        result["infer_command"] = run_infer_command(args, device, dtype)
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
    if full:  # issue 12's targets for one H100/H200
        share = (ours_out.get("share_of_peak") or {}).get("total")
        result["targets"] = {
            "scene_seconds<=25": total_s <= 25,
            "speedup>=8": result["speedup"] >= 8,
            "total_share_of_peak>=0.52": None if share is None else share >= 0.52,
        }
    else:
        result["targets"] = "n/a: targets are defined for sd21-random, 34x3, 30 steps, 768x576 on one H100/H200"
    return result


def _run_ours(args, device, dtype, settings, peak_tflops):
    ours = build_bench_model(args.model, device, dtype, acceleration=args.acceleration)
    requests = scene_requests(ours.cameras, args.views, args.seeds)
    sampler = ViewNetiSampler(ours.components, ours.conditioner, settings)
    phases: dict[str, float] = {}
    sampler._contexts = _wrap_phase(device, phases, "contexts", sampler._contexts)
    sampler.decode = _wrap_phase(device, phases, "decode", sampler.decode)
    vectors = {view: torch.tensor(ours.cameras[view].reshape(-1), dtype=torch.float64)
               for view in dtu.EVAL_VIEWS[: args.views]}
    seeds = list(range(args.seeds))

    def render() -> torch.Tensor:  # what `viewneti infer` runs (render_cameras), in request order
        by_key = sample_view_major(sampler, PROMPT, vectors, seeds, progress=False)
        return torch.stack([by_key[(seed, view)] for view in vectors for seed in seeds])

    cold_s = None
    if args.warmup:  # the same warm-up for both paths: one untimed call on the first UNet batch
        synchronize(device)
        start = time.perf_counter()
        sampler.sample(requests[: batch_shape(len(requests), sampler.plan(len(requests)).batch_size)],
                       progress=False)  # same shape
        synchronize(device)
        cold_s = time.perf_counter() - start
    runs = []
    for _ in range(max(1, args.repeats)):
        phases.clear()
        reset_peak_memory(device)
        synchronize(device)
        start = time.perf_counter()
        images = render()
        synchronize(device)
        runs.append((time.perf_counter() - start, dict(phases)))
    total_s, phases = min(runs, key=lambda r: r[0])
    phases["denoise"] = total_s - phases.get("contexts", 0.0) - phases.get("decode", 0.0)
    memory = peak_memory(device)
    plan = sampler.last_plan  # the sizes the timed runs used
    out = {
        "batch_plan": {"batch_size": plan.batch_size, "decode_batch_size": plan.decode_batch_size,
                       "free_bytes_when_planned": plan.free_bytes},
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


def run_infer_command(args, device, dtype) -> dict:
    """`viewneti infer` end to end (`inference.run_inference`): load the run's checkpoint and base model,
    render the views x seeds, write predictions.safetensors, the PNGs and one grid per seed. The run is
    a 1-step mode-5 fit (vanishing learning rate) on a synthetic scene; only the inference is timed."""
    from bench.train_loop import prepare_train_run
    from viewneti_core.inference import run_inference
    from viewneti_core.training.trainer import train

    width, height = args.size
    fit_args = copy.copy(args)  # the one fitting step: on the scene's image size, one image
    fit_args.train_size, fit_args.batch, fit_args.accumulation = args.size, 1, 1
    with tempfile.TemporaryDirectory(prefix="viewneti-bench-infer-") as tmp:
        bench, config = prepare_train_run(fit_args, 5, device, dtype, Path(tmp), steps=1, learning_rate=1e-12)
        run_dir = train(config, components=bench.components, progress=False).run_dir
        del bench
        gc.collect()
        overrides = {
            "run": {"dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[args.dtype],
                    "compile_unet": args.compile, "compile_mode": args.compile_mode,
                    **({} if args.channels_last else {"channels_last": False}),
                    **({"compile_cache_dir": str(args.compile_cache_dir)} if args.compile_cache_dir else {})},
            "eval": {"num_denoising_steps": args.steps, "guidance_scale": 7.5, "width": width, "height": height,
                     "eval_batch_size": args.batch_size, "decode_batch_size": args.decode_batch_size},
        }
        views, seeds = list(dtu.EVAL_VIEWS[: args.views]), list(range(args.seeds))
        reset_peak_memory(device)
        synchronize(device)
        start = time.perf_counter()
        done = run_inference(run_dir, seeds=seeds, views=views, overrides=overrides, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(views) * len(seeds), "grids": len(done.grids),
            "includes": "load_run (checkpoint + base model build/load), rendering, predictions + PNG + grid writes"
                        + ("; the first call compiles" if args.compile else ""),
            **peak_memory(device)}


def _run_reference(args, device, settings, peak_tflops, requests, images):
    ref_dtype = DTYPES[args.reference_dtype or args.dtype]
    ref = build_bench_model(args.model, device, ref_dtype, acceleration=None)
    use_reference_attention(ref.components)
    ref_sampler = ReferenceStyleSampler(ref.components, ref.conditioner, settings)
    n_ref = min(args.reference_requests or len(requests), len(requests))
    if args.warmup:  # the same warm-up as ours: its first UNet batch (one image here), untimed
        ref_sampler.sample(requests[:1])
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
            holder = {}
            per_view = count_flops(lambda: holder.update(ctx=ref_sampler.contexts(requests[0])))
            per_image = count_flops(lambda: ref_sampler.sample_one(requests[0], holder["ctx"]))
        n_views = len({(r.prompt, r.camera) for r in requests})
        views_measured = len({(r.prompt, r.camera) for r in requests[:n_ref]})
        out["flops"] = {"total": per_view * n_views + per_image * len(requests), "per_view_contexts": per_view,
                        "per_image_denoise_decode": per_image}
        out["tflops_per_s"] = {"total": tflops(per_view * views_measured + per_image * n_ref, measured)}
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
    if "infer_command" in result:
        rows.append(("`viewneti infer` end to end s", result["infer_command"]["seconds"]))
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
