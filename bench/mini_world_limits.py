"""`python -m bench.mini_world_limits`: what bounds the masked scores of the 9-view interpolation bar
(mode 2 fitted from 9 views against copying the nearest input view) in the mini world.

Per held-out scan, scored by the same DTU protocol as `python -m bench.mini_world` (masked PSNR at 48x64):
- `vae`: each test view's own truth through the world's VAE (encoded to the posterior mean, decoded):
  the most any render can reach, since every render leaves through that decoder;
- `nearest-view`: copying the input view whose camera centre is nearest (from --n-views inputs);
- with --fits DIR (a `bench.mini_world --n-views 9 --variants mode2,...` output folder, whose runs/ hold
  the mode-2 fits): `fit-inputs`, the fit rendered at its own input cameras (how well it reproduces
  what it saw), and `fit-test`, its score at the test views (the bench's rows).
If a fit trails copying even at its own input cameras, interpolating between cameras is not what holds
it back: its renders are. Prints a Markdown table; writes limits.csv under --out. See
docs/mini_world.md, "What holds mode 2 back from 9 views".

    python -m bench.mini_world_limits --n-views 9 --fits outputs/bench/mini-world-9
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.common import int_list
from viewneti_core.base_model.sd_models import load_components
from viewneti_core.config import ViewNetiConfig
from viewneti_core.data import dtu
from viewneti_core.evaluation.scoring import evaluate_predictions
from viewneti_core.images import load_image
from viewneti_core.inference import read_checkpoint_info, resolve_checkpoint, run_inference, write_predictions
from viewneti_core.mini_world.evaluate import (
    EVAL_SIZE,
    MODEL,
    baseline_predictions,
    ensure_world_tree,
    prediction_meta,
    score_predictions,
)


@torch.no_grad()
def vae_round_trip(root: Path, scan: int, n_views: int, out: Path, vae, model: str = MODEL) -> Path:
    """The test views' truths through `vae`, the VAE of `model` (posterior mean, no sampling), as predictions."""
    images = {}
    for cam in dtu.TEST_VIEWS:
        truth = np.array(load_image(root / dtu.image_relpath(scan, cam), "RGB"))
        x = torch.from_numpy(truth).permute(2, 0, 1).float()[None] / 127.5 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample[0]
        images[(0, cam)] = ((decoded.clamp(-1, 1) + 1) / 2).float()
    meta = prediction_meta(root, scan, n_views, (0,), run_dir="vae", learnable_mode=-1, object_token="vae",
                            base_model=model, weights="the world's VAE, encode -> decode of the truth")
    return write_predictions(out, images, meta)


def input_view_psnr(run_dir: Path, out: Path, seeds: list[int]) -> float:
    """Masked PSNR of a fitted run rendered at its own input cameras (mean over cameras and seeds)."""
    config = ViewNetiConfig.model_validate(read_checkpoint_info(resolve_checkpoint(run_dir, "latest"))["config"])
    inputs = list(dtu.train_views(config.data.dtu_subset))
    if not (out / "index.json").is_file():
        run_inference(run_dir, seeds=seeds, views=inputs, out_dir=out, progress=False)
    table = pd.read_parquet(evaluate_predictions(out, protocols=("viewneti",), lpips_weights="none",
                                                 eval_size=EVAL_SIZE, progress=False, run_name="fit-inputs"))
    rows = table[table["role"] == "train"]
    if sorted(set(rows["cam"])) != sorted(inputs):
        raise RuntimeError(f"{out}: scored cameras {sorted(set(rows['cam']))} are not the run's inputs {inputs}")
    return float(rows["psnr"].mean())


def fit_runs(fits: Path, scans: list[int], n_views: int) -> dict[int, Path]:
    """The mode-2 run of each scan in a bench.mini_world output folder; all checked before any work."""
    runs = {scan: fits / "runs" / f"mode2-scan{scan}-{n_views}view" for scan in scans}
    missing = [str(run) for run in runs.values() if not run.is_dir()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: --fits must be a bench.mini_world output folder "
                                f"holding mode-2 fits from {n_views} views of every scan (in its runs/ folder)")
    return runs


def scan_limits(scan: int, n_views: int, out: Path, vae, fit: Path | None, seeds: list[int]) -> dict:
    root = ensure_world_tree(out / "dtu", [scan])
    row = {"scan": scan}
    pred = vae_round_trip(root, scan, n_views, out / "predictions" / f"vae-scan{scan}", vae)
    row["vae"] = float(score_predictions(pred, root, scan, "vae")["psnr"].mean())
    pred = baseline_predictions("nearest-view", root, scan, n_views, (0,), out / "predictions" / f"nearest-scan{scan}")
    row["nearest-view"] = float(score_predictions(pred, root, scan, "nearest-view")["psnr"].mean())
    if fit is not None:
        row["fit-inputs"] = input_view_psnr(fit, out / "predictions" / f"fit-inputs-scan{scan}", seeds)
        rows = fit.parent.parent / "rows" / f"{fit.name}.parquet"
        if rows.is_file():
            row["fit-test"] = float(pd.read_parquet(rows)["psnr"].mean())
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini_world_limits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int_list, default=list(dtu.TEST_SCANS), help="held-out scans (default: all 15)")
    p.add_argument("--n-views", type=int, default=9, help="input views of the copy baseline and the fits")
    p.add_argument("--fits", type=Path, default=None, help="a bench.mini_world output folder with mode-2 fits")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="seeds of the fits' renders at their inputs")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/mini-world-limits"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    started = time.perf_counter()
    fits = fit_runs(args.fits, args.scans, args.n_views) if args.fits is not None else {}
    vae = load_components(MODEL).vae
    table = pd.DataFrame([scan_limits(s, args.n_views, args.out, vae, fits.get(s), args.seeds) for s in args.scans])
    table = table.set_index("scan")
    table.loc["mean"] = table.mean()
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "limits.csv")
    print("| scan | " + " | ".join(table.columns) + " |\n|" + "---|" * (len(table.columns) + 1))
    for scan, row in table.iterrows():
        print(f"| {scan} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    print(f"\nmasked PSNR (dB), {args.n_views} input view(s); {time.perf_counter() - started:.0f} s; "
          f"table in {args.out / 'limits.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
