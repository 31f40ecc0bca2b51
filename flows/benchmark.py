"""`dtu-benchmark`: prepare -> pretrain (or a given view mapper) -> per-(scan, n_views) fan-out on the
GPU workers -> Parquet tables -> report.

Every GPU task runs on the Dask cluster under `resources={"GPU": 1}`; results are cached on inputs +
code and persisted as JSON under RUN_DIR/prefect-results, and training resumes from checkpoints, so a
re-run after a crash redoes only unfinished items. A failing item never stops the others: the flow
finishes them, writes the tables and the report, and then fails naming the failed items.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.aggregate import aggregate_and_report
from flows.cluster import gpu_task_runner, use_configured_cluster
from flows.params import BenchmarkConfig, load_benchmark_config
from flows.prepare import prepare_dtu_flow
from flows.stages import (
    BenchmarkItemsFailed,
    benchmark_run_name,
    obtain_view_mapper,
    preflight,
    progress_key,
    run_items,
)


@flow(name="dtu-benchmark", flow_run_name=benchmark_run_name, task_runner=gpu_task_runner(),
      validate_parameters=True)
def dtu_benchmark(config: BenchmarkConfig = BenchmarkConfig()) -> dict:  # noqa: B008 - validated default
    """The full DTU novel-view-synthesis benchmark of ViewNeTI (see docs/pipeline.md)."""
    logger = get_run_logger()
    config = config.resolved()
    logger.info("GPU tasks run on %s", use_configured_cluster(config.execution.cluster))
    logger.info("%s: %d item(s) = scans %s x n_views %s, seeds %s, run dir %s", config.name, len(config.items),
                config.test_scans, config.n_views, config.fit.eval.seeds, config.run_dir)

    preflight(config)
    data = prepare_dtu_flow(config=config)
    logger.info("data: %d images of %d scans in %s", data["n_images"], len(data["scans"]), data["root"])
    mapper = obtain_view_mapper(config)
    outcome = run_items(config, config.items, mapper, progress_key(config))

    notes = [f"view mapper: `{mapper['checkpoint']}` (fingerprint {mapper['fingerprint']})",
             f"LPIPS backbone: {config.evaluation.lpips_weights}; protocols: {', '.join(config.evaluation.protocols)}"]
    if outcome.retried:
        notes.append("retried (a failed attempt or a lost worker, e.g. a cancelled or timed-out Slurm job): "
                     + "; ".join(f"{item} ({why})" for item, why in outcome.retried.items()))
    if config.evaluation.lpips_weights == "random":
        notes.append("LPIPS uses a RANDOM VGG backbone (no pretrained weights available): a machinery check, "
                     "not a perceptual metric")
    result = aggregate_and_report(config, outcome.records, outcome.failures, notes)
    result.update({"run_dir": str(config.run_dir), "items": sorted(outcome.records),
                   "failed": sorted(outcome.failures)})
    if outcome.failures:
        raise BenchmarkItemsFailed(outcome.failure_message(len(config.items), config.run_dir))
    logger.info("benchmark %s finished: report %s", config.name, result["report"])
    return result


def _config_file_run_name() -> str:
    from prefect.runtime import flow_run

    path = (flow_run.parameters or {}).get("config_file")
    try:
        return str(load_benchmark_config(path).name)
    except Exception:  # noqa: BLE001 - only a run name; the flow itself reports a bad file
        return "dtu-benchmark"


@flow(name="dtu-benchmark-with-view-mapper", flow_run_name=_config_file_run_name, validate_parameters=True)
def dtu_benchmark_with_view_mapper(config_file: str, view_mapper: str) -> dict:
    """The whole benchmark of a saved config (RUN_DIR/benchmark-config.json, written by pretrain-view-mapper)
    with the given view mapper: what the event viewneti.view-mapper.ready triggers. Everything the same
    mapper already produced is reused from the cache; only new work runs."""
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config_file {path} does not exist (the event's payload.config_file names the "
                                "benchmark-config.json that pretrain-view-mapper writes into the run directory)")
    config = load_benchmark_config(path, {"pretrained_view_mapper": view_mapper})
    get_run_logger().info("benchmark %s from %s with view mapper %s", config.name, path, view_mapper)
    return dtu_benchmark(config=config)
