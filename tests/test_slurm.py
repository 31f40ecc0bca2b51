"""The DTU benchmark on a real Slurm: the session's private cluster (tests/fixtures/slurm.py: munged,
slurmctld, slurmd on 127.0.0.1), a real Prefect server, and `execution.cluster` set to dask-jobqueue's
SLURMCluster, whose Dask workers run as Slurm jobs. Skipped, saying why, without Slurm's binaries or root.

The benchmark is the mini world's (configs/demo.yaml: its base model and pretrained view mapper) cut to
seconds: held-out scans 21 and 114 with 1 view, 3 fitting steps, 2 rendered views, 1 seed.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml
from fixtures.prefect_server import prefect_env

from flows.params import BenchmarkConfig
from tasks.runtime import CODE_VERSION_ENV, read_ledger

REPO = Path(__file__).resolve().parents[1]
GPU_TASKS = {"fit", "infer", "evaluate"}
SCANS = [21, 114]
ITEMS = ["scan114-1view", "scan21-1view"]
JOB_MEMORY = "6GB"


# ---- inputs and configurations -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mini_world_sources(tmp_path_factory) -> list[str]:
    """The mini world's held-out scans as release-shaped zip archives (as `viewneti-pipeline demo` writes them)."""
    from viewneti_core.data.synthetic import make_synthetic_dtu, write_archives
    from viewneti_core.mini_world.world import SIZE, WORLD_SEED

    root = tmp_path_factory.mktemp("slurm-mini-world")
    tree = make_synthetic_dtu(root / "tree", SCANS, size=SIZE, seed=WORLD_SEED, lights=[3], progress=False)
    archives = write_archives(tree, root / "archives")
    return [str(archives[name]) for name in sorted(archives)]


def mini_world_config(run_dir: Path, sources: list[str], **top) -> dict:
    """configs/demo.yaml (mini world, its pretrained view mapper) with 2 items and tiny fits."""
    from viewneti_core.config import deep_merge

    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    small = {
        "name": "slurm-bench", "run_dir": str(run_dir), "test_scans": SCANS, "n_views": [1], "views": [25, 1],
        "data": {"sources": sources},
        "fit": {"run": {"device": "cpu"}, "log": {"save_steps": 1},
                "optim": {"max_train_steps": 3, "train_batch_size": 1},
                "eval": {"num_denoising_steps": 2, "seeds": [0], "eval_batch_size": 4}},
        "evaluation": {"device": "cpu", "eval_size": [24, 32]},
        "execution": {"retries": 1, "retry_delay_s": 0},
    }
    return deep_merge(deep_merge(demo, small), top)


def slurm_settings(slurm, log_dir: Path, maximum: int = 2, **kwargs) -> dict:
    """`execution.cluster` for the private cluster: one core per job, everything on 127.0.0.1 (`interface: lo`
    puts the scheduler and the workers on the loopback; both dashboards are bound there too)."""
    return {"class": "dask_jobqueue.SLURMCluster",
            "kwargs": {"queue": slurm.partition, "cores": 1, "processes": 1, "memory": JOB_MEMORY,
                       "walltime": "00:30:00", "interface": "lo",
                       "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
                       "worker_extra_args": ["--resources", "GPU=1", "--dashboard-address", "127.0.0.1:0"],
                       "job_script_prologue": ["export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"],
                       "log_directory": str(log_dir), **kwargs},
            "adapt": {"minimum": 0, "maximum": maximum}}


def flow_logs(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    return [log.message for log in logs]


def gpu_entries(config: dict) -> list[dict]:
    return [e for e in read_ledger(BenchmarkConfig.model_validate(config).ledger_dir) if e["task"] in GPU_TASKS]


class ListenWatch:
    """Every listening TCP socket of this process and of the Python processes of Slurm jobs, sampled while
    the block runs: where the Dask scheduler, nannies, workers and dashboards listened."""

    def __init__(self, period_s: float = 0.3):
        self.period_s, self.seen, self._stop = period_s, set(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _job_python(self, process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "python" in process.name() and "SLURM_JOB_ID" in process.environ()
        return False

    def _watch(self) -> None:
        me = psutil.Process().pid
        while not self._stop.is_set():
            for conn in psutil.net_connections(kind="tcp"):
                if conn.status != psutil.CONN_LISTEN or conn.pid is None:
                    continue
                with contextlib.suppress(psutil.Error):
                    if conn.pid == me or self._job_python(psutil.Process(conn.pid)):
                        self.seen.add(("test" if conn.pid == me else "job", conn.pid, conn.laddr.ip, conn.laddr.port))
            self._stop.wait(self.period_s)

    def __enter__(self) -> ListenWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


# ---- the benchmark on Slurm, next to the same benchmark on a local cluster -------------------------------------


@pytest.fixture(scope="module")
def slurm_and_local(prefect_server, slurm_cluster, mini_world_sources, tmp_path_factory):
    from flows.benchmark import dtu_benchmark

    base = tmp_path_factory.mktemp("slurm-bench")
    local = mini_world_config(base / "local", mini_world_sources)
    on_slurm = mini_world_config(base / "slurm", mini_world_sources)
    # each job gets the CPUs a worker of the local cluster gets (2 workers share the machine)
    on_slurm["execution"]["cluster"] = slurm_settings(slurm_cluster, base / "slurm-logs",
                                                      cores=max(1, slurm_cluster.cpus // 2))
    jobs_before = {j["JobId"] for j in slurm_cluster.finished_jobs()}
    with prefect_env(prefect_server), pytest.MonkeyPatch.context() as env:
        env.setenv(CODE_VERSION_ENV, f"test-{time.time()}")
        t0 = time.monotonic()
        local_state = dtu_benchmark(config=local, return_state=True)
        local_s = time.monotonic() - t0
        with ListenWatch() as listening:
            t0 = time.monotonic()
            slurm_state = dtu_benchmark(config=on_slurm, return_state=True)
            slurm_s = time.monotonic() - t0
        logs = {"local": flow_logs(local_state), "slurm": flow_logs(slurm_state)}
    print(f"mini-world benchmark, 2 items: local cluster {local_s:.0f} s, Slurm {slurm_s:.0f} s")
    jobs = [j for j in slurm_cluster.finished_jobs() if j["JobId"] not in jobs_before]
    return {"local": local, "slurm": on_slurm, "states": {"local": local_state, "slurm": slurm_state},
            "logs": logs, "listening": listening.seen, "jobs": jobs, "log_dir": base / "slurm-logs"}


@pytest.mark.slow
def test_benchmark_on_slurm_matches_a_local_cluster_run(slurm_and_local):
    for where, state in slurm_and_local["states"].items():
        assert state.is_completed(), f"{where}: {state.message}"
    tables = {}
    for where in ("local", "slurm"):
        report = Path(slurm_and_local[where]["run_dir"]) / "report"
        tables[where] = pd.read_parquet(report / "metrics_all.parquet")
        assert (report / "summary.parquet").is_file() and (report / "report.md").is_file()
    local, slurm = tables["local"], tables["slurm"]
    assert sorted(slurm["run"].unique()) == ITEMS
    keys = [c for c in local.columns if local[c].dtype == object or c in ("view", "seed", "scan", "n_views")]
    numbers = [c for c in local.columns if c not in keys and pd.api.types.is_float_dtype(local[c])]
    assert numbers, local.columns
    local, slurm = (t.sort_values(keys).reset_index(drop=True) for t in (local, slurm))
    pd.testing.assert_frame_equal(local[keys], slurm[keys])
    # the same computation in other processes with the same thread count (the local cluster's workers get
    # OMP_NUM_THREADS = CPUs / 2; each job gets that many cores, passed on by job_script_prologue)
    diff = (local[numbers] - slurm[numbers]).abs().max()
    print("largest differences, local vs Slurm:", diff.to_dict())
    pd.testing.assert_frame_equal(local[numbers], slurm[numbers], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_work_ran_in_slurm_jobs_and_everything_listened_on_localhost(slurm_and_local, slurm_cluster):
    entries = gpu_entries(slurm_and_local["slurm"])
    assert sorted({(e["item"], e["task"]) for e in entries}) == sorted((i, t) for i in ITEMS for t in GPU_TASKS)
    used = {e["slurm_job_id"] for e in entries}  # every GPU task ran in a Slurm job's worker
    jobs = {j["JobId"]: j for j in slurm_and_local["jobs"]}  # this run's jobs, as slurmctld recorded them
    assert used <= set(jobs), (used, jobs)
    for job in jobs.values():
        assert job["Partition"] == slurm_cluster.partition and job["NodeList"] == slurm_cluster.node, job
        assert job["Name"] == "dask-worker" and job["JobState"] == "CANCELLED", job  # scancel'd as the run ended
    for job in used:  # the job's own log (kwargs.log_directory) shows the tasks it ran (an item's tasks may
        # land on different jobs: its fit on one, its inference on the other)
        log = (slurm_and_local["log_dir"] / f"dask-worker-{job}.err").read_text()
        ran = {f"{e['task']}-{e['item']}" for e in entries if e["slurm_job_id"] == job}
        missing = [r for r in ran if f"Task run '{r}' - Finished in state Completed()" not in log]
        assert not missing, (missing, log[-2000:])
    # adapt asked for 2 jobs at once (one per ready fit; Dask's own estimate would have asked for 1)
    assert len(jobs) == 2, jobs
    starts, ends = [j["StartTime"] for j in jobs.values()], [j["EndTime"] for j in jobs.values()]
    assert max(starts) < min(ends), "the two jobs should have run at the same time"
    listening = slurm_and_local["listening"]
    assert {pid for who, pid, _, _ in listening if who == "job"}, "no listening socket of a job's worker was seen"
    assert {ip for _, _, ip, _ in listening} == {"127.0.0.1"}, sorted(listening)


@pytest.mark.slow
def test_start_up_message_says_what_is_true(slurm_and_local):
    [line] = [m for m in slurm_and_local["logs"]["slurm"] if m.startswith("GPU tasks run on")]
    assert "dask_jobqueue.SLURMCluster (scheduler tcp://127.0.0.1:" in line
    assert line.endswith("0 workers now, adapting up to 2 Slurm jobs"), line
    [local] = [m for m in slurm_and_local["logs"]["local"] if m.startswith("GPU tasks run on")]
    assert local.startswith("GPU tasks run on 2 Dask worker(s): gpu-"), local


# ---- faults on the real scheduler: a cancelled job, a job out of walltime -------------------------------------


def wait_for(ready, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what} within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def faulted_run(prefect_server, slurm_cluster, mini_world_sources, tmp_path_factory):
    """One benchmark of 2 items on at most one Slurm job at a time, each fit held after its step-2 checkpoint
    by the `:hold` fault drill (tasks/fault_drills.py), so that the test kills its job at a known point:
    the first item's job with `scancel`; then the next job, on which the first item's fit resumes and
    finishes before the second item's fit starts and is held, by its walltime (`scontrol update
    EndTime=now`: slurmctld's time-limit check ends it as TIMEOUT, as when a walltime runs out)."""
    import json

    from flows.benchmark import dtu_benchmark
    from tasks.fault_drills import FAIL_ITEMS_ENV

    base = tmp_path_factory.mktemp("slurm-faults")
    config = mini_world_config(base / "run", mini_world_sources, name="slurm-faults")
    config["fit"]["optim"]["max_train_steps"] = 4
    config["execution"]["cluster"] = slurm_settings(slurm_cluster, base / "logs", maximum=1)
    ledger = BenchmarkConfig.model_validate(config).ledger_dir
    first, second = ITEMS[1], ITEMS[0]  # scan21 is submitted first, so Dask runs it first on the one job
    kills, errors = {}, []

    def held(item: str) -> dict | None:
        marker = ledger / f".injected-{item}-fit-2"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(marker.read_text())
        return None

    def chaos() -> None:
        try:
            job = wait_for(lambda: held(first), 300, f"{first} held in its fit")["slurm_job_id"]
            slurm_cluster.command("scancel", job)
            kills["cancelled"] = (first, job)
            job = wait_for(lambda: held(second), 300, f"{second} held in its fit")["slurm_job_id"]
            slurm_cluster.command("scontrol", "update", f"JobId={job}", "EndTime=now")
            kills["timed_out"] = (second, job, time.monotonic())
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=chaos, daemon=True)
    with prefect_env(prefect_server), pytest.MonkeyPatch.context() as env:
        env.setenv(CODE_VERSION_ENV, f"test-{time.time()}")
        env.setenv(FAIL_ITEMS_ENV, f"{first}@fit+2:hold,{second}@fit+2:hold")  # exported to the jobs by sbatch
        t0 = time.monotonic()
        thread.start()
        state = dtu_benchmark(config=config, return_state=True)
        print(f"benchmark with a cancelled and a timed-out Slurm job: {time.monotonic() - t0:.0f} s")
    thread.join(timeout=10)
    return {"config": config, "state": state, "kills": kills, "errors": errors, "ledger": ledger,
            "jobs": {j["JobId"]: j for j in slurm_cluster.finished_jobs()}}


@pytest.mark.slow
def test_cancelled_and_timed_out_jobs_are_retried_on_new_jobs_from_their_checkpoints(faulted_run):
    assert not faulted_run["errors"], faulted_run["errors"]
    assert faulted_run["state"].is_completed(), faulted_run["state"].message
    jobs, kills = faulted_run["jobs"], faulted_run["kills"]
    cancelled_item, cancelled = kills["cancelled"]
    timed_out_item, timed_out, _ = kills["timed_out"]
    assert jobs[cancelled]["JobState"] == "CANCELLED" and jobs[timed_out]["JobState"] == "TIMEOUT"
    entries = gpu_entries(faulted_run["config"])
    # every stage of every item completed exactly once: the killed attempts died with their jobs, and what
    # had finished (the first item's stages, held in the timed-out job's memory) was not executed again
    counts = {(e["item"], e["task"]): 0 for e in entries}
    for e in entries:
        counts[(e["item"], e["task"])] += 1
    assert counts == {(i, t): 1 for i in ITEMS for t in GPU_TASKS}, counts
    assert all(e["status"] == "completed" for e in entries)
    by = {(e["item"], e["task"]): e for e in entries}
    # the cancelled item's fit finished on the job that later timed out; its result, lost with that job,
    # was served from the persisted results (not executed again) to its inference on the next job
    assert by[(cancelled_item, "fit")]["slurm_job_id"] == timed_out, by[(cancelled_item, "fit")]
    assert by[(cancelled_item, "infer")]["slurm_job_id"] not in (cancelled, timed_out)
    for item, killed in ((cancelled_item, cancelled), (timed_out_item, timed_out)):
        fit = by[(item, "fit")]
        assert fit["slurm_job_id"] != killed and fit["slurm_job_id"] in jobs
        assert fit["resumed_from"] == 2 and fit["steps"] == 4, fit  # from the held attempt's checkpoint
    later = {by[(timed_out_item, t)]["slurm_job_id"] for t in GPU_TASKS}
    assert not later & {cancelled, timed_out}
    report = (Path(faulted_run["config"]["run_dir"]) / "report" / "report.md").read_text()
    [retried] = [line for line in report.splitlines() if line.startswith("- retried")]
    assert f"{timed_out_item} (fit" in retried and f"{cancelled_item} (fit" in retried, retried
    assert "resumed from step 2" in retried


# ---- a partition that cannot run the jobs: fail at once, quoting Slurm ------------------------------------------


def _fails_fast(config: dict) -> str:
    from flows.benchmark import dtu_benchmark

    t0 = time.monotonic()
    state = dtu_benchmark(config=config, return_state=True)
    took = time.monotonic() - t0
    assert state.is_failed()
    assert took < 60, f"took {took:.0f} s"
    assert not (Path(config["run_dir"]) / "data").exists(), "no work may start"
    return str(state.result(raise_on_failure=False))


def test_wrong_partition_fails_within_a_minute_quoting_slurm(prefect_server, slurm_cluster, tmp_path):
    config = mini_world_config(tmp_path / "run", ["/nonexistent.zip"])
    config["execution"]["cluster"] = slurm_settings(slurm_cluster, tmp_path / "logs", queue="no-such-partition")
    message = _fails_fast(config)
    assert message.startswith("execution.cluster: Slurm would not run the workers of dask_jobqueue.SLURMCluster")
    assert "Invalid partition name specified" in message, message  # Slurm's own words
    assert "no-such-partition" in message


def test_down_partition_fails_within_a_minute_instead_of_waiting(prefect_server, slurm_cluster, tmp_path):
    config = mini_world_config(tmp_path / "run", ["/nonexistent.zip"])
    config["execution"]["cluster"] = slurm_settings(slurm_cluster, tmp_path / "logs")
    slurm_cluster.command("scontrol", "update", f"PartitionName={slurm_cluster.partition}", "State=DOWN")
    try:
        message = _fails_fast(config)
    finally:
        slurm_cluster.command("scontrol", "update", f"PartitionName={slurm_cluster.partition}", "State=UP")
    assert message.startswith("execution.cluster: Slurm would not run the workers of dask_jobqueue.SLURMCluster")
    assert f"partition '{slurm_cluster.partition}' is DOWN (scontrol show partition: State=DOWN)" in message
    assert not slurm_cluster.queue(), "nothing may be left queued"


# ---- the shipped recipe ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_shipped_slurm_recipe_loads_and_starts_a_gpu_worker(slurm_cluster, tmp_path):
    """configs/clusters/slurm.yaml as docs/pipeline.md says to use it (its `execution:` block in a copy of
    configs/dtu_benchmark.yaml), with the partition renamed; as in every test, its scheduler and worker are
    put on 127.0.0.1, and its 8 cores / 64 GB per job are cut to what this node has when it has less. Slurm
    accepts the job with the recipe's `--gres=gpu:1` (the node's GPUs are fake), and its worker declares GPU=1."""
    from distributed import Client

    from flows.cluster import import_cluster_class
    from flows.params import load_benchmark_config
    from flows.slurm import check_slurm_cluster

    recipe = yaml.safe_load((REPO / "configs" / "clusters" / "slurm.yaml").read_text())
    kwargs = recipe["execution"]["cluster"]["kwargs"]
    overrides = {"queue": slurm_cluster.partition, "log_directory": str(tmp_path / "logs"), "interface": "lo",
                 "scheduler_options": {"dashboard_address": "127.0.0.1:0"},
                 "worker_extra_args": [*kwargs["worker_extra_args"], "--no-dashboard"],
                 "cores": min(kwargs["cores"], slurm_cluster.cpus),
                 "memory": f"{min(int(kwargs['memory'].removesuffix('GB')), slurm_cluster.memory_mb // 2048)}GB"}
    config = load_benchmark_config(REPO / "configs" / "dtu_benchmark.yaml",
                                   {"execution": {**recipe["execution"], "cluster": {
                                       **recipe["execution"]["cluster"], "kwargs": {**kwargs, **overrides}}}})
    cluster = config.execution.cluster
    assert cluster.class_ == "dask_jobqueue.SLURMCluster" and cluster.adapt.maximum == 8
    assert cluster.kwargs["job_extra_directives"] == ["--gres=gpu:1"] and cluster.kwargs["walltime"] == "24:00:00"
    with import_cluster_class(cluster.class_)(**cluster.kwargs) as slurm_dask, Client(slurm_dask) as client:
        assert "sbatch: Job" in check_slurm_cluster(slurm_dask)
        slurm_dask.scale(1)
        client.wait_for_workers(1, timeout=120)
        [worker] = client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["resources"] == {"GPU": 1}
        [(job_id, gpus)] = client.run(lambda: tuple(__import__("os").environ.get(k)
                                                    for k in ("SLURM_JOB_ID", "SLURM_GPUS_ON_NODE"))).values()
        [job] = slurm_cluster.queue()
        shown = slurm_cluster.command("scontrol", "show", "job", job_id, "--details", "--oneliner").stdout
    assert job["job_id"] == job_id and job["partition"] == slurm_cluster.partition and job["state"] == "RUNNING"
    assert "GRES=gpu:1(IDX:" in shown and gpus == "1", shown  # Slurm gave the worker's job one GPU


# ---- docs/pipeline.md "On Slurm" as a deployment: two runs on one Slurm cluster share the GPU limit ---------------


def max_overlap(entries: list[dict]) -> int:
    events = sorted([(e["start"], 1) for e in entries] + [(e["end"], -1) for e in entries])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_on_slurm_deployment_walkthrough_two_runs_share_the_gpu_limit(prefect_server, slurm_cluster,
                                                                    mini_world_sources, tmp_path):
    """The deployment variant of docs/pipeline.md "On Slurm", command by command: the deploy step with one GPU
    slot, a process worker on the submitting host, and two benchmark files with the Slurm cluster config,
    each started with `prefect deployment run 'dtu-benchmark/full' --params "$(viewneti-pipeline config show
    --config FILE --params)"`. Both run at once on the same Slurm cluster (up to 2 jobs each), and their GPU
    tasks together never exceed the one slot of the shared limit viewneti-gpu.

    The test holds that slot itself until a GPU task of each run is running on a Slurm worker and waiting for
    it: the contention is then certain, not a matter of timing (CI once started one run's first GPU task
    only after the other run's last one had ended, and nothing was left to test)."""
    import os
    import shlex
    import subprocess

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.concurrency.sync import concurrency

    from tasks.runtime import GPU_LIMIT

    env = dict(os.environ) | prefect_server.client_env() | {
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", "PREFECT_LOGGING_EXTRA_LOGGERS": "viewneti_core",
        CODE_VERSION_ENV: f"test-{time.time()}"}

    def shell(command: str, timeout: float = 240) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    configs = {}
    for name in ("slurm-a", "slurm-b"):
        config = mini_world_config(tmp_path / name, mini_world_sources, name=name, test_scans=[21])
        config["execution"]["cluster"] = slurm_settings(slurm_cluster, tmp_path / f"{name}-logs")
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        configs[name] = config
    assert "viewneti-gpu: 1 slot(s)" in shell(f"{shlex.quote(str(REPO / '.venv/bin/python'))} -m viewneti_cli.deploy "
                                              "--gpu-slots 1")

    def task_runs(client, run_ids: dict[str, str]) -> list:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(run_ids.values()))))

    def running_gpu_tasks(client, run_ids: dict[str, str]) -> dict[str, str]:
        """Each run's GPU task run (by name) that is running now: on its Slurm worker, waiting for the slot."""
        runs_by_id = {run_id: name for name, run_id in run_ids.items()}
        return {runs_by_id[str(t.flow_run_id)]: t.name for t in task_runs(client, run_ids)
                if t.state is not None and t.state.is_running() and t.name.split("-")[0] in GPU_TASKS}

    worker_log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "viewneti-process", "--limit", "2"], cwd=REPO,
                              env=env, stdout=worker_log, stderr=subprocess.STDOUT)
    try:
        run_ids = {}
        with get_client(sync_client=True) as client, concurrency(GPU_LIMIT, occupy=1):  # the one slot: ours
            for name in configs:
                out = shell("prefect deployment run 'dtu-benchmark/full' --params "
                            f"\"$(viewneti-pipeline config show --config {tmp_path / name}.yaml --params)\"",
                            timeout=90)
                run_ids[name] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            deadline = time.monotonic() + 300
            while len(waiting := running_gpu_tasks(client, run_ids)) < len(run_ids):
                assert time.monotonic() < deadline, (f"not every run reached a GPU task: {waiting}\n"
                                                     + (tmp_path / "worker.log").read_text()[-3000:])
                time.sleep(1)
            released = time.time()  # before the slot goes back: no GPU task can have started before this
        states = {}
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and len(states) < len(run_ids):
                for name, run_id in run_ids.items():
                    state = client.read_flow_run(run_id).state
                    if state is not None and state.is_final():
                        states[name] = state
                time.sleep(2)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        worker_log.close()
    for name in run_ids:
        assert name in states and states[name].is_completed(), \
            f"{name}: {states.get(name)}\n" + (tmp_path / "worker.log").read_text()[-3000:]
    by_run = {name: gpu_entries(config) for name, config in configs.items()}
    entries = [e for run in by_run.values() for e in run]
    assert len(entries) == 2 * 3 and all(e["status"] == "completed" and e.get("slurm_job_id") for e in entries)
    # Prefect started each task on its worker (task run start) before it got the slot (ledger start, inside
    # the slot): tasks of both runs were on Slurm workers at the same time, but ran one at a time
    with get_client(sync_client=True) as client:
        started = {str(t.id): t.start_time.timestamp() for t in task_runs(client, run_ids)}
    in_flight = [{"start": started[e["task_run_id"]], "end": e["end"]} for e in entries]
    assert max_overlap(in_flight) >= 2, "no two GPU tasks were ever on workers at the same time"
    assert max_overlap(entries) == 1, sorted((e["start"], e["end"], e["item"], e["task"]) for e in entries)
    assert min(e["start"] for e in entries) >= released, "a GPU task ran while the test held the only slot"
    jobs = {e["slurm_job_id"] for e in entries}
    assert len(jobs) >= 2, f"both runs' GPU tasks ran in one job? {jobs}"  # each run has its own SLURMCluster
