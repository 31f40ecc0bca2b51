"""Summary rows of the per-view columns across seeds (seed_spread.py): ensemble, best-of-N, diversity,
calibration, with the same averaging as the paper-style table (mean over test views per scan, then
mean and sample std over scans), and the plot of the sparsification curves.

Each view counts once (its values repeat on every seed row). Only rows with `uncertainty_seeds` >= 2
take part; NaN (an empty mask, LPIPS not computed) propagates, as in summary.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from viewneti_core.evaluation.seed_spread import SPREAD_METRICS
from viewneti_core.evaluation.uncertainty import SPARSIFICATION_FRACTIONS

LABELS = {"ens": "ensemble (seed-mean image)", "best": "best of N seeds"}
CONFIG = ["protocol", "n_views", "step", "weights", "masked"]


def _mean(s: pd.Series) -> float:
    return s.mean(skipna=False)


def _std(s: pd.Series) -> float:
    return s.std(skipna=False)


def spread_views(df: pd.DataFrame) -> pd.DataFrame:
    """The test-view rows that carry the per-view columns, one per (run, scan, cam, protocol, ...)."""
    if "uncertainty_seeds" not in df.columns:
        return df.iloc[0:0]
    rows = df[(df["role"] == "test") & (df["uncertainty_seeds"] >= 2)]
    return rows.drop_duplicates(["run", "scan", "n_views", "mode", "step", "cam", "protocol"])


def spread_frame(df: pd.DataFrame, group_keys: list[str]) -> pd.DataFrame:
    """Per group: `{metric}_mean`, `{metric}_std_scans` over scans of the per-scan test-view means."""
    views = spread_views(df)
    if views.empty:
        return pd.DataFrame()
    per_scan = views.groupby(group_keys + ["scan"], dropna=False).agg(
        **{m: (m, _mean) for m in SPREAD_METRICS}, views=("cam", "nunique"),
        seeds_min=("uncertainty_seeds", "min"), seeds_max=("uncertainty_seeds", "max"),
    ).reset_index()
    table = per_scan.groupby(group_keys, dropna=False).agg(
        **{f"{m}_mean": (m, _mean) for m in SPREAD_METRICS}, **{f"{m}_std_scans": (m, _std) for m in SPREAD_METRICS},
        n_scans=("scan", "nunique"), scans=("scan", lambda s: ",".join(str(v) for v in sorted(s.unique()))),
        min_views=("views", "min"), max_views=("views", "max"), min_seeds=("seeds_min", "min"),
        max_seeds=("seeds_max", "max"),
    ).reset_index()
    order = group_keys + [f"{m}_{s}" for m in SPREAD_METRICS for s in ("mean", "std_scans")] + [
        "n_scans", "min_seeds", "max_seeds", "min_views", "max_views", "scans"]
    return table[order].sort_values(["protocol", "n_views", "step", "weights", "masked"]).reset_index(drop=True)


def _fmt(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not pd.isna(std) else "")


def _cell(row, metric: str, digits: int) -> str:
    return _fmt(getattr(row, f"{metric}_mean"), getattr(row, f"{metric}_std_scans"), digits)


def _count(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def spread_markdown(spread: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The summary.md section: per (protocol, n_views) one seed vs ensemble vs best-of-N, then diversity
    and calibration. `summary` gives the one-seed numbers (the primary test-view rows)."""
    primary = summary[summary["views"] == "test"] if "views" in summary.columns else summary
    lines = [
        "## Sample diversity and uncertainty (test views)", "",
        "Across the seeds of each view: the seed-mean image (ensemble) and the best seed, scored with the same "
        "protocol; diversity = mean pairwise masked RMSE (and LPIPS) between seeds; calibration of the "
        "per-pixel std against the seed mean's per-pixel |error|: Spearman, and AUSE (area between the "
        "sparsification curve and the oracle's; lower is better) next to AUSE of a random removal order. "
        "Per scan the mean over test views, then mean ± std over scans.", "",
        "| protocol | n_views | estimate | PSNR ↑ | SSIM ↑ | LPIPS ↓ | weights | seeds | scans |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ["protocol", "n_views", "step", "weights", "masked", "lpips_backbone", "eval_height", "eval_width"]
    for r in spread.itertuples(index=False):
        match = primary
        for k in keys:
            match = match[match[k] == getattr(r, k)]
        seeds = _count(r.min_seeds, r.max_seeds)
        weights = "**RANDOM**" if r.weights == "random" else r.weights
        if not match.empty:
            p = match.iloc[0]
            lines.append(f"| {r.protocol} | {r.n_views} | one seed (mean over seeds) "
                         f"| {_fmt(p.psnr_mean, p.psnr_std_scans, 2)} | {_fmt(p.ssim_mean, p.ssim_std_scans, 3)} "
                         f"| {_fmt(p.lpips_mean, p.lpips_std_scans, 3)} | {weights} | {seeds} | {r.scans} |")
        for prefix, label in LABELS.items():
            cells = [_cell(r, f"{prefix}_{m}", digits) for m, digits in (("psnr", 2), ("ssim", 3), ("lpips", 3))]
            lines.append(f"| {r.protocol} | {r.n_views} | {label} | {' | '.join(cells)} | {weights} | {seeds} "
                         f"| {r.scans} |")
    lines += [
        "", "| protocol | n_views | diversity RMSE | diversity LPIPS | Spearman(std, error) ↑ | AUSE ↓ "
        "| AUSE, random order | seeds | views averaged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in spread.itertuples(index=False):
        lines.append(
            f"| {r.protocol} | {r.n_views} | {_cell(r, 'div_rmse', 4)} | {_cell(r, 'div_lpips', 4)} "
            f"| {_cell(r, 'unc_spearman', 3)} | {_cell(r, 'ause', 4)} | {_cell(r, 'ause_random', 4)} "
            f"| {_count(r.min_seeds, r.max_seeds)} | {_count(r.min_views, r.max_views)} |")
    lines += ["", "- Std maps: `std_camNN.png` next to each predictions directory's images, and "
              "`uncertainty_grid.png` there (truth, seed mean, std, |error|). Errors and stds are in units of "
              "the [0, 1] intensity range. n/a: not computed (no LPIPS backbone) or no masked pixels."]
    return "\n".join(lines) + "\n"


def sparsification_figure(df: pd.DataFrame, suffix: str = ""):
    """Mean sparsification curves (test views; mean over views per scan, then over scans), one colour per
    (protocol, n_views, ...): by the std (solid), the oracle (dashed), a random order (dotted)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    views = spread_views(df)
    if (views["protocol"] == "viewneti").any():
        views = views[views["protocol"] == "viewneti"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    x = SPARSIFICATION_FRACTIONS
    for key, g in views.groupby(CONFIG, sort=True):
        curves = {}
        for name in ("sparsification", "sparsification_oracle"):
            per_scan = g.groupby("scan")[name].apply(lambda s: np.mean(np.stack(s.to_numpy()), axis=0))
            curves[name] = np.mean(np.stack(per_scan.to_numpy()), axis=0)
        protocol, n_views, step, weights, masked = key
        label = f"{protocol} n={n_views} step {step}" + ("" if masked else " unmasked")
        line = ax.plot(x, curves["sparsification"], "-", label=f"{label}: by std")[0]
        ax.plot(x, curves["sparsification_oracle"], "--", color=line.get_color(), label=f"{label}: oracle")
        ax.plot(x, np.full_like(x, curves["sparsification"][0]), ":", color=line.get_color(),
                label=f"{label}: random order")
    ax.set(xlabel="fraction of masked pixels removed", ylabel="mean |error| of the rest (seed-mean image)",
           title="Sparsification (test views)" + suffix)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
