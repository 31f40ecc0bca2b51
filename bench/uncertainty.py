"""`python -m bench.uncertainty`: sample diversity and uncertainty of ViewNeTI in the mini world.

Fits held-out scans from 1 and 3 views (mode 5, the shipped pretrained view mapper; the same fit as
`python -m bench.mini_world`), renders every DTU test view over N seeds and scores them with
`viewneti evaluate`'s per-view columns across seeds (diversity, ensemble, best-of-N, AUSE). Then asks:

1. Does diversity grow with the distance of a test camera from the input views? (Spearman over the
   25 test views of each item, camera centre to the nearest input camera's centre.)
2. Is diversity larger with 1 input view than with 3?
3. Is AUSE better (smaller) than the random-order baseline?
4. How many seeds give stable numbers? The N rendered seeds are re-scored in random subsets of n
   seeds; the spread of the item means over subsets says how much a run with n seeds can move.

Prints Markdown tables, writes per_view.csv, stability.csv and settings.json under --out (see
BENCHMARKS.md, "Sample diversity and uncertainty").

    python -m bench.uncertainty --scans 21,114 --n-views 1,3 --seeds 0,1,2,3,4,5,6,7 --steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import int_list
from viewneti_core.data import dtu
from viewneti_core.evaluation.scoring import evaluate_predictions
from viewneti_core.inference import PREDICTIONS_INDEX, read_predictions, write_predictions
from viewneti_core.mini_world.evaluate import (
    AUGMENTATIONS,
    EVAL_SIZE,
    FitSettings,
    ensure_world_tree,
    run_variant,
    score_predictions,
)

VARIANT = "viewneti"
VIEW_COLUMNS = ["div_rmse", "ause", "ause_random", "unc_spearman", "ens_psnr", "best_psnr", "psnr"]


def camera_distances(root: Path, n_views: int) -> dict[int, float]:
    """Distance of each DTU test camera's centre to the nearest input camera's centre (DTU units)."""
    cameras = dtu.load_cameras(root)
    centre = {cam: -np.linalg.solve(cameras[cam][:, :3], cameras[cam][:, 3]) for cam in range(dtu.NUM_VIEWS)}
    inputs = dtu.train_views(n_views)
    return {cam: float(min(np.linalg.norm(centre[cam] - centre[i]) for i in inputs)) for cam in dtu.TEST_VIEWS}


def item_rows(root: Path, out: Path, scan: int, n_views: int, settings: FitSettings, reuse: bool) -> pd.DataFrame:
    """The item's test-view rows (viewneti protocol), fitting and rendering unless `reuse` finds them."""
    pred_dir = out / "predictions" / f"{VARIANT}-scan{scan}-{n_views}view"
    if reuse and (pred_dir / PREDICTIONS_INDEX).is_file():
        index = json.loads((pred_dir / PREDICTIONS_INDEX).read_text())
        if sorted(index["seeds"]) == sorted(settings.seeds):
            return score_predictions(pred_dir, root, scan, VARIANT).assign(n_views=n_views)
    return run_variant(VARIANT, scan, n_views, root, out, settings)


def per_view_table(frames: list[pd.DataFrame], root: Path) -> pd.DataFrame:
    """One row per (scan, n_views, cam): the per-view columns, the per-seed mean PSNR and the distance."""
    df = pd.concat(frames, ignore_index=True)
    psnr = df.groupby(["scan", "n_views", "cam"])["psnr"].mean()
    views = df.drop_duplicates(["scan", "n_views", "cam"]).set_index(["scan", "n_views", "cam"])
    views = views[[c for c in VIEW_COLUMNS if c != "psnr"] + ["uncertainty_seeds"]].assign(psnr=psnr).reset_index()
    distances = {n: camera_distances(root, n) for n in views["n_views"].unique()}
    views["distance"] = [distances[n][c] for n, c in zip(views["n_views"], views["cam"], strict=True)]
    return views


def answers(views: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per item: Spearman of diversity vs distance, AUSE vs random; per n_views: means over items)."""
    from scipy.stats import spearmanr

    items = []
    for (scan, n), g in views.groupby(["scan", "n_views"]):
        items.append({
            "scan": scan, "n_views": n, "views": len(g),
            "div_vs_distance_spearman": float(spearmanr(g["distance"], g["div_rmse"]).statistic),
            "div_rmse": g["div_rmse"].mean(), "ause": g["ause"].mean(), "ause_random": g["ause_random"].mean(),
            "ause_below_random": float((g["ause"] < g["ause_random"]).mean()),
            "unc_spearman": g["unc_spearman"].mean(), "ens_psnr": g["ens_psnr"].mean(),
            "best_psnr": g["best_psnr"].mean(), "psnr": g["psnr"].mean(),
        })
    items = pd.DataFrame(items)
    cols = [c for c in items.columns if c not in ("scan", "n_views", "views")]
    by_n = items.groupby("n_views")[cols].agg(["mean", "std"])
    return items, by_n


def stability(out: Path, root: Path, items: list[tuple[int, int]], sizes: list[int], subsets: int) -> pd.DataFrame:
    """Re-score each item's predictions from random subsets of n seeds: per (n, metric) the mean over items
    of the item mean and of its std over subsets."""
    rng = np.random.default_rng(0)
    records = []
    for scan, n_views in items:
        pred_dir = out / "predictions" / f"{VARIANT}-scan{scan}-{n_views}view"
        index, images = read_predictions(pred_dir)
        seeds = sorted({s for s, _ in images})
        meta = {k: v for k, v in index.items() if k != "images"}
        for size in sizes:
            if size > len(seeds):
                continue
            chosen = {tuple(sorted(rng.choice(seeds, size, replace=False).tolist())) for _ in range(4 * subsets)}
            for subset in sorted(chosen)[:subsets]:
                with tempfile.TemporaryDirectory(dir=out) as tmp:
                    sub = write_predictions(Path(tmp) / "pred", {k: v for k, v in images.items() if k[0] in subset},
                                            meta | {"seeds": list(subset)})
                    frame = pd.read_parquet(evaluate_predictions(
                        sub, protocols=("viewneti",), lpips_weights="none", eval_size=EVAL_SIZE, progress=False,
                        uncertainty=True))
                test = frame[frame["role"] == "test"].drop_duplicates("cam")
                records.append({"scan": scan, "n_views": n_views, "seeds": size, "subset": ",".join(map(str, subset)),
                                **{c: test[c].mean() for c in VIEW_COLUMNS if c != "psnr"}})
    df = pd.DataFrame(records)
    metrics = [c for c in VIEW_COLUMNS if c != "psnr"]
    per_item = df.groupby(["seeds", "scan", "n_views"])[metrics].agg(["mean", "std"])
    table = per_item.groupby(level="seeds").mean()
    table[("subsets", "")] = df.groupby("seeds")["subset"].nunique()
    df.to_csv(out / "stability_subsets.csv", index=False)
    return table


def _md(frame: pd.DataFrame, digits: int = 4) -> str:
    flat = frame.copy()
    if isinstance(flat.columns, pd.MultiIndex):
        flat.columns = [" ".join(map(str, c)).strip() for c in flat.columns]
    flat = flat.reset_index()
    lines = ["| " + " | ".join(map(str, flat.columns)) + " |", "|" + "---|" * len(flat.columns)]
    for row in flat.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.uncertainty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scans", type=int_list, default=[21, 114], help="held-out scans")
    p.add_argument("--n-views", type=int_list, default=[1, 3])
    p.add_argument("--seeds", type=int_list, default=list(range(8)))
    p.add_argument("--steps", type=int, default=FitSettings.steps, help="optimizer steps per fit")
    p.add_argument("--denoising-steps", type=int, default=FitSettings.denoising_steps)
    p.add_argument("--augmentation", choices=AUGMENTATIONS, default=FitSettings.augmentation,
                   help="the fit's image augmentation (default none, as bench.mini_world: docs/mini_world.md)")
    p.add_argument("--subset-sizes", type=int_list, default=[2, 3, 4, 6], help="seed counts re-scored for stability")
    p.add_argument("--subsets", type=int, default=6, help="random seed subsets per size and item")
    p.add_argument("--reuse", action="store_true", help="score existing predictions under --out instead of refitting")
    p.add_argument("--out", type=Path, default=Path("outputs/bench/uncertainty"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("viewneti_core.training.trainer", "viewneti_core.base_model.sd_models",
                 "viewneti_core.evaluation.scoring", "viewneti_core.evaluation.seed_spread"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = FitSettings(steps=args.steps, seeds=tuple(args.seeds), denoising_steps=args.denoising_steps,
                           augmentation=args.augmentation)
    started = time.perf_counter()
    out = Path(args.out)
    root = ensure_world_tree(out / "dtu", sorted(set(args.scans) | {3}))
    pairs = [(scan, n) for n in args.n_views for scan in args.scans]
    frames = []
    for scan, n in pairs:
        logging.info("uncertainty: scan %d, %d view(s), seeds %s", scan, n, args.seeds)
        frames.append(item_rows(root, out, scan, n, settings, args.reuse))
    fitted = time.perf_counter() - started
    views = per_view_table(frames, root)
    views.to_csv(out / "per_view.csv", index=False)
    items, by_n = answers(views)
    items.to_csv(out / "items.csv", index=False)
    table = stability(out, root, pairs, args.subset_sizes, args.subsets)
    table.to_csv(out / "stability.csv")
    (out / "settings.json").write_text(json.dumps(vars(args) | {"out": str(out)}, indent=1) + "\n")
    print("## Per item (test views, viewneti protocol)\n\n" + _md(items.set_index(["scan", "n_views"])))
    print("\n## Per number of input views: mean and std over items\n\n" + _md(by_n))
    print(f"\n## Stability: item means from random subsets of the {len(args.seeds)} seeds "
          "(mean = mean over items; std = std over subsets, averaged over items)\n\n" + _md(table))
    print(f"\n{len(args.scans)} scan(s) x {args.n_views} view(s) x {len(args.seeds)} seeds; fits and renders "
          f"{fitted:.0f} s, total {time.perf_counter() - started:.0f} s; tables in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
