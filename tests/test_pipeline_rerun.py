"""`viewneti-pipeline run` as a user runs it from a fresh shell: no PREFECT_API_URL, so it starts its own
local Prefect server. The run is then killed with SIGKILL as a whole (the CLI and its Dask cluster: a
closed laptop, an OOM kill), and the same command run again finishes the rest without redoing what had
finished and without being blocked by the dead run's lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from fixtures.pipeline import small_benchmark_config

from flows.local_services import PrefectServer, free_port
from flows.params import BenchmarkConfig
from tasks.runtime import CODE_VERSION_ENV, read_ledger

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(sys.executable).with_name("viewneti-pipeline")  # the installed console script
STAGES = ("fit", "infer", "evaluate")


@pytest.mark.timeout(1800)  # two benchmark runs and a server start in one test
def test_run_starts_its_own_server_and_a_rerun_after_kill_9_finishes_the_rest(synthetic_archives, tiny_model_dir,
                                                                               pretrained_run, tmp_path):
    config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run,
                                    n_views=[1, 3])
    config_file = tmp_path / "bench.json"
    config_file.write_text(json.dumps(config))
    ledger = BenchmarkConfig.model_validate(config).ledger_dir
    home, port = tmp_path / "prefect-home", free_port()
    # a fresh shell: no Prefect settings at all; one Dask worker, so the two items run one after the other
    # The code part of the cache keys is pinned: by default it hashes the sources, and an edit of them
    # between the two runs (a developer at work) would rightly invalidate everything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
        "PYTHONUNBUFFERED": "1", "VIEWNETI_DASK_WORKERS": "1", CODE_VERSION_ENV: f"test-{time.time()}"}
    command = [str(ENTRY_POINT), "run", "--config", str(config_file), "--home", str(home), "--port", str(port)]
    try:
        with open(tmp_path / "first.log", "w") as log:
            first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own process group: the CLI and its cluster
            # Kill once Prefect reports an item's last stage Completed (its result is persisted by then; the
            # ledger entry alone comes a moment earlier, and a kill in between re-runs that stage).
            deadline, done_before = time.monotonic() + 480, []
            while time.monotonic() < deadline and first.poll() is None:
                if re.search(r"Task run 'evaluate-[^']*' - Finished in state Completed",
                             (tmp_path / "first.log").read_text()):
                    done_before = [(e["item"], e["task"]) for e in read_ledger(ledger) if e["status"] == "completed"]
                    break
                time.sleep(0.2)
            assert first.poll() is None, "the run ended before one item was done: nothing to kill\n" + \
                (tmp_path / "first.log").read_text()[-3000:]
            assert any(task == "evaluate" for _, task in done_before), (tmp_path / "first.log").read_text()[-3000:]
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=60)
        text = (tmp_path / "first.log").read_text()
        assert "starting (or reusing) the local Prefect server" in text and f"127.0.0.1:{port}" in text, text[-3000:]
        assert first.returncode == -signal.SIGKILL
        finished_items = {item for item, task in done_before if task == "evaluate"}
        assert len(finished_items) == 1, done_before  # one item done, the other still to do

        with open(tmp_path / "again.log", "w") as log:
            again = subprocess.run(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900)
        assert again.returncode == 0, (tmp_path / "again.log").read_text()[-3000:]
    finally:
        server = PrefectServer.running(home)
        if server is not None:
            server.stop()
    entries = read_ledger(ledger)
    completed = Counter((e["item"], e["task"]) for e in entries if e["status"] == "completed" and e["task"] in STAGES)
    items = ("scan21-1view", "scan21-3view")
    # every stage of every item completed exactly once: what had finished before the kill was not redone
    assert completed == {(item, stage): 1 for item in items for stage in STAGES}, completed
    rows = pd.read_parquet(tmp_path / "run" / "report" / "metrics_all.parquet")
    assert sorted(rows["run"].unique()) == list(items)
