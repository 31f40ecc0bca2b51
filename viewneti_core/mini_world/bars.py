"""The bars issue 19 set for the mini world, computed from the rows of a `python -m bench.mini_world` run.

A bar compares two variants *paired*: on the same held-out scan and seed, the first variant's score minus
the other's. Its margin is the mean of those differences; its spread is the standard deviation over scans
of each scan's mean difference (how much the margin depends on which scenes were drawn). A paired bar is
reached when the margin is larger than the spread: a win that holds scene after scene, not one carried by
a few. The view gap (whole-image PSNR against the render's own camera minus against the mirrored one) is
itself a paired margin, and its bar adds a floor: at least 2 dB, and larger than its spread over scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from viewneti_core.mini_world.evaluate import per_set_means

VIEW_GAP_BAR_DB = 2.0


@dataclass(frozen=True)
class PairedBar:
    name: str
    better: str  # the variant that must win
    other: str
    metric: str  # a column of `per_set_means`
    min_views: int = 1  # the bar applies to runs with at least this many input views


PAIRED_BARS = (
    PairedBar("ViewNeTI - mode 2, masked PSNR", "viewneti", "mode2", "psnr"),
    PairedBar("ViewNeTI - untrained view mapper, masked PSNR", "viewneti", "untrained-view-mapper", "psnr"),
    PairedBar("ViewNeTI - mode 2, SSIM", "viewneti", "mode2", "ssim"),
    PairedBar("ViewNeTI - untrained view mapper, SSIM", "viewneti", "untrained-view-mapper", "ssim"),
    PairedBar("ViewNeTI - nearest input view, whole-image PSNR", "viewneti", "nearest-view", "psnr_image"),
    # The interpolation claim: a single-scene fit from 6-9 views renders the cameras between its inputs.
    PairedBar("mode 2 - nearest input view, masked PSNR", "mode2", "nearest-view", "psnr", min_views=6),
)

COLUMNS = ["bar", "n_views", "margin", "spread", "scans", "ahead", "reached"]


def bar_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every bar the rows can answer (both variants present at that view count), one row each: margin,
    spread, scans paired, scans where the first variant is ahead (for the view gap: at least 2 dB), and
    whether the bar is reached (None with fewer than 2 scans: no spread to beat)."""
    sets = per_set_means(rows).set_index(["variant", "n_views", "scan", "seed"]).sort_index()
    have = set(sets.index.droplevel(["scan", "seed"]))
    out = []
    for n in sorted({n for _, n in have}):
        for bar in PAIRED_BARS:
            if n >= bar.min_views and (bar.better, n) in have and (bar.other, n) in have:
                diff = (sets.loc[(bar.better, n), bar.metric] - sets.loc[(bar.other, n), bar.metric]).dropna()
                per_scan, margin, spread = _over_scans(diff)
                out.append([bar.name, n, margin, spread, len(per_scan), int((per_scan > 0).sum()),
                            bool(margin > spread) if len(per_scan) >= 2 else None])
        if ("viewneti", n) in have:
            per_scan, margin, spread = _over_scans(sets.loc[("viewneti", n), "view_gap"])
            out.append([f"view gap of ViewNeTI >= {VIEW_GAP_BAR_DB:g} dB", n, margin, spread, len(per_scan),
                        int((per_scan >= VIEW_GAP_BAR_DB).sum()),
                        bool(margin >= VIEW_GAP_BAR_DB and margin > spread) if len(per_scan) >= 2 else None])
    return pd.DataFrame(out, columns=COLUMNS)


def _over_scans(values: pd.Series) -> tuple[pd.Series, float, float]:
    """`values` indexed by (scan, seed) -> (each scan's mean, the mean of all, the std over scans)."""
    per_scan = values.groupby(level="scan").mean()
    return per_scan, float(values.mean()), float(per_scan.std())


def markdown(table: pd.DataFrame) -> str:
    lines = ["| bar | views | margin (dB or SSIM) | spread over scans | scans ahead | reached |", "|---|---|---|---|---|---|"]
    for row in table.itertuples():
        verdict = "n/a (1 scan)" if row.reached is None else "**yes**" if row.reached else "no"
        lines.append(f"| {row.bar} | {row.n_views} | {row.margin:+.3f} | {row.spread:.3f} | "
                     f"{row.ahead} of {row.scans} | {verdict} |")
    return "\n".join(lines)
