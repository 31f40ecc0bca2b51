"""`aggregate`: rebuild the Parquet tables, the report and its artifacts from whatever items exist."""

from __future__ import annotations

import json

from prefect import flow, get_run_logger

from flows.params import BenchmarkConfig
from flows.stages import stage_run_name
from tasks.evaluation import ITEM_RECORD
from tasks.reporting import aggregate_task, publish_report


def collect_items(config: BenchmarkConfig) -> dict[str, dict]:
    """Item records (written by the evaluate task next to each item's metrics.parquet)."""
    records = {}
    for path in sorted(config.items_dir.glob(f"*/{ITEM_RECORD}")):
        record = json.loads(path.read_text())
        if (path.parent / "metrics.parquet").is_file():
            records[record["item"]] = record
    return records


def aggregate_and_report(config: BenchmarkConfig, records: dict[str, dict], failures: dict[str, str],
                         notes: list[str]) -> dict:
    aggregate = None
    if records:
        aggregate = aggregate_task(
            [r["metrics"] for _, r in sorted(records.items())], str(config.report_dir), config.name,
            str(config.ledger_dir))
    report = publish_report(config.name, config.name, config.run_dir, aggregate, records, failures, notes)
    return {"aggregate": aggregate, "report": str(report)}


@flow(name="aggregate", flow_run_name=stage_run_name("aggregate"), validate_parameters=True)
def aggregate_flow(config: BenchmarkConfig = BenchmarkConfig()) -> dict:  # noqa: B008 - validated default
    config = config.resolved()
    records = collect_items(config)
    missing = [f"scan{s}-{n}view" for s, n in config.items if f"scan{s}-{n}view" not in records]
    notes = [f"items without results yet: {', '.join(missing)}"] if missing else []
    get_run_logger().info("aggregating %d item(s) of %s", len(records), config.name)
    if not records:
        raise ValueError(f"no finished items under {config.items_dir}: nothing to aggregate")
    return aggregate_and_report(config, records, {}, notes)
