"""Paper-style summary of evaluation tables: mean over views per (scan, seed), then over seeds and scans,
per (protocol, n_views, step, weights, ...). Writes Parquet, CSV, Markdown and plots.

Two averagings, told apart by the `views` column. `test` (the primary number, DESIGN 3.9) averages the
test views only. `all` averages every rendered view, the run's own training views included, which is
what the original's `scripts/summarize_dtu.py` printed; it exists so users can compare with the released
script's numbers and is computed for the `viewneti` protocol only (the original had no other).

Groups never mix things that must not be averaged together: random and pretrained base weights,
masked and unmasked scans, LPIPS backbones, evaluation sizes. NaN (e.g. LPIPS not computed) propagates
instead of being skipped, so a mean never silently covers fewer images than it claims.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from viewneti_core.atomic_files import temp_file_beside
from viewneti_core.errors import ArtifactError
from viewneti_core.evaluation import spread_summary
from viewneti_core.evaluation.scoring import ROW_SCHEMA, write_parquet_atomic
from viewneti_core.evaluation.seed_spread import SPREAD_COLUMNS, not_computed

METRICS = ("psnr", "ssim", "lpips")
GROUP_KEYS = ["protocol", "n_views", "step", "mode", "weights", "model", "masked", "lpips_backbone",
              "eval_height", "eval_width"]
ROW_KEYS = ["run", "scan", "n_views", "mode", "step", "seed", "cam", "role", "protocol"]
ARROWS = {"psnr": "↑", "ssim": "↑", "lpips": "↓"}
RANDOM_BANNER = ("**RANDOM WEIGHTS — NOT BENCHMARK QUALITY.** Rows marked `RANDOM` were produced with a "
                 "randomly initialised base model; they show that the pipeline runs, not how well ViewNeTI works.")


@dataclass
class SummaryResult:
    out_dir: Path
    table: Path  # summary.parquet
    csv: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    n_groups: int = 0
    random_weights: bool = False  # at least one group used a random-weight base model
    uncertainty: Path | None = None  # uncertainty.parquet: the rows across seeds (spread_summary.py), if any

MINI_WORLD_BANNER = ("**MINI WORLD.** Rows with weights `mini-world` come from the mini world: synthetic scenes, "
                     "base model trained from scratch by this project on 2 CPU cores; not SD 2.1, not DTU.")


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_tables(parquet_paths: Sequence[Path]) -> pd.DataFrame:
    """Concatenate evaluation tables, checking their columns and that no image row appears twice."""
    if not parquet_paths:
        raise ValueError("no evaluation tables given")
    frames = []
    for path in map(Path, parquet_paths):
        if not path.is_file():
            raise FileNotFoundError(f"evaluation table {path} does not exist")
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ArtifactError(f"{path}: evaluation table is damaged or not Parquet "
                                f"({str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__})") from None
        missing = [c for c in ROW_SCHEMA.names if c not in frame.columns and c not in SPREAD_COLUMNS]
        if missing:
            raise ValueError(f"{path} is not a viewneti evaluation table: it lacks columns {missing}")
        wrong = [c for c in ("scan", "seed", "cam", "step", "psnr", "ssim", "lpips", "mse")
                 if not pd.api.types.is_numeric_dtype(frame[c])]
        if wrong:
            raise ArtifactError(f"{path}: evaluation table columns {wrong} are not numeric")
        if "uncertainty_seeds" not in frame.columns:  # a table written before the columns across seeds existed
            frame = frame.assign(**{k: [v] * len(frame) for k, v in not_computed("older table").items()})
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        raise ValueError(f"the evaluation tables {[str(p) for p in parquet_paths]} hold no rows")
    dup = df.duplicated(ROW_KEYS, keep=False)
    if dup.any():
        first = df.loc[dup, ROW_KEYS].iloc[0].to_dict()
        raise ValueError(f"{int(dup.sum())} rows appear more than once (e.g. {first}): was a table given twice?")
    return df


def _strict_mean(s: pd.Series) -> float:
    return s.mean(skipna=False)


def _strict_std(s: pd.Series) -> float:
    return s.std(skipna=False)  # sample std (ddof=1): NaN for a single value


VIEW_SETS = {"test": ("test",), "all": ("train", "test")}  # `views` value -> roles averaged


def summary_frame(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, per_scan): the summary has `{metric}_mean`, `{metric}_std_scans`, `{metric}_std_seeds`.

    per (scan, seed): mean over its views; per scan: mean over seeds; mean and std over scans.
    std_seeds is the std over seeds of the per-seed means over scans. Both are given for test views
    (`views == "test"`); the summary also has the original's all-views rows (`views == "all"`).
    """
    test = df[df["role"] == "test"]
    if test.empty:
        raise ValueError("the evaluation tables hold no test-view rows (role == 'test')")
    clash = test.duplicated(GROUP_KEYS + ["scan", "seed", "cam"], keep=False)
    if clash.any():
        runs = sorted(test.loc[clash, "run"].unique())
        raise ValueError(f"runs {runs} evaluate the same scan, seed and view under identical settings: "
                         "they would be averaged together; summarise them separately")
    summary, per_scan = _summarize_views(test)
    rendered = df[df["role"].isin(VIEW_SETS["all"]) & (df["protocol"] == "viewneti")]
    frames = [summary.assign(views="test")]
    if not rendered.empty:
        frames.append(_summarize_views(rendered)[0].assign(views="all"))
    summary = pd.concat(frames, ignore_index=True)
    order = ["views"] + [c for c in summary.columns if c != "views"]
    summary = summary[order].sort_values(["views", "protocol", "n_views", "step", "weights", "masked"],
                                         ascending=[False, True, True, True, True, True]).reset_index(drop=True)
    return summary, per_scan


def _summarize_views(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean over the given rows' views per (scan, seed), then over seeds per scan, then over scans."""
    per_ss = rows.groupby(GROUP_KEYS + ["scan", "seed"], dropna=False).agg(
        **{m: (m, _strict_mean) for m in METRICS}, n_views_averaged=("cam", "nunique")
    ).reset_index()
    per_scan = per_ss.groupby(GROUP_KEYS + ["scan"], dropna=False).agg(
        **{m: (m, _strict_mean) for m in METRICS}, **{f"{m}_std_seeds": (m, _strict_std) for m in METRICS},
        n_seeds=("seed", "nunique"),
    ).reset_index()
    per_seed = per_ss.groupby(GROUP_KEYS + ["seed"], dropna=False)[list(METRICS)].agg(_strict_mean).reset_index()
    summary = per_scan.groupby(GROUP_KEYS, dropna=False).agg(
        **{f"{m}_mean": (m, _strict_mean) for m in METRICS}, **{f"{m}_std_scans": (m, _strict_std) for m in METRICS},
        n_scans=("scan", "nunique"), scans=("scan", lambda s: ",".join(str(v) for v in sorted(s.unique()))),
    ).reset_index()
    seeds = per_seed.groupby(GROUP_KEYS, dropna=False).agg(
        **{f"{m}_std_seeds": (m, _strict_std) for m in METRICS}, n_seeds=("seed", "nunique"),
    ).reset_index()
    views = per_ss.groupby(GROUP_KEYS, dropna=False).agg(
        min_views=("n_views_averaged", "min"), max_views=("n_views_averaged", "max")
    ).reset_index()
    summary = summary.merge(seeds, on=GROUP_KEYS).merge(views, on=GROUP_KEYS)
    order = GROUP_KEYS + [f"{m}_{s}" for m in METRICS for s in ("mean", "std_scans", "std_seeds")] + [
        "n_scans", "n_seeds", "min_views", "max_views", "scans"]
    return summary[order], per_scan


def _fmt(mean: float, std: float, digits: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if not pd.isna(std) else "")


def _markdown_rows(summary: pd.DataFrame) -> list[str]:
    lines = [
        # The metrics come right after the two keys a reader compares by: a narrow pane (the Prefect UI's
        # artifact view) shows them before anything is cut off at its right edge.
        "| protocol | n_views | PSNR ↑ | SSIM ↑ | LPIPS ↓ | step | weights | masked | LPIPS backbone | scans "
        "| seeds | views averaged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary.itertuples(index=False):
        weights = "**RANDOM**" if r.weights == "random" else r.weights
        masked = "yes" if r.masked else "**NO (unmasked)**"
        backbone = "**random (test only)**" if r.lpips_backbone == "random" else r.lpips_backbone
        views = str(r.min_views) if r.min_views == r.max_views else f"{r.min_views}-{r.max_views}"
        lines.append(
            f"| {r.protocol} | {r.n_views} | {_fmt(r.psnr_mean, r.psnr_std_scans, 2)} "
            f"| {_fmt(r.ssim_mean, r.ssim_std_scans, 3)} | {_fmt(r.lpips_mean, r.lpips_std_scans, 3)} "
            f"| {r.step} | {weights} | {masked} | {backbone} | {r.scans} | {r.n_seeds} | {views} |"
        )
    return lines


def markdown_table(summary: pd.DataFrame) -> str:
    random = bool((summary["weights"] == "random").any())
    lines = ["# ViewNeTI DTU evaluation summary", ""]
    if random:
        lines += [RANDOM_BANNER, ""]
    if (summary["weights"] == "mini-world").any():
        lines += [MINI_WORLD_BANNER, ""]
    lines += [
        "## Test views (primary)", "",
        "Test views only. Per (scan, seed): mean over test views; then mean over seeds per scan; shown: "
        "mean ± std over scans (std over seeds in the `std_seeds` columns of summary.csv).", "",
        *_markdown_rows(summary[summary["views"] == "test"]),
    ]
    all_views = summary[summary["views"] == "all"]
    if not all_views.empty:
        lines += [
            "", "## All rendered views (the original's `scripts/summarize_dtu.py` averaging)", "",
            "Every rendered view, the run's own training views included, as the released script averaged "
            "them (viewneti protocol). For comparison with that script's output only: training views "
            "inflate these numbers.", "",
            *_markdown_rows(all_views),
        ]
    notes = []
    if (~summary["masked"]).any():
        notes.append("Rows with masked = NO cover whole images (no object masks for those scans); they are "
                     "never averaged with masked rows.")
    if (summary["lpips_backbone"] == "random").any():
        notes.append("LPIPS with a random VGG backbone is a test of the machinery, not a perceptual metric.")
    if (summary["lpips_backbone"] == "none").any():
        notes.append("LPIPS n/a: it was not computed for those tables.")
    sizes = sorted({(int(h), int(w)) for h, w in zip(summary["eval_height"], summary["eval_width"], strict=True)})
    notes.append("Evaluation size (H x W): " + ", ".join(f"{h}x{w}" for h, w in sizes) + " (the protocol is 300x400).")
    lines += ["", *[f"- {n}" for n in notes]]
    if random:
        lines += ["", RANDOM_BANNER]
    return "\n".join(lines) + "\n"


def _label(key: tuple) -> str:
    protocol, n_views, step, weights, masked = key
    return (f"{protocol} n={n_views} step {step}" + (" RANDOM" if weights == "random" else "")
            + ("" if masked else " unmasked"))


def _plots(df: pd.DataFrame, per_scan: pd.DataFrame, out_dir: Path, random: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    suffix = " — RANDOM WEIGHTS, not benchmark quality" if random else ""
    config = ["protocol", "n_views", "step", "weights", "masked"]
    paths = []

    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * per_scan["scan"].nunique() + 3), 4))
    scans = sorted(per_scan["scan"].unique())
    groups = list(per_scan.groupby(config, sort=True))
    width = 0.8 / max(1, len(groups))
    for i, (key, g) in enumerate(groups):
        g = g.set_index("scan").reindex(scans)
        xs = [j + i * width for j in range(len(scans))]
        ax.bar(xs, g["psnr"], width, yerr=g["psnr_std_seeds"].fillna(0), label=_label(key), capsize=2)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(scans))], [str(s) for s in scans])
    ax.set(xlabel="DTU scan", ylabel="PSNR (test views, mean over seeds)", title="PSNR per scan" + suffix)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(_atomic(out_dir / "psnr_per_scan.png", lambda p: fig.savefig(p, format="png", dpi=100)))
    plt.close(fig)

    fig = per_view_figure(df, suffix)
    paths.append(_atomic(out_dir / "metrics_per_view.png", lambda p: fig.savefig(p, format="png", dpi=100)))
    plt.close(fig)
    return paths


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")
_PER_VIEW_KEYS = ["protocol", "n_views", "step", "weights", "masked"]


def per_view_figure(df: pd.DataFrame, suffix: str = ""):
    """PSNR and LPIPS per camera, one series per configuration (e.g. 1 and 3 views).

    Series of one camera would sit on top of each other (the 1-view run hidden behind the 3-view
    one), so each gets its own small x offset, marker and some transparency.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    # The viewneti protocol covers every rendered view (regnerf only the 25 test views).
    views = df[df["role"].isin(["train", "test"])]
    if (views["protocol"] == "viewneti").any():
        views = views[views["protocol"] == "viewneti"]
    groups = list(views.groupby(_PER_VIEW_KEYS, sort=True))
    spacing = 0.6 / max(1, len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for metric, ax in zip(("psnr", "lpips"), axes, strict=True):
        for i, (key, g) in enumerate(groups):
            offset = (i - (len(groups) - 1) / 2) * spacing
            per_cam = g.groupby(["cam", "role"])[metric].agg(_strict_mean).reset_index()
            marker = _MARKERS[i % len(_MARKERS)]
            line = ax.plot(per_cam["cam"] + offset, per_cam[metric], marker, ms=5, alpha=0.75, linestyle="none",
                           label=_label(key))[0]
            train = per_cam[per_cam["role"] == "train"]
            ax.plot(train["cam"] + offset, train[metric], "*", ms=12, alpha=0.75, color=line.get_color())
        if views[metric].isna().all():
            ax.text(0.5, 0.5, f"{metric.upper()} not computed", transform=ax.transAxes, ha="center")
        ax.set(xlabel="DTU camera index (stars: training views)", ylabel=metric.upper(),
               title=f"{metric.upper()} per view{suffix}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def summarize(parquet_paths: Sequence[Path], out_dir: Path) -> SummaryResult:
    """Summarise evaluation tables into OUT_DIR/summary.{parquet,csv,md} and two PNG plots; tables with
    the columns across seeds add uncertainty.{parquet,csv}, a section of summary.md and sparsification.png."""
    out_dir = Path(out_dir)
    df = load_tables(parquet_paths)
    summary, per_scan = summary_frame(df)
    random = bool((summary["weights"] == "random").any())
    table = write_parquet_atomic(pa.Table.from_pandas(summary, preserve_index=False), out_dir / "summary.parquet")
    csv = _atomic(out_dir / "summary.csv", lambda p: summary.to_csv(p, index=False))
    spread = spread_summary.spread_frame(df, GROUP_KEYS)
    text = markdown_table(summary) + ("" if spread.empty else "\n" + spread_summary.spread_markdown(spread, summary))
    md = _atomic(out_dir / "summary.md", lambda p: p.write_text(text))
    plots = _plots(df, per_scan, out_dir, random)
    uncertainty = None
    if not spread.empty:
        uncertainty = write_parquet_atomic(pa.Table.from_pandas(spread, preserve_index=False),
                                           out_dir / "uncertainty.parquet")
        _atomic(out_dir / "uncertainty.csv", lambda p: spread.to_csv(p, index=False))
        fig = spread_summary.sparsification_figure(df, " — RANDOM WEIGHTS" if random else "")
        plots.append(_atomic(out_dir / "sparsification.png", lambda p: fig.savefig(p, format="png", dpi=100)))
        import matplotlib.pyplot as plt

        plt.close(fig)
    return SummaryResult(out_dir, table, csv, md, plots, len(summary), random, uncertainty)
