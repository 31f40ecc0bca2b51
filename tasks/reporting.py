"""Aggregation and the UI: Parquet tables, the paper-style report, and Prefect artifacts.

The numbers come from viewneti_core.evaluation.summary; this module only gathers files and renders them for the
Prefect UI (progress, table and markdown artifacts).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks.runtime import ledger_entry, parse_item_name, run_logger, write_json_atomic
from viewneti_core.base_model.sd_models import weights_note

ALL_ROWS_FILE = "metrics_all.parquet"
RANDOM_NOTE = ("**RANDOM WEIGHTS — NOT BENCHMARK QUALITY.** These numbers come from a randomly initialised "
               "base model; they show that the pipeline runs end to end, not how well ViewNeTI works.")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    key = "-".join(parts).lower()
    return "".join(c if c.isalnum() or c == "-" else "-" for c in key)[:100]


@task(name="aggregate-metrics", cache_policy=NO_CACHE, persist_result=False, task_run_name="aggregate-{name}")
def aggregate_task(metrics_paths: list[str], report_dir: str, name: str, ledger_dir: str) -> dict:
    """All per-item tables -> REPORT/metrics_all.parquet + summary.{parquet,csv,md} + plots.

    Not cached: it is cheap and must reflect whatever per-item tables exist now.
    """
    import pyarrow as pa

    from viewneti_core.evaluation.scoring import write_parquet_atomic
    from viewneti_core.evaluation.summary import load_tables, summarize

    logger = run_logger()
    if not metrics_paths:
        raise ValueError("no per-item metric tables to aggregate (did every item fail?)")
    report = Path(report_dir)
    with ledger_entry(Path(ledger_dir), "aggregate", name):
        rows = load_tables([Path(p) for p in metrics_paths])
        all_rows = write_parquet_atomic(pa.Table.from_pandas(rows, preserve_index=False), report / ALL_ROWS_FILE)
        result = summarize([Path(p) for p in metrics_paths], report)
    record = {
        "report_dir": str(report), "metrics_all": str(all_rows), "summary_parquet": str(result.table),
        "summary_csv": str(result.csv), "summary_md": str(result.markdown), "plots": [str(p) for p in result.plots],
        "n_groups": result.n_groups, "random_weights": result.random_weights, "n_rows": len(rows),
        "uncertainty": str(result.uncertainty) if result.uncertainty else None,
        "items": sorted({str(r) for r in rows["run"].unique()}),
    }
    write_json_atomic(report / "aggregate.json", record)
    logger.info("aggregated %d rows of %d item(s) into %s", len(rows), len(record["items"]), report)
    return record


# ---- artifacts (called from flows; they attach to the current flow run) ------------------------------


class ProgressArtifact:
    """A progress bar over the fan-out, counted by stage: each item is one step per stage (fit, infer,
    evaluate), so the bar moves as soon as the first fits finish, not only when whole items do."""

    def __init__(self, key: str, total: int, description: str, stages: tuple[str, ...] = ("item",)):
        self.total = max(1, total)
        self.stages = stages
        self.done = dict.fromkeys(stages, 0)
        self.failed = 0
        self.description = description
        self.id: UUID | None = create_progress_artifact(progress=0.0, key=key, description=self.describe())

    def describe(self) -> str:
        counts = " · ".join(f"{stage} {self.done[stage]}/{self.total}" for stage in self.stages)
        failed = f" ({self.failed} stage run(s) failed or skipped)" if self.failed else ""
        return f"{self.description}: {counts}{failed}"

    def advance(self, stage: str | None = None, ok: bool = True) -> float:
        stage = stage or self.stages[-1]
        self.done[stage] += 1
        self.failed += not ok
        progress = 100.0 * sum(self.done.values()) / (self.total * len(self.stages))
        if self.id is not None:
            update_progress_artifact(artifact_id=self.id, progress=progress, description=self.describe())
        return progress


def _clean(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def summary_table_artifact(key: str, summary_parquet: Path, description: str) -> None:
    import pandas as pd

    create_table_artifact(table=summary_table_rows(pd.read_parquet(summary_parquet)), key=key, description=description)


def summary_table_rows(frame) -> list[dict]:
    """The summary's rows for the UI's table artifact: JSON-clean values, metrics rounded and placed first."""
    # Metrics first after the two keys: the UI's artifact pane (~1400 px) cuts wide tables off on the right.
    columns = [c for c in ("protocol", "n_views", "psnr_mean", "ssim_mean", "lpips_mean", "views", "psnr_std_scans",
                           "ssim_std_scans", "lpips_std_scans", "weights", "masked", "lpips_backbone", "n_scans",
                           "n_seeds", "step", "eval_height", "eval_width") if c in frame.columns]
    rows = [{c: _clean(v) for c, v in row.items()} for row in frame[columns].to_dict(orient="records")]
    for row in rows:
        for c in ("psnr_mean", "ssim_mean", "lpips_mean", "psnr_std_scans", "ssim_std_scans", "lpips_std_scans"):
            if isinstance(row.get(c), float):
                row[c] = round(row[c], 4)
    return rows


def _link(path: str | Path, label: str | None = None) -> str:
    path = Path(path)
    return f"[{label or path.name}]({path.absolute().as_uri()})"


# Inline pictures for the UI: a browser opens no file:// link from the Prefect UI, but its markdown renderer
# shows `![](data:image/png;base64,...)`. Each picture is downscaled until its PNG fits PICTURE_MAX_BYTES, and
# the whole artifact stays within PICTURES_BUDGET_BYTES (the artifact is one database row and one API reply);
# pictures beyond the budget stay links.
PLOT_MAX_SIDE = 640
GRID_MAX_SIDE = 384
PICTURE_MAX_BYTES = 100_000
PICTURES_BUDGET_BYTES = 1_500_000


def thumbnail_png(path: str | Path, max_side: int, max_bytes: int = PICTURE_MAX_BYTES) -> bytes | None:
    """The image as a PNG at most `max_side` pixels on its long side and `max_bytes` long (None if unreadable)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    side = min(max_side, max(image.size))
    while True:
        scale = side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        buffer = io.BytesIO()
        (image if size == image.size else image.resize(size, Image.LANCZOS)).save(buffer, format="PNG", optimize=True)
        if buffer.tell() <= max_bytes or side <= 32:
            return buffer.getvalue() if buffer.tell() <= max_bytes else None
        side = int(side * 0.75)


class _Pictures:
    """Inline data-URI pictures under one byte budget; past it (or when unreadable) a picture is left out."""

    def __init__(self, budget: int):
        self.left = budget
        self.omitted = 0

    def image(self, path: str | Path, max_side: int, alt: str) -> str | None:
        import base64

        png = thumbnail_png(path, max_side)
        uri = None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        if uri is None or len(uri) > self.left:
            self.omitted += 1
            return None
        self.left -= len(uri)
        return f"![{alt}]({uri})"

    def animation(self, path: str | Path, alt: str) -> str | None:
        """A GIF as it is (a re-encoded thumbnail would lose the animation), if it fits its share."""
        import base64

        try:
            data = Path(path).read_bytes()
        except OSError:
            data = b""
        uri = "data:image/gif;base64," + base64.b64encode(data).decode("ascii")
        if not data.startswith(b"GIF8") or len(data) > PICTURE_MAX_BYTES or len(uri) > self.left:
            self.omitted += 1
            return None
        self.left -= len(uri)
        return f"![{alt}]({uri})"


def report_markdown(
    name: str,
    run_dir: Path,
    aggregate: dict | None,
    items: dict[str, dict],
    failures: dict[str, str],
    notes: list[str],
    inline_pictures: bool = False,
    pictures_from: Path | None = None,
) -> str:
    """The report: status, the paper-style table (from summary.md), per-item rows with grid links, files.

    With `inline_pictures` (the UI artifact) the plots, each item's first grid and its camera-path GIF are
    embedded as small data URIs after the tables. With `pictures_from` (the file on disk, which lives in
    that directory) the same pictures are shown by relative path, so any Markdown viewer displays them.
    """
    lines = [f"# DTU benchmark `{name}`", ""]
    random = (aggregate or {}).get("random_weights") or any(r.get("weights") == "random" for r in items.values())
    if random:
        lines += [RANDOM_NOTE, ""]
    if any(r.get("weights") == "mini-world" for r in items.values()):
        lines += [f"**{weights_note('mini-world').upper()}.** The base model and view mapper were trained by this "
                  "project on synthetic scenes; the numbers measure ViewNeTI in that world.", ""]
    status = "all items finished" if not failures else f"**{len(failures)} item(s) FAILED**: {', '.join(sorted(failures))}"
    lines += [f"- run directory: `{run_dir}`", f"- items: {len(items)} finished, {len(failures)} failed — {status}"]
    lines += [f"- {n}" for n in notes]
    lines.append("")
    if aggregate is not None:
        summary_md = Path(aggregate["summary_md"]).read_text()
        body = [line for line in summary_md.splitlines() if not line.startswith("# ")
                and not line.startswith("**RANDOM WEIGHTS") and not line.startswith("**MINI WORLD")]  # ours is above
        body = [f"#{line}" if line.startswith("## ") else line for line in body]  # nest under our heading
        lines += ["## Novel view synthesis on DTU (paper-style)", "", *body, ""]
        plots = " · ".join(_link(p) for p in aggregate["plots"])
        lines += ["## Tables and plots", "",
                  f"- all metric rows: {_link(aggregate['metrics_all'])}",
                  f"- summary: {_link(aggregate['summary_parquet'])} · {_link(aggregate['summary_csv'])} · "
                  f"{_link(aggregate['summary_md'])}",
                  f"- plots: {plots}", ""]
    lines += ["## Items", "", "| item | status | PSNR ↑ | SSIM ↑ | LPIPS ↓ | grids |", "|---|---|---|---|---|---|"]
    for item in sorted(set(items) | set(failures), key=_item_sort_key):
        if item in failures:
            message = failures[item].replace("|", "/").replace("\n", " ")[:160]
            lines.append(f"| {item} | **failed**: {message} | | | | |")
            continue
        record = items[item]
        means = (record.get("means") or {}).get("viewneti") or next(iter((record.get("means") or {}).values()), {})
        grids = " ".join(_link(g, Path(g).stem.replace("grid_", "")) for g in record.get("grids", []))
        grids += f" {_link(record['gif'], 'camera path')}" if record.get("gif") else ""
        grids += f" {_link(record['uncertainty_grid'], 'std maps')}" if record.get("uncertainty_grid") else ""

        def fmt(key: str, digits: int, means=means) -> str:
            value = means.get(key)
            return "n/a" if value is None else f"{value:.{digits}f}"

        lines.append(f"| {item} | ok | {fmt('psnr', 2)} | {fmt('ssim', 3)} | {fmt('lpips', 3)} | {grids} |")
    lines += ["", "Item columns: mean over all rendered views and seeds (viewneti protocol); the paper-style "
              "table above uses test views only."]
    if inline_pictures:
        lines += _picture_section(aggregate, items)
    elif pictures_from is not None:
        lines += _picture_files_section(aggregate, items, pictures_from)
    if random:
        lines += ["", RANDOM_NOTE]
    return "\n".join(lines) + "\n"


def _picture_section(aggregate: dict | None, items: dict[str, dict]) -> list[str]:
    """Plots first (they summarise everything), then one grid per item, in item order, while the budget lasts."""
    pictures = _Pictures(PICTURES_BUDGET_BYTES)
    lines = ["", "## Pictures", ""]
    for plot in (aggregate or {}).get("plots", []):
        shown = pictures.image(plot, PLOT_MAX_SIDE, Path(plot).stem)
        if shown:
            lines += [f"**{Path(plot).stem}**", "", shown, ""]
    for item in sorted(items, key=_item_sort_key):
        grids = items[item].get("grids") or []
        shown = pictures.image(grids[0], GRID_MAX_SIDE, f"{item} {Path(grids[0]).stem}") if grids else None
        spread = items[item].get("uncertainty_grid")
        beside = pictures.image(spread, GRID_MAX_SIDE, f"{item} std maps") if shown and spread else None
        if shown:
            caption = f"**{item}** — {Path(grids[0]).stem} (downscaled; full size: {_link(grids[0])})"
            caption += f", beside it the spread over seeds ({_link(spread)})" if beside else ""
            lines += [caption, "", shown + (f" {beside}" if beside else ""), ""]
        gif = items[item].get("gif")
        shown = pictures.animation(gif, f"{item} camera path") if gif else None
        if shown:
            lines += [f"**{item}** — camera path ({_link(gif)})", "", shown, ""]
    if pictures.omitted:
        lines += [f"{pictures.omitted} picture(s) not shown here (size budget of the UI artifact); "
                  "the links above open them.", ""]
    return lines


def _picture_files_section(aggregate: dict | None, items: dict[str, dict], base: Path) -> list[str]:
    """The same pictures as the UI's, for the report file: plots, then each item's grids and camera path."""
    import os

    def shown(path: str | Path, alt: str) -> str:
        return f"![{alt}]({Path(os.path.relpath(Path(path).absolute(), Path(base).absolute())).as_posix()})"

    lines = ["", "## Pictures", ""]
    lines += [shown(plot, Path(plot).stem) for plot in (aggregate or {}).get("plots", [])]
    for item in sorted(items, key=_item_sort_key):
        pictures = [*(items[item].get("grids") or []), *([items[item]["gif"]] if items[item].get("gif") else []),
                    *([items[item]["uncertainty_grid"]] if items[item].get("uncertainty_grid") else [])]
        if pictures:
            lines += ["", f"**{item}**", "", *[shown(p, f"{item} {Path(p).stem}") for p in pictures]]
    return lines + [""]


def _item_sort_key(item: str) -> tuple[int, int]:
    try:
        return parse_item_name(item)
    except ValueError:
        return (1 << 30, 0)


def publish_report(key_prefix: str, name: str, run_dir: Path, aggregate: dict | None, items: dict[str, dict],
                   failures: dict[str, str], notes: list[str]) -> Path:
    """Markdown + table artifacts, and the same report as REPORT/report.md (pictures by relative path there)."""
    report_dir = Path(aggregate["report_dir"]) if aggregate else run_dir / "report"
    markdown = report_markdown(name, run_dir, aggregate, items, failures, notes, pictures_from=report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text(markdown)
    tmp.replace(path)
    ui_markdown = report_markdown(name, run_dir, aggregate, items, failures, notes, inline_pictures=True)
    create_markdown_artifact(markdown=ui_markdown, key=artifact_key(key_prefix, "report"),
                             description=f"DTU benchmark report of {name}")
    if aggregate is not None:
        summary_table_artifact(artifact_key(key_prefix, "summary"), Path(aggregate["summary_parquet"]),
                               f"summary metrics of {name} (test views, mean over scans)"
                               + (" — RANDOM WEIGHTS, not benchmark quality" if aggregate.get("random_weights") else ""))
        if aggregate.get("uncertainty"):
            uncertainty_table_artifact(artifact_key(key_prefix, "uncertainty"), Path(aggregate["uncertainty"]),
                                       f"ensemble, best-of-N, diversity and AUSE of {name} (test views, mean over "
                                       "scans)" + (" — RANDOM WEIGHTS" if aggregate.get("random_weights") else ""))
    return path


def uncertainty_table_artifact(key: str, table: Path, description: str) -> None:
    """The rows across seeds (viewneti_core.evaluation.spread_summary) as a UI table."""
    import pandas as pd

    create_table_artifact(table=uncertainty_table_rows(pd.read_parquet(table)), key=key, description=description)


def uncertainty_table_rows(frame) -> list[dict]:
    """JSON-clean rows of uncertainty.parquet, the headline columns first, floats rounded."""
    columns = [c for c in ("protocol", "n_views", "ens_psnr_mean", "best_psnr_mean", "div_rmse_mean", "div_lpips_mean",
                           "unc_spearman_mean", "ause_mean", "ause_random_mean", "ause_std_scans", "weights",
                           "n_scans", "min_seeds", "max_seeds", "step") if c in frame.columns]
    rows = [{c: _clean(v) for c, v in row.items()} for row in frame[columns].to_dict(orient="records")]
    return [{c: round(v, 4) if isinstance(v, float) else v for c, v in row.items()} for row in rows]
