"""Pipeline flows and tasks that the benchmark tests do not reach: a `per-scan` run to completion, the
`aggregate` flow, and a fit that starts over because its saved configuration differs. Real Prefect
server, real Dask clusters, tiny model (see tests/fixtures/pipeline.py)."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
import yaml
from fixtures.pipeline import small_benchmark_config
from fixtures.runs import make_train_config

from tasks.runtime import read_ledger

pytestmark = pytest.mark.slow


def test_per_scan_runs_to_completion_and_aggregate_reports_it(prefect_server, synthetic_archives,
                                                               tiny_model_dir, pretrained_run, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.aggregate import aggregate_flow
    from flows.per_scan import per_scan_flow

    config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run,
                                    name="per-scan-bench", test_scans=[21, 114])
    record = per_scan_flow(scan=114, n_views=1, config=config)
    item = tmp_path / "run" / "items" / "scan114-1view"
    assert record["item"] == "scan114-1view" and record["metrics"] == str(item / "metrics.parquet")
    rows = pd.read_parquet(item / "metrics.parquet")
    assert set(rows["run"]) == {"scan114-1view"} and set(rows["scan"]) == {114}
    assert set(rows["cam"]) == {25, 1} and set(rows["protocol"]) == {"viewneti", "regnerf"}
    fits = [e for e in read_ledger(tmp_path / "run" / "ledger") if e["task"] == "fit"]
    assert [(e["item"], e["status"], e["steps"]) for e in fits] == [("scan114-1view", "completed", 2)]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["per-scan-bench-scan114-1view-report"])))
    assert artifacts and "scan114-1view" in artifacts[0].data

    # `aggregate` builds the tables and the report from what exists, and names what is missing.
    result = aggregate_flow(config=config)
    report = tmp_path / "run" / "report"
    assert result["report"] == str(report / "report.md")
    assert pd.read_parquet(report / "metrics_all.parquet")["run"].unique().tolist() == ["scan114-1view"]
    assert set(pd.read_parquet(report / "summary.parquet")["n_views"]) == {1}
    assert "items without results yet: scan21-1view" in (report / "report.md").read_text()


def test_aggregate_without_finished_items_fails_clearly(prefect_server, synthetic_archives, tiny_model_dir,
                                                        pretrained_run, tmp_path):
    from flows.aggregate import aggregate_flow

    config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run)
    state = aggregate_flow(config=config, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ValueError)
    assert str(error) == f"no finished items under {tmp_path / 'run' / 'items'}: nothing to aggregate"
    assert not (tmp_path / "run" / "report").exists()


def test_fit_resumes_a_compatible_run_and_starts_over_a_changed_one(prefect_server, synthetic_dtu_root,
                                                                     tiny_model_dir, pretrained_run, tmp_path):
    """The fit task's rule (tasks/training.py): continue from the last checkpoint when only keys that
    may change between attempts differ (here max_train_steps), start over when anything else does
    (here the learning rate), since the checkpoints then belong to another run."""
    from prefect import flow
    from prefect.cache_policies import NO_CACHE

    from tasks.training import fit_task
    from viewneti_core.config import ViewNetiConfig

    ledger = tmp_path / "ledger"

    @flow(name="fit-once")
    def fit_once(config_json: dict) -> dict:
        return fit_task.with_options(cache_policy=NO_CACHE, persist_result=False, retries=0)(
            ViewNetiConfig.model_validate(config_json), item="scan114-3view", view_mapper_fingerprint="test",
            ledger_dir=str(ledger))

    def config(steps: int, lr: float) -> dict:
        return make_train_config(synthetic_dtu_root, tiny_model_dir, tmp_path / "items", 5, "scan114-3view",
                                 model={"pretrained_view_mapper": str(pretrained_run)}, log={"save_steps": 1},
                                 optim={"max_train_steps": steps, "learning_rate": lr}).model_dump(mode="json")

    run_dir = tmp_path / "items" / "scan114-3view"

    def metrics() -> list[dict]:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert fit_once(config(2, 1e-2))["step"] == 2
    assert fit_once(config(3, 1e-2))["step"] == 3  # more steps: the same run, continued
    assert fit_once(config(3, 0.5))["step"] == 3  # another learning rate: a new run
    fits = [e for e in read_ledger(ledger) if e["task"] == "fit"]
    assert [(e["status"], e.get("resumed_from"), e["steps"]) for e in fits] == [
        ("completed", None, 2), ("completed", 2, 3), ("completed", None, 3)]
    # Nothing of the first run is left to be mistaken for the new one.
    assert [(r["step"], r["lr"]) for r in metrics()] == [(1, 0.5), (2, 0.5), (3, 0.5)]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["learning_rate"] == 0.5
    for checkpoint in sorted((run_dir / "checkpoints").glob("checkpoint-*")):
        info = json.loads((checkpoint / "checkpoint.json").read_text())
        assert info["config"]["optim"]["learning_rate"] == 0.5, checkpoint


def test_gpu_slots_that_no_flow_run_holds_are_released(prefect_server, listen_to):
    """A server restart loses Prefect's slot leases (kept in the server's memory): slots held by runs killed
    before it stay occupied for ever, and every later GPU task waits. `ensure_gpu_limit` (called by
    `viewneti-pipeline run|demo` before their run) releases them when no flow run is pending, running, paused
    or cancelling, and keeps them while one is."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.concurrency.sync import concurrency
    from prefect.states import Cancelled, Completed, Running

    from flows.cluster import ensure_gpu_limit, live_flow_runs_filter
    from tasks.runtime import GPU_LIMIT

    @flow
    def holder():  # never run: its flow run only stands for a live run on the server
        pass

    with get_client(sync_client=True) as client:
        for leftover in client.read_flow_runs(flow_run_filter=live_flow_runs_filter()):  # earlier tests' killed runs, if any
            client.set_flow_run_state(leftover.id, Cancelled(), force=True)
        assert ensure_gpu_limit(2) == 2  # created
        # the state a restart leaves: both slots occupied, no lease on the new server
        client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=2))
        running = client.create_flow_run(holder, state=Running())
        assert ensure_gpu_limit(1) == 2  # an existing limit keeps its operator's slots...
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 2  # ...and a live run's
        client.set_flow_run_state(running.id, Completed(), force=True)
        with listen_to("flows.cluster", logging.WARNING) as said:
            assert ensure_gpu_limit(1) == 2
        assert client.read_global_concurrency_limit_by_name(GPU_LIMIT).active_slots == 0
        assert any("released 2 slot(s) of viewneti-gpu" in r.getMessage() for r in said.records)  # said, why
    with concurrency(GPU_LIMIT, occupy=2, timeout_seconds=30):  # both slots can be taken again
        pass
