"""`execution.cluster`: a cluster from the benchmark configuration, checked when the config is read.

The Slurm recipe (configs/clusters/slurm.yaml) is rendered into the job script dask-jobqueue would
submit -- that needs no Slurm -- through the same options the flows hand to prefect-dask's runner.
Starting clusters inside flow runs is tested in test_pipeline.py (real Prefect server).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from flows.cluster import runner_options
from flows.params import BenchmarkConfig, load_benchmark_config, validate_benchmark
from viewneti_core.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "configs" / "clusters" / "slurm.yaml"


def test_local_is_the_default_and_round_trips():
    config = BenchmarkConfig()
    assert config.execution.cluster.is_local
    dumped = config.model_dump(mode="json")["execution"]["cluster"]
    assert dumped == "local"
    assert validate_benchmark({"execution": {"cluster": "local"}}) == config
    address = validate_benchmark({"execution": {"cluster": {"address": "tcp://scheduler:8786"}}})
    assert runner_options(address.execution.cluster) == {"address": "tcp://scheduler:8786"}
    assert BenchmarkConfig.model_validate(address.model_dump()) == address


def test_slurm_recipe_renders_a_job_script_with_one_gpu_and_a_gpu_slot():
    from prefect_dask import DaskTaskRunner

    config = load_benchmark_config(REPO / "configs" / "dtu_benchmark.yaml", yaml.safe_load(SLURM.read_text()))
    cluster = config.execution.cluster
    assert cluster.class_ == "dask_jobqueue.SLURMCluster"
    assert BenchmarkConfig.model_validate(config.model_dump()) == config  # `class` survives a dump
    runner = DaskTaskRunner(**runner_options(cluster))
    assert runner.adapt_kwargs == {"minimum": 0, "maximum": 8}
    with runner.resolved_cluster_class(**runner.cluster_kwargs) as slurm:  # what prefect-dask instantiates
        script = slurm.job_script()
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --gres=gpu:1" in directives
    assert "#SBATCH -p gpu" in directives
    command = script.strip().splitlines()[-1]
    assert "distributed.cli.dask_worker" in command and "--resources GPU=1" in command
    assert "--nthreads 8" in command  # one worker process per job, with the job's 8 cores


@pytest.mark.parametrize(("cluster", "message"), [
    ({"class": "dask_jobqueu.SLURMCluster"},
     "execution.cluster.class: cannot import 'dask_jobqueu'"),
    ({"class": "dask_kubernetes.operator.KubeCluster"},
     "pip install 'viewneti[kubernetes]'"),
    ({"class": "distributed.NoSuchCluster"},
     "execution.cluster.class: module 'distributed' has no cluster class 'NoSuchCluster'"),
    ({"class": "dask_jobqueue.SLURMCluster", "kwargs": {"cores": 8, "gress": "gpu:1"}},
     "execution.cluster.kwargs: kwargs ['gress'] are not arguments of dask_jobqueue.SLURMCluster"),
    ({"class": "distributed.LocalCluster", "kwargs": {"asynchronous": True}},
     "execution.cluster.kwargs: 'asynchronous' is managed by Prefect"),
    ({"class": "distributed.LocalCluster", "adapt": {"minimum": 4, "maximum": 2}},
     "execution.cluster.adapt: minimum (4) is above maximum (2)"),
    ({"address": "scheduler:8786"}, "execution.cluster.address: expected a Dask scheduler address"),
    ({"address": "tcp://a:1", "class": "distributed.LocalCluster"}, "give either address"),
    ("slurm", "execution.cluster: use 'local'"),
])
def test_bad_cluster_settings_are_rejected_when_the_config_is_read(cluster, message, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_kubernetes", None)  # not installed, whatever this venv holds
    with pytest.raises(ConfigError) as info:
        validate_benchmark({"execution": {"cluster": cluster}})
    assert message in str(info.value)


def test_adapt_asks_for_a_worker_per_gpu_task_that_could_run():
    """Dask's adaptive target counts 0.5 s per task of unknown duration and divides by threads per worker:
    it asks for 1 worker for 3 GPU tasks, with no worker yet and with one 8-thread worker (which runs them
    one at a time: GPU=1). `execution.cluster.adapt` uses GpuAdaptive, which asks for 3."""
    import time

    import dask
    from distributed import Client, LocalCluster

    from flows.cluster import gpu_workers_wanted

    with LocalCluster(n_workers=0, threads_per_worker=8, resources={"GPU": 1}, processes=False,  # inproc: no sockets
                      dashboard_address=None) as cluster, Client(cluster) as client:
        scheduler = cluster.scheduler
        with dask.annotate(resources={"GPU": 1}):
            futures = [client.submit(time.sleep, 3, pure=False) for _ in range(3)]
        deadline = time.monotonic() + 30
        while len(scheduler.unrunnable) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (scheduler.adaptive_target(), gpu_workers_wanted(scheduler)) == (1, 3)
        cluster.scale(1)
        client.wait_for_workers(1, timeout=30)
        while scheduler.unrunnable and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (scheduler.adaptive_target(), gpu_workers_wanted(scheduler)) == (1, 3)
        client.gather(futures)
        assert gpu_workers_wanted(scheduler) == 0
