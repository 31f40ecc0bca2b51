"""A flow run started by `viewneti-pipeline run` (not through a deployment) and then killed with SIGKILL
ends Crashed instead of RUNNING forever (issue 21, item 7): the pipeline installs the zombie automation on
a server that lacks it and makes its flow run send heartbeats. Real Prefect server, real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures.pipeline import small_benchmark_config

from flows.zombie_runs import HEARTBEAT_S, ZOMBIE_AFTER_S, ZOMBIE_AUTOMATION, ensure_zombie_automation

REPO = Path(__file__).resolve().parents[1]
NAME = "crash-marking-bench"


def _automations(client) -> list:
    return client.read_automations_by_name(ZOMBIE_AUTOMATION)


@pytest.mark.slow
def test_killed_pipeline_run_is_marked_crashed(prefect_server, synthetic_archives, tiny_model_dir, pretrained_run,
                                               tmp_path):
    import psutil
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:  # a server that lacks the automation
        for automation in _automations(client):
            client.delete_automation(automation.id)
    config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run, name=NAME)
    config["fit"]["optim"]["max_train_steps"] = 100_000  # still training when it is killed
    config_file = tmp_path / "bench.yaml"
    config_file.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "pipeline.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "viewneti_cli.pipeline", "run", "--config", str(config_file)],
                               cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    crashed_after, bound, state = None, ZOMBIE_AFTER_S + HEARTBEAT_S + 60, None
    try:
        with get_client(sync_client=True) as client:
            runs_filter = FlowRunFilter(name=FlowRunFilterName(any_=[NAME]))
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and process.poll() is None:
                runs = client.read_flow_runs(flow_run_filter=runs_filter)
                if runs and runs[0].state is not None and runs[0].state.is_running():
                    break
                time.sleep(1)
            assert runs and runs[0].state.is_running(), (tmp_path / "pipeline.log").read_text()[-3000:]
            run_id = runs[0].id
            assert len(_automations(client)) == 1  # installed by the pipeline as it started the run
            time.sleep(5)  # its first heartbeat is sent as it starts running
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            os.killpg(process.pid, signal.SIGKILL)
            for member in family:  # Dask workers outside the process group, if any
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
            killed_at = time.monotonic()
            while time.monotonic() < killed_at + bound:
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    break
                time.sleep(2)
            crashed_after = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()
    output = (tmp_path / "pipeline.log").read_text()
    assert f"a killed run is marked Crashed after {ZOMBIE_AFTER_S} s without a heartbeat" in output, output[-3000:]
    assert state is not None and state.is_crashed(), f"{state} {crashed_after:.0f} s after kill -9 (bound {bound} s)"
    assert "No heartbeat" in (state.message or ""), state.message
    print(f"killed pipeline run Crashed {crashed_after:.0f} s after kill -9 (bound {bound} s)")


def test_installing_the_automation_is_idempotent(prefect_server):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for automation in _automations(client):
            client.delete_automation(automation.id)
    first, created = ensure_zombie_automation()
    again, created_again = ensure_zombie_automation()
    assert created and not created_again and again == first
    with get_client(sync_client=True) as client:
        assert [str(a.id) for a in _automations(client)] == [first]
    replaced, created = ensure_zombie_automation(replace=True)  # the deploy step: matches the code again
    assert created and replaced != first
    with get_client(sync_client=True) as client:
        assert [str(a.id) for a in _automations(client)] == [replaced]
