"""`dtu-benchmark`: prepare -> pretrain (or a given view mapper) -> per-(scan, n_views) fan-out on the
GPU workers -> Parquet tables -> report.

Every GPU task runs on the Dask cluster under `resources={"GPU": 1}`; results are cached on inputs +
code and persisted as JSON under RUN_DIR/prefect-results, and training resumes from checkpoints, so a
re-run after a crash redoes only unfinished items. A failing item never stops the others: the flow
finishes them, writes the tables and the report, and then fails naming the failed items.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.aggregate import aggregate_and_report
from flows.cluster import gpu_task_runner, use_configured_cluster
from flows.common import (
    BenchmarkItemsFailed,
    benchmark_run_name,
    obtain_view_mapper,
    preflight,
    progress_key,
    run_items,
)
from flows.params import BenchmarkConfig
from flows.prepare import prepare_dtu_flow


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
