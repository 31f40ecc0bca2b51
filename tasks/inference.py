"""Inference task: render the evaluation cameras of one fitted item for every seed."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.fault_drills import maybe_inject_failure
from tasks.runtime import gpu_slot, ledger_entry, retry_transient, run_logger


@task(name="render-views", retry_condition_fn=retry_transient, task_run_name="infer-{item}")
def infer_task(fit: dict, item: str, seeds: list[int], views: list[int] | None, out_dir: str, ledger_dir: str,
               camera_path: tuple[int, int, int] | None = None) -> dict:
    """Predictions (safetensors + PNGs), one grid per seed and, with `camera_path`, an animated GIF along
    it, under `out_dir` (replaced atomically)."""
    from viewneti_core.inference import run_inference

    logger = run_logger()
    with gpu_slot(), ledger_entry(Path(ledger_dir), "infer", item):
        maybe_inject_failure(item, "infer", Path(ledger_dir))
        result = run_inference(Path(fit["run_dir"]), step=int(fit["step"]), seeds=seeds, views=views,
                               out_dir=Path(out_dir), camera_path=camera_path, progress=False)
    logger.info("%s: rendered %d seed(s) into %s (%s weights)", item, len(seeds), result.out_dir, result.weights)
    return {
        "item": item, "out_dir": str(result.out_dir), "predictions": str(result.predictions),
        "grids": [str(g) for g in result.grids], "scan": result.scan, "n_views": result.n_views,
        "step": result.step, "weights": result.weights, "gif": str(result.gif) if result.gif else None,
    }
