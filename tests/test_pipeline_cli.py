"""`viewneti-pipeline` commands as a user runs them: `config show`, `server start|status|stop`,
`demo-inputs`, and `run` on an external Dask cluster given through VIEWNETI_DASK_ADDRESS."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fixtures.pipeline import small_benchmark_config

from flows.local_services import PrefectServer, free_port, port_in_use
from flows.params import BenchmarkConfig, load_benchmark_config
from tasks.runtime import read_ledger
from viewneti_cli.pipeline import main as pipeline_main

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINT = Path(sys.executable).with_name("viewneti-pipeline")  # the installed console script


def pipeline(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    command = [str(ENTRY_POINT)] if ENTRY_POINT.is_file() else [sys.executable, "-m", "viewneti_cli.pipeline"]
    return subprocess.run([*command, *args], cwd=cwd, env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
                          capture_output=True, text=True, timeout=timeout)


# ---- config show (no server, no cluster) ----------------------------------------------------------------


def test_config_show_prints_the_validated_configuration(capsys):
    demo = REPO / "configs" / "demo.yaml"
    assert pipeline_main(["config", "show", "--config", str(demo), "--fit.optim.max_train_steps", "7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_benchmark_config(demo, ["--fit.optim.max_train_steps", "7"])
    assert BenchmarkConfig.model_validate(shown) == expected  # what is printed is what would run
    assert shown["fit"]["optim"]["max_train_steps"] == 7  # the override
    assert shown["fit"]["optim"]["adam_beta2"] == 0.999  # a default the file does not set
    assert pipeline_main(["config", "show"]) == 0  # no file: the flow defaults (dtu-benchmark/full)
    assert BenchmarkConfig.model_validate(yaml.safe_load(capsys.readouterr().out)) == BenchmarkConfig()


def test_config_show_names_a_bad_key_and_a_missing_file(tmp_path, capsys):
    assert pipeline_main(["config", "show", "--fit.optim.max_train_stepz", "7"]) == 2
    assert "fit.optim.max_train_stepz: unknown key" in capsys.readouterr().out
    assert pipeline_main(["config", "show", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().out


# ---- server start | status | stop -------------------------------------------------------------------------


def _process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie that its new parent has not reaped yet counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.slow
def test_server_start_status_stop(tmp_path):
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # a fresh shell
    try:
        for _attempt in range(3):  # the free port may be taken before the server binds it: try another
            port = free_port()
            started = pipeline("server", "start", "--home", str(home), "--port", str(port), env=env, timeout=300)
            if started.returncode == 0 or not port_in_use(port):
                break
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"Prefect UI: http://127.0.0.1:{port}" in started.stdout
        assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in started.stdout
        server = PrefectServer.running(home)
        assert server is not None and server.port == port

        status = pipeline("server", "status", "--home", str(home), env=env, timeout=60)
        assert status.returncode == 0 and f"running: http://127.0.0.1:{port} (pid {server.pid})" in status.stdout
        again = pipeline("server", "start", "--home", str(home), env=env, timeout=60)  # reuses, starts nothing
        assert again.returncode == 0 and PrefectServer.running(home).pid == server.pid

        stopped = pipeline("server", "stop", "--home", str(home), env=env, timeout=60)
        assert stopped.returncode == 0 and "stopped the Prefect server" in stopped.stdout
        assert _process_gone(server.pid)
        assert not port_in_use(port)
        status = pipeline("server", "status", "--home", str(home), env=env, timeout=60)
        assert status.returncode == 1 and f"no server running for {home}" in status.stdout
    finally:
        leftover = PrefectServer.running(home)
        if leftover is not None:
            leftover.stop()


# ---- demo-inputs --------------------------------------------------------------------------------------------


def _serve_demo_inputs(out: Path) -> tuple[subprocess.Popen, int]:
    command = [str(ENTRY_POINT)] if ENTRY_POINT.is_file() else [sys.executable, "-m", "viewneti_cli.pipeline"]
    process = subprocess.Popen([*command, "demo-inputs", "--out", str(out), "--archive-port", "0"], cwd=out.parent,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stdout:  # blocks until the command prints; it serves forever afterwards
        seen.append(line)
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return process, int(match.group(1))
        assert time.monotonic() < deadline, "".join(seen)
    process.wait(timeout=10)
    raise AssertionError(f"demo-inputs exited with {process.returncode} before serving:\n" + "".join(seen))


def _interrupt(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()


@pytest.mark.slow
def test_demo_inputs_builds_once_and_serves_the_archives(tmp_path):

    out = tmp_path / "demo"
    process, port = _serve_demo_inputs(out)
    try:
        archives = out / "synthetic" / "archives"
        for name in ("Rectified.zip", "SampleSet.zip", "idrmasks.zip"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=30) as response:
                assert response.read() == (archives / name).read_bytes(), name
    finally:
        assert _interrupt(process) == 0  # Ctrl-C stops serving cleanly
    assert not (out / "model-tiny").exists()  # the demo runs on the shipped mini world
    built = {p.name: p.stat().st_mtime_ns for p in archives.iterdir()}

    process, _ = _serve_demo_inputs(out)  # a second start reuses what is there
    assert _interrupt(process) == 0
    assert {p.name: p.stat().st_mtime_ns for p in archives.iterdir()} == built


# ---- run, on an external Dask cluster ----------------------------------------------------------------------


@pytest.mark.slow
def test_run_on_an_external_dask_cluster(prefect_server, synthetic_archives, tiny_model_dir, pretrained_run,
                                         tmp_path):
    """`viewneti-pipeline run --config FILE` with VIEWNETI_DASK_ADDRESS: the GPU tasks run on the given
    cluster's workers (here a real LocalCluster whose workers declare GPU=1, as docker/compose.yaml's do)."""
    from distributed import Client, LocalCluster

    config = small_benchmark_config(tmp_path / "run", synthetic_archives, tiny_model_dir, pretrained_run,
                                    name="external-bench")
    config["fit"]["optim"]["max_train_steps"] = 5  # overridden on the command line below
    config_file = tmp_path / "bench.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # Workers inherit this process's environment: the test Prefect server, no visible CUDA device.
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1}, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        external = set(client.scheduler_info(n_workers=-1)["workers"])
        env = {**os.environ, "VIEWNETI_DASK_ADDRESS": cluster.scheduler_address}
        done = pipeline("run", "--config", str(config_file), "--fit.optim.max_train_steps", "2", env=env)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    entries = read_ledger(tmp_path / "run" / "ledger")
    gpu_tasks = [e for e in entries if e["task"] in ("fit", "infer", "evaluate")]
    assert sorted(e["task"] for e in gpu_tasks) == ["evaluate", "fit", "infer"]
    assert {e["worker"] for e in gpu_tasks} <= external, "GPU tasks must run on the external cluster's workers"
    assert next(e for e in gpu_tasks if e["task"] == "fit")["steps"] == 2  # the command-line override won
    report = tmp_path / "run" / "report"
    assert pd.read_parquet(report / "metrics_all.parquet")["run"].unique().tolist() == ["scan21-1view"]
    assert (report / "report.md").is_file()
