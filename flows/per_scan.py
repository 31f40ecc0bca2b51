"""`per-scan`: mode-5 fitting of one (scan, n_views) -> inference over seeds -> metric rows.

Runnable on its own (`prefect deployment run 'per-scan/per-scan' --param scan=114 --param n_views=1`)
or triggered when a view mapper becomes ready. It computes exactly what the benchmark computes for
that item (same directories, same cache keys), so a later benchmark run reuses it.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.cluster import gpu_task_runner, use_configured_cluster
from flows.params import BenchmarkConfig, NViews, item_name
from flows.stages import (
    BenchmarkItemsFailed,
    existing_view_mapper,
    per_scan_run_name,
    preflight,
    prepare_data,
    run_items,
)
from tasks.reporting import artifact_key, report_markdown


@flow(name="per-scan", flow_run_name=per_scan_run_name, task_runner=gpu_task_runner(), validate_parameters=True)
def per_scan_flow(
    scan: int = 114,
    n_views: NViews = 1,
    config: BenchmarkConfig = BenchmarkConfig(),  # noqa: B008 - validated default
    view_mapper: str | None = None,
) -> dict:
    """One benchmark item. `view_mapper` (or config.pretrained_view_mapper) overrides the benchmark's own
    pretraining run, which must otherwise have a checkpoint."""
    logger = get_run_logger()
    test_scans = sorted(set(config.test_scans) | {scan})
    config = BenchmarkConfig.model_validate(config.model_dump() | {"test_scans": test_scans}).resolved()
    logger.info("GPU tasks run on %s", use_configured_cluster(config.execution.cluster))
    preflight(config, pretraining=False, fitting=True)
    prepare_data(config)
    mapper = existing_view_mapper(config, view_mapper)
    item = item_name(scan, n_views)
    outcome = run_items(config, [(scan, n_views)], mapper, artifact_key(config.name, item, "progress"))
    create_markdown_artifact(
        markdown=report_markdown(f"{config.name} / {item}", config.run_dir, None, outcome.records, outcome.failures,
                                 [f"view mapper: `{mapper['checkpoint']}`"]),
        key=artifact_key(config.name, item, "report"), description=f"{item} of {config.name}")
    if outcome.failures:
        raise BenchmarkItemsFailed(outcome.failure_message(1, config.run_dir))
    logger.info("%s done: %s", item, outcome.records[item]["metrics"])
    return outcome.records[item]
