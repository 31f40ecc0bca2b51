"""`prepare-dtu`: download (resumable, checksummed), extract only the needed scans, validate, manifest."""

from __future__ import annotations

from prefect import flow

from flows.params import BenchmarkConfig
from flows.stages import prepare_data, stage_run_name


@flow(name="prepare-dtu", flow_run_name=stage_run_name("prepare"), validate_parameters=True)
def prepare_dtu_flow(config: BenchmarkConfig = BenchmarkConfig()) -> dict:  # noqa: B008 - validated default
    """Prepare every DTU scan the benchmark `config` needs (test scans, plus pretraining scans unless a
    pretrained view mapper is given) into `config.data.root` (default RUN_DIR/data/dtu)."""
    return prepare_data(config.resolved())
