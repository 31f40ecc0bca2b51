"""`python -m bench.mini_world_levers`: the levers of the mini world, measured at reduced scale (issue 19).

Trains a small base model (VAE, then UNet + text encoder, with `viewneti models build-mini-world`'s own
training loops) on one family of scenes, then asks how close the model's OWN samples of its training
scenes come to the truth, which is the first thing a mini world must get right before ViewNeTI can
show anything on it:
- `sample_psnr`: whole-image PSNR of text-to-image samples (the scene's caption with the view words of
  the camera) against that camera's render, next to `mean_image_psnr`, the scene's mean view scored
  the same way (the blur a weak model converges to);
- `view_gap`: the samples' PSNR against their own camera's truth minus against the mirrored camera's
  (~0 when the caption's view words do not change the picture);
- `vae_psnr_whole` / `vae_psnr_objects`: the VAE's reconstruction, whole image and object pixels only
  (the ceiling any generated view has).
One lever is changed per run (`--scenes`, `--widths`, `--view-words-share`, steps); each run writes
result.json, a grid of samples over truths, and prints the JSON. See docs/mini_world.md, "Levers".

    python -m bench.mini_world_levers --scenes two-tone --out outputs/bench/levers/two-tone
    python -m bench.mini_world_levers --scenes today --out outputs/bench/levers/today
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from viewneti_core.atomic_files import temp_dir_beside
from viewneti_core.base_model.sd_models import _build_from_configs, load_components
from viewneti_core.data import dtu
from viewneti_core.data.synthetic import render_view, synthetic_cameras, synthetic_scene
from viewneti_core.images import save_image_atomic
from viewneti_core.method.conditioning import TextConditioner
from viewneti_core.method.sampler import SampleRequest, SamplerSettings, ViewNetiSampler
from viewneti_core.mini_world import build
from viewneti_core.mini_world import world as mini_world
from viewneti_core.mini_world.options import NOISE_SCHEDULES, BuildOptions
from viewneti_core.mini_world.scenes import two_tone_scene

EVAL_VIEWS = (9, 17, 19, 27, 29, 37, 38, 48)  # near the ends of their camera rows: far from their mirror
SCENE_FAMILIES = ("today", "two-tone")


_KIND_WORDS = {"sphere": "ball", "box": "box", "cylinder": "can"}
_HUE_NAMES = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.45, "green"), (0.55, "cyan"),
              (0.72, "blue"), (0.86, "purple"), (0.96, "pink"), (1.01, "red"))


def v1_words(scene) -> str:
    """How the v1 mini world named a `synthetic_scene` ("red ball, blue box"): the main colour's hue word and
    the kind of each object, largest first. Kept here so the "today" family stays reproducible."""
    def colour(rgb) -> str:
        hue, _, saturation = colorsys.rgb_to_hls(*(float(c) for c in rgb))
        return "grey" if saturation < 0.2 else next(name for limit, name in _HUE_NAMES if hue < limit)
    objects = sorted(scene.objects, key=lambda p: -float(np.prod(p.size)))
    return ", ".join(f"{colour(p.colors[0])} {_KIND_WORDS[p.kind]}" for p in objects)


def scene_and_words(family: str, seed: int, scan: int):
    if family == "two-tone":
        return two_tone_scene(seed, scan)
    scene = synthetic_scene(seed, scan)  # the v1 world's scenes ("today" when the levers were measured)
    return scene, v1_words(scene)


def mirror_view(view: int) -> int:
    """The view in the same camera row at the opposite azimuth."""
    angles = mini_world.camera_angles()
    polar, azimuth = angles[view]
    return min(range(dtu.NUM_VIEWS), key=lambda v: abs(angles[v][0] - polar) + abs(angles[v][1] + azimuth))


def psnr(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    err = (x.astype(np.float64) - y.astype(np.float64)) ** 2
    mse = err.mean() if mask is None else err[mask].mean()
    return 10 * math.log10(255.0**2 / max(mse, 1e-10))


def render_set(family: str, scans: list[int], view_words_share: float, seed: int):
    cams = synthetic_cameras(mini_world.SIZE)
    rng = np.random.default_rng(7 + seed)  # which captions carry view words
    images, masks, captions, words_of = [], [], [], []
    for scan in tqdm(scans, desc="levers: rendering", unit="scene"):
        scene, words = scene_and_words(family, 0, scan)
        words_of.append(words)
        for view in range(dtu.NUM_VIEWS):
            render = render_view(scene, cams[view], mini_world.SIZE, [dtu.DEFAULT_LIGHT])
            images.append(render.images[dtu.DEFAULT_LIGHT])
            masks.append(render.mask)
            with_view = rng.uniform() < view_words_share
            captions.append(words + (f"; {mini_world.view_words(view)}" if with_view else ""))
    return torch.from_numpy(np.stack(images)), np.stack(masks), captions, words_of


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    scans = list(mini_world.BASE_SCANS[: args.n_scenes])
    started = time.perf_counter()
    images, masks, captions, words_of = render_set(args.scenes, scans, args.view_words_share, args.seed)
    timings = {"render_s": time.perf_counter() - started}
    if args.model is not None:  # score a built model (e.g. the shipped one) on its own training scenes
        components = load_components(args.model)
        posteriors = build._encode_all(components.vae, images)
        vae_losses = unet_losses = None  # not trained here
    else:
        configs = mini_world.mini_world_configs(args.noise_schedule)
        configs["unet"] |= {"block_out_channels": args.widths,
                            "attention_head_dim": [max(1, w // 16) for w in args.widths]}
        components = _build_from_configs(configs, "mini-world levers", args.seed)
        options = BuildOptions(seed=args.seed, vae_steps=args.vae_steps, unet_steps=args.unet_steps,
                               unet_lr=args.unet_lr, noise_schedule=args.noise_schedule,
                               checkpoint_every=10**9)
        with tempfile.TemporaryDirectory() as work:
            t = time.perf_counter()
            vae_losses = build._train_vae(Path(work), components, images, options, 0, progress=True)
            timings["vae_s"] = time.perf_counter() - t
            posteriors = build._encode_all(components.vae, images)
            components.vae.register_to_config(scaling_factor=float(1.0 / posteriors[0].std()))
            ids, empty = build._tokenize(components, captions), build._tokenize(components, [""])
            t = time.perf_counter()
            unet_losses = build._train_unet(Path(work), components, posteriors, ids, empty, options, 0, progress=True)
            timings["unet_s"] = time.perf_counter() - t
    components.unet.eval()
    components.text_encoder.eval()

    with torch.no_grad():  # the VAE's ceiling, on every 7th view
        every = torch.arange(0, len(images), 7)
        decoded = components.vae.decode(posteriors[0][every]).sample
        recon = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    truth = images[every].numpy()
    vae_whole = float(np.mean([psnr(r, g) for r, g in zip(recon, truth, strict=True)]))
    vae_objects = float(np.mean([psnr(r, g, m) for r, g, m in zip(recon, truth, masks[every], strict=True) if m.any()]))

    conditioner = TextConditioner(components.tokenizer, components.text_encoder, num_layers=16)
    width, height = mini_world.SIZE
    sampler = ViewNetiSampler(components, conditioner, SamplerSettings(
        num_inference_steps=args.denoising_steps, guidance_scale=args.guidance_scale, height=height, width=width,
        batch_size=16, decode_batch_size=16))
    evaluated = range(min(args.eval_scenes, len(scans)))
    requests = [SampleRequest(f"{words_of[i]}; {mini_world.view_words(v)}", seed)
                for i in evaluated for v in EVAL_VIEWS for seed in (0, 1)]
    t = time.perf_counter()
    samples = (sampler.sample(requests, desc="levers: sampling") * 255).round().permute(0, 2, 3, 1).numpy()
    timings["sample_s"] = time.perf_counter() - t
    views = images.numpy().reshape(len(scans), dtu.NUM_VIEWS, height, width, 3)
    scores = []  # (scene, own, mirrored, mean image)
    for k, (i, v) in enumerate((i, v) for i in evaluated for v in EVAL_VIEWS for _ in (0, 1)):
        mean = views[i].astype(np.float64).mean(0)
        scores.append((i, psnr(samples[k], views[i, v]), psnr(samples[k], views[i, mirror_view(v)]),
                       psnr(mean, views[i, v])))
    scores = np.array(scores)
    per_scene = [scores[scores[:, 0] == i, 1].mean() for i in evaluated]
    result = {
        "model": str(args.model) if args.model is not None else "trained here",
        "scenes": args.scenes, "n_scenes": len(scans), "widths": args.widths, "view_words_share": args.view_words_share,
        "vae_steps": args.vae_steps, "unet_steps": args.unet_steps, "unet_lr": args.unet_lr,
        "noise_schedule": args.noise_schedule, "seed": args.seed,
        "unet_parameters": sum(p.numel() for p in components.unet.parameters()),
        "vae_loss": float(np.mean(vae_losses[-50:])) if vae_losses else None,
        "unet_loss": float(np.mean(unet_losses[-50:])) if unet_losses else None,
        "vae_psnr_whole": vae_whole, "vae_psnr_objects": vae_objects,
        "sample_psnr": float(scores[:, 1].mean()), "sample_psnr_std_over_scenes": float(np.std(per_scene)),
        "mean_image_psnr": float(scores[:, 3].mean()), "view_gap": float((scores[:, 1] - scores[:, 2]).mean()),
        "eval": f"{len(evaluated)} training scenes x {len(EVAL_VIEWS)} views x seeds 0,1; "
                f"{args.denoising_steps} DPM-Solver++ steps, guidance {args.guidance_scale}",
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    tmp = temp_dir_beside(args.out)
    (tmp / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    rows = [np.concatenate([samples[(i * len(EVAL_VIEWS) + j) * 2] for j in range(len(EVAL_VIEWS))], 1) for i in evaluated]
    rows += [np.concatenate([views[i, v] for v in EVAL_VIEWS], 1) for i in evaluated]
    save_image_atomic(Image.fromarray(np.concatenate(rows, 0).astype(np.uint8)), tmp / "samples_over_truth.png")
    if args.out.exists():
        import shutil

        shutil.rmtree(args.out)
    tmp.rename(args.out)
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = BuildOptions()
    p = argparse.ArgumentParser(prog="python -m bench.mini_world_levers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", choices=SCENE_FAMILIES, default="two-tone")
    p.add_argument("--model", default=None,
                   help="score this built model (a folder or builtin:mini-world) instead of training a reduced one; "
                        "its scenes must be the family it was trained on")
    p.add_argument("--n-scenes", type=int, default=64, help="base scenes (world seed 0, never a held-out id)")
    p.add_argument("--widths", type=lambda t: [int(v) for v in t.split(",")],
                   default=mini_world.mini_world_configs()["unet"]["block_out_channels"])
    p.add_argument("--view-words-share", type=float, default=defaults.view_words_share)
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--unet-steps", type=int, default=500)
    p.add_argument("--unet-lr", type=float, default=defaults.unet_lr)
    p.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=defaults.noise_schedule)
    p.add_argument("--eval-scenes", type=int, default=6)
    p.add_argument("--denoising-steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.n_scenes < 1 or args.n_scenes > len(mini_world.BASE_SCANS):
        p.error(f"--n-scenes must be 1..{len(mini_world.BASE_SCANS)}")
    print(json.dumps(run(args), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
