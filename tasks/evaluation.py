"""Metric task: PSNR / SSIM / LPIPS rows of one item, in each protocol, as a Parquet table."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.fault_drills import maybe_inject_failure
from tasks.runtime import (
    gpu_slot,
    ledger_entry,
    retry_transient,
    run_logger,
    write_json_atomic,
)

ITEM_RECORD = "item.json"


@task(name="evaluate-views", retry_condition_fn=retry_transient, task_run_name="evaluate-{item}")
def evaluate_task(
    inference: dict,
    item: str,
    out_parquet: str,
    protocols: list[str],
    device: str,
    lpips_weights: str,
    eval_size: tuple[int, int],
    batch_size: int,
    ledger_dir: str,
    views_chosen: bool = False,
    uncertainty: bool | None = None,
) -> dict:
    import pandas as pd

    from viewneti_core.base_model.sd_models import resolve_device
    from viewneti_core.evaluation.scoring import evaluate_predictions
    from viewneti_core.evaluation.seed_spread import UNCERTAINTY_GRID

    logger = run_logger()
    with gpu_slot(), ledger_entry(Path(ledger_dir), "evaluate", item):
        maybe_inject_failure(item, "evaluate", Path(ledger_dir))
        path = evaluate_predictions(
            Path(inference["out_dir"]), Path(out_parquet), protocols=tuple(protocols),
            device=str(resolve_device(device)), lpips_weights=lpips_weights, run_name=item,
            eval_size=tuple(eval_size), batch_size=batch_size, progress=False, views_chosen=views_chosen,
            uncertainty=uncertainty,
        )
    rows = pd.read_parquet(path)
    means = rows.groupby("protocol")[["psnr", "ssim", "lpips"]].mean().round(4)
    means = {proto: {k: (None if pd.isna(v) else float(v)) for k, v in vals.items()}
             for proto, vals in means.to_dict(orient="index").items()}
    logger.info("%s: %d metric rows in %s; means %s", item, len(rows), path, means)
    record = {"item": item, "metrics": str(path), "rows": len(rows), "means": means,
              "scan": inference["scan"], "n_views": inference["n_views"], "step": inference["step"],
              "weights": inference["weights"], "grids": inference["grids"], "gif": inference.get("gif"),
              "predictions": inference["out_dir"]}
    spread_grid = Path(inference["out_dir"]) / UNCERTAINTY_GRID
    if int(rows["uncertainty_seeds"].max()) >= 2 and spread_grid.is_file():  # std maps of this evaluation
        record["uncertainty_grid"] = str(spread_grid)
    write_json_atomic(Path(out_parquet).with_name(ITEM_RECORD), record)  # read by the aggregate flow
    return record
