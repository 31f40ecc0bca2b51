"""`python -m bench.mini_world`: ViewNeTI's quality in the mini world, next to its ablations and baselines.

Fits held-out scans from 1 and 3 views (mode 5 with the shipped pretrained view mapper; the same with
an untrained view mapper; mode 2 without pretraining), renders every DTU test view over seeds, and
scores them with the DTU protocol next to two non-learned baselines (nearest input view, mean input
image). Prints a Markdown table (mean ± std over scans x seeds): the DTU protocol's masked PSNR and
SSIM, the whole-image PSNR, and the view gap (whole-image PSNR against the render's own camera minus
against the mirrored test view's: ~0 when the camera does not decide what is drawn), the masked PSNR
over the object mask's one-pixel edge band and over its interior (silhouette or surfaces), then the issue's
bars (`viewneti_core.mini_world.bars`: paired margins between variants and their spread over scans).
Writes rows.parquet, results.csv, bars.csv and settings.json under --out, and each (views, scan,
variant) as it finishes under --out/rows/: rerun the same command to go on after an interruption.
See docs/mini_world.md.

    python -m bench.mini_world --scans 21,114 --n-views 1,3 --steps 300 --seeds 0,1
    python -m bench.mini_world --pretraining-scans 3,4     # the ceiling: scenes seen in pretraining
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from bench.common import int_list
from viewneti_core.config import DataConfig
from viewneti_core.data import dtu
from viewneti_core.mini_world.bars import bar_table
from viewneti_core.mini_world.bars import markdown as bars_markdown
from viewneti_core.mini_world.evaluate import (
    AUGMENTATIONS,
    VARIANTS,
    FitSettings,
    pretraining_ceiling,
    run_results,
)


def markdown(table) -> str:
    lines = ["| views | variant | PSNR ↑ (DTU, masked) | SSIM ↑ | whole-image PSNR ↑ | view gap (dB) "
             "| masked PSNR, edge band / interior | image sets |",
             "|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        regions = (f"{row.edge_psnr_mean:.2f} / {row.interior_psnr_mean:.2f}"
                   if hasattr(row, "edge_psnr_mean") else "-")  # no masks, or scored before the split
        lines.append(f"| {row.n_views} | {row.variant} | {row.psnr_mean:.2f} ± {row.psnr_std:.2f} "
                     f"| {row.ssim_mean:.3f} ± {row.ssim_std:.3f} | {row.image_psnr_mean:.2f} ± {row.image_psnr_std:.2f} "
                     f"| {row.view_gap_mean:+.2f} ± {row.view_gap_std:.2f} | {regions} | {row.sets} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.mini_world", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int_list, default=list(dtu.TEST_SCANS), help="held-out scans (default: all 15)")
    p.add_argument("--n-views", type=int_list, default=[1, 3])
    p.add_argument("--variants", type=lambda t: tuple(t.split(",")), default=VARIANTS)
    p.add_argument("--steps", type=int, default=FitSettings.steps, help="optimizer steps per fit")
    p.add_argument("--mode2-steps", type=int, default=FitSettings.mode2_steps,
                   help="optimizer steps of the mode-2 fits (default: --steps)")
    p.add_argument("--learning-rate", type=float, default=FitSettings.learning_rate, help="fit learning rate")
    p.add_argument("--batch-size", type=int, default=FitSettings.batch_size, help="fit batch size")
    p.add_argument("--augmentation", choices=AUGMENTATIONS, default=FitSettings.augmentation,
                   help="the fit's image augmentation (default none: see docs/mini_world.md, \"Fit settings\")")
    p.add_argument("--view-caption", default=FitSettings.view_caption,
                   help="the fits' caption, with {view} and {object} (data.view_caption; default the original's)")
    p.add_argument("--seeds", type=int_list, default=list(FitSettings.seeds))
    p.add_argument("--denoising-steps", type=int, default=FitSettings.denoising_steps)
    p.add_argument("--guidance-scale", type=float, default=FitSettings.guidance_scale)
    p.add_argument("--out", type=Path, default=Path("outputs/bench/mini-world"))
    p.add_argument("--pretraining-scans", type=int_list, default=None,
                   help="instead: the ceiling - these PRETRAINING scans rendered with their own mode-3 tokens "
                        "(no fit) next to the copy baselines, e.g. 3,4")
    args = p.parse_args(argv)
    try:
        DataConfig(view_caption=args.view_caption)
    except ValidationError as exc:
        p.error(f"--view-caption: {exc.errors()[0]['msg']}")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("viewneti_core.training.trainer", "viewneti_core.base_model.sd_models", "viewneti_core.evaluation.scoring"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = FitSettings(steps=args.steps, seeds=tuple(args.seeds), denoising_steps=args.denoising_steps,
                           guidance_scale=args.guidance_scale, batch_size=args.batch_size,
                           learning_rate=args.learning_rate, augmentation=args.augmentation, mode2_steps=args.mode2_steps,
                           view_caption=args.view_caption)
    started = time.perf_counter()
    if args.pretraining_scans:
        table = pretraining_ceiling(args.out, args.pretraining_scans, settings)
        print(markdown(table))
        print(f"\npretraining scan(s) {args.pretraining_scans} x {len(args.seeds)} seed(s), no fit; "
              f"{time.perf_counter() - started:.0f} s; table in {args.out}")
        return 0
    table = run_results(args.out, args.scans, args.n_views, settings, args.variants)
    print(markdown(table))
    bars = bar_table(pd.read_parquet(args.out / "rows.parquet"))
    if len(bars):
        bars.to_csv(args.out / "bars.csv", index=False)
        print("\nThe issue's bars (paired over scans and seeds; reached: margin > spread over scans):\n"
              + bars_markdown(bars))
    print(f"\n{len(args.scans)} held-out scan(s) x {len(args.seeds)} seed(s); {time.perf_counter() - started:.0f} s; "
          f"tables in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
