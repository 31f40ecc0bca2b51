"""Pieces the flows share: run names, data/view-mapper stages, and the per-item fan-out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from flows.cluster import CORE_LOGGERS, gpu_annotations
from flows.params import BenchmarkConfig, item_config, item_name, pretrain_config
from tasks.data import prepare_dtu_task
from tasks.evaluation import evaluate_task
from tasks.inference import infer_task
from tasks.preflight import preflight_task
from tasks.reporting import ProgressArtifact, artifact_key
from tasks.runtime import task_options
from tasks.training import fit_task, pretrain_task, resolve_view_mapper_task

os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", CORE_LOGGERS)

STAGES = ("fit", "infer", "evaluate")


class BenchmarkItemsFailed(RuntimeError):
    """Some (scan, n_views) items failed for good; the message names them."""


def _param(name: str, default: Any = None) -> Any:
    from prefect.runtime import flow_run

    return (flow_run.parameters or {}).get(name, default)


def _config_name() -> str:
    config = _param("config")
    if isinstance(config, BenchmarkConfig):
        return config.name
    if isinstance(config, dict):
        return str(config.get("name", "dtu-benchmark"))
    return "dtu-benchmark"


def benchmark_run_name() -> str:
    return _config_name()


def per_scan_run_name() -> str:
    return item_name(_param("scan", "?"), _param("n_views", "?"))


def stage_run_name(stage: str):
    def name() -> str:
        return f"{stage}-{_config_name()}"

    return name


def task_opts(config: BenchmarkConfig) -> dict[str, Any]:
    ex = config.execution
    return task_options(config.results_dir, ex.retries, ex.retry_delay_s, ex.refresh_cache)


# ---- stages --------------------------------------------------------------------------------------------


def preflight(config: BenchmarkConfig, pretraining: bool = True, fitting: bool = True) -> dict:
    """Base model(s) and LPIPS weights present? Checked before data preparation and training.

    `pretraining`: the flow may pretrain (skipped when a view mapper is given); `fitting`: the flow
    fits, renders and evaluates items.
    """
    models = []
    if pretraining and not config.pretrained_view_mapper:
        models.append((config.pretrain.model.pretrained_model_name_or_path, config.pretrain.model.revision))
    if fitting:
        models.append((config.fit.model.pretrained_model_name_or_path, config.fit.model.revision))
    lpips = config.evaluation.lpips_weights if fitting else "none"
    return preflight_task(models=models, lpips_weights=lpips)


def prepare_data(config: BenchmarkConfig) -> dict:
    """Prepare every scan the benchmark needs (the same set from every flow, so re-runs are no-ops)."""
    ex = config.execution
    return prepare_dtu_task.with_options(retries=ex.retries, retry_delay_seconds=ex.retry_delay_s)(
        sources=config.data.sources, scans=config.required_scans(), out_dir=str(config.data.root),
        light=config.data.light, sha256=config.data.sha256,
        cache_dir=str(config.data.cache_dir) if config.data.cache_dir else None, ledger_dir=str(config.ledger_dir),
    )


def obtain_view_mapper(config: BenchmarkConfig, view_mapper: str | None = None) -> dict:
    """The view mapper record: a given one (parameter or config), else mode-3 pretraining on a GPU worker."""
    logger = get_run_logger()
    given = view_mapper or config.pretrained_view_mapper
    if given:
        logger.info("pretraining skipped: using the given view mapper %s", given)
        return resolve_view_mapper_task(given)
    with gpu_annotations():
        future = pretrain_task.with_options(**task_opts(config)).submit(
            pretrain_config(config), name=config.name, ledger_dir=str(config.ledger_dir),
            progress_key=pretrain_progress_key(config))
    return future.result()


def existing_view_mapper(config: BenchmarkConfig, view_mapper: str | None) -> dict:
    """For a single item: a given view mapper, or the benchmark's finished pretraining run."""
    from viewneti_core.training.checkpoints import list_checkpoints

    given = view_mapper or config.pretrained_view_mapper
    if given:
        return resolve_view_mapper_task(given)
    if not list_checkpoints(config.pretrain_run_dir):
        raise ValueError(
            f"no view mapper: {config.pretrain_run_dir} has no checkpoint yet. Run the pretrain-view-mapper flow "
            "first, or pass view_mapper (a mode-3 run/checkpoint directory or a registered name)")
    return resolve_view_mapper_task(str(config.pretrain_run_dir))


# ---- the fan-out -----------------------------------------------------------------------------------------


@dataclass
class ItemOutcome:
    records: dict[str, dict] = field(default_factory=dict)  # item -> evaluate record
    failures: dict[str, str] = field(default_factory=dict)  # item -> "stage: message"
    retried: dict[str, str] = field(default_factory=dict)  # item -> what was run again, and from where

    def failure_message(self, total: int, run_dir: Path) -> str:
        named = "; ".join(f"{item} ({why})" for item, why in sorted(self.failures.items()))
        return (f"{len(self.failures)} of {total} benchmark item(s) failed: {named}. The other items' results are "
                f"kept under {run_dir}; running the flow again redoes only the failed items.")


def submit_item(config: BenchmarkConfig, scan: int, n_views: int, mapper: dict) -> dict[str, PrefectFuture]:
    """fit -> infer -> evaluate of one item, each a GPU task chained by futures on the Dask cluster."""
    item = item_name(scan, n_views)
    opts = task_opts(config)
    item_dir = config.item_dir(scan, n_views)
    ledger = str(config.ledger_dir)
    ev = config.evaluation
    with gpu_annotations(priority=0):
        fit = fit_task.with_options(**opts).submit(item_config(config, scan, n_views, mapper["checkpoint"]), item=item,
                                                   view_mapper_fingerprint=mapper["fingerprint"], ledger_dir=ledger)
    with gpu_annotations(priority=1):
        infer = infer_task.with_options(**opts).submit(
            fit, item=item, seeds=list(config.fit.eval.seeds), views=config.views,
            out_dir=str(item_dir / "inference"), ledger_dir=ledger, camera_path=config.camera_path)
    with gpu_annotations(priority=2):
        evaluate = evaluate_task.with_options(**opts).submit(
            infer, item=item, out_parquet=str(item_dir / "metrics.parquet"), protocols=list(ev.protocols),
            device=ev.device, lpips_weights=ev.lpips_weights, eval_size=tuple(ev.eval_size),
            batch_size=ev.batch_size, ledger_dir=ledger, views_chosen=config.views is not None,
            uncertainty=ev.uncertainty)
    return {"fit": fit, "infer": infer, "evaluate": evaluate}


def _why(stages: dict[str, PrefectFuture]) -> str:
    for stage in STAGES:
        state: State = stages[stage].state
        if not state.is_completed():
            message = (state.message or state.name or "").strip().splitlines()
            return f"{stage}: {message[0] if message else state.type.value}"[:300]
    return "unknown"


def run_items(config: BenchmarkConfig, items: list[tuple[int, int]], mapper: dict, progress_key: str) -> ItemOutcome:
    """Submit every item, wait for all of them (a failed item never stops the others), report progress
    by stage: each finished fit, infer and evaluate moves the bar (an item is three steps of it)."""
    logger = get_run_logger()
    progress = ProgressArtifact(progress_key, len(items), f"{config.name}: (scan, n_views) items", STAGES)
    chains = {item_name(scan, n): submit_item(config, scan, n, mapper) for scan, n in items}
    by_future = {future: (item, stage) for item, chain in chains.items() for stage, future in chain.items()}
    outcome = ItemOutcome()
    for future in as_completed(list(by_future)):
        item, stage = by_future[future]
        future.wait()
        ok = future.state.is_completed()
        progress.advance(stage, ok)
        if stage != "evaluate":
            continue
        if ok:
            outcome.records[item] = future.result()
            logger.info("item %s finished", item)
        else:
            outcome.failures[item] = _why(chains[item])
            logger.error("item %s failed: %s", item, outcome.failures[item])
    outcome.retried = retried_items(config, chains)
    return outcome


def retried_items(config: BenchmarkConfig, chains: dict[str, dict[str, PrefectFuture]]) -> dict[str, str]:
    """Items of this run with a stage that ran more than once (a failed attempt, a lost worker: a cancelled
    or timed-out Slurm job, a killed process) or a fit that resumed from a checkpoint, from the ledger."""
    from tasks.runtime import read_ledger

    stage_of = {str(future.task_run_id): (item, stage) for item, chain in chains.items()
                for stage, future in chain.items()}
    notes: dict[str, list[str]] = {}
    for entry in read_ledger(config.ledger_dir):
        item, stage = stage_of.get(str(entry.get("task_run_id")), (None, None))
        if item is None or entry.get("status") != "completed":
            continue
        said = []
        if (entry.get("attempt") or 1) > 1:
            said.append(f"attempt {entry['attempt']}")
        if entry.get("resumed_from"):
            said.append(f"resumed from step {entry['resumed_from']}")
        if said:
            notes.setdefault(item, []).append(f"{stage} {', '.join(said)}")
    return {item: "; ".join(parts) for item, parts in sorted(notes.items())}


def progress_key(config: BenchmarkConfig) -> str:
    return artifact_key(config.name, "progress")


def pretrain_progress_key(config: BenchmarkConfig) -> str:
    return artifact_key(config.name, "pretrain-progress")
