"""The Dask side: which cluster GPU tasks run on, and how they are marked as needing a GPU.

- `execution.cluster` of the benchmark config, when not `local`: a running scheduler (`address`) or a
  cluster class by import path (`dask_jobqueue.SLURMCluster`, `dask_kubernetes.operator.KubeCluster`,
  ...) with its kwargs and adapt bounds; `use_configured_cluster` applies it at the start of a flow run,
  asks Slurm whether it would run the workers' jobs (flows/slurm.py), and adapts with `GpuAdaptive`
  (a worker per GPU task that could run, which Dask's own estimate does not count).
- `VIEWNETI_DASK_ADDRESS=tcp://scheduler:8786`: use a running Dask cluster (docker/compose.yaml starts
  one worker per GPU, each with `--resources GPU=1`).
- otherwise a local cluster is started per flow run: one worker process per visible CUDA device
  (each pinned to its device through CUDA_VISIBLE_DEVICES), or, without CUDA,
  `VIEWNETI_DASK_WORKERS` (default 2) CPU workers that each declare one "GPU" slot so the
  scheduling is the same as on a GPU machine.

Every GPU task is submitted inside `gpu_annotations()`, i.e. `dask.annotate(resources={"GPU": 1})`;
a worker declaring `GPU: 1` therefore runs at most one of them at a time, while its other threads
stay free for light tasks.

A local cluster logs only Dask's warnings and errors (VIEWNETI_DASK_LOG_LEVEL=info for all of it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import math
import os
import subprocess
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger(__name__)

ADDRESS_ENV = "VIEWNETI_DASK_ADDRESS"
WORKERS_ENV = "VIEWNETI_DASK_WORKERS"
THREADS_ENV = "VIEWNETI_DASK_THREADS"
LOG_LEVEL_ENV = "VIEWNETI_DASK_LOG_LEVEL"  # Dask's own logs of a local cluster (default: warnings and up)
GPU_RESOURCE = "GPU"
CORE_LOGGERS = "viewneti_core"


def _cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in (v.strip() for v in visible.split(",")) if d and d != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch / no driver: CPU slots
        return []


def local_gpu_slots() -> int:
    """The GPU slots of this host: its visible GPUs, else the CPU "GPU slots" of the local cluster."""
    return len(_cuda_devices()) or int(os.environ.get(WORKERS_ENV, "2"))


def live_flow_runs_filter():
    """Flow runs that may hold a GPU slot: pending, running, paused or cancelling (a scheduled run holds none)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    states = [StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states)))


def ensure_gpu_limit(slots: int) -> int:
    """Create the Prefect global concurrency limit that every GPU task holds a slot of (tasks.runtime.gpu_slot)
    with `slots` slots, unless it exists (then its slots are an operator's choice and are kept). Returns them.

    An existing limit's occupied slots are released when no flow run on the server could hold them
    (`live_flow_runs_filter`). Such orphans are what a server restart leaves behind: Prefect keeps the slots'
    leases in the server's memory, so the slots held by runs killed before the restart never expire, and
    every later GPU task would wait for them forever."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    from tasks.runtime import GPU_LIMIT

    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
                return slots
            except ObjectAlreadyExists:  # another run created it a moment ago
                return client.read_global_concurrency_limit_by_name(GPU_LIMIT).limit
        if limit.active_slots and not client.read_flow_runs(flow_run_filter=live_flow_runs_filter(), limit=1):
            client.update_global_concurrency_limit(GPU_LIMIT, GlobalConcurrencyLimitUpdate(active_slots=0))
            logger.warning("released %d slot(s) of %s that no flow run holds (left by runs killed before "
                           "the Prefect server restarted)", limit.active_slots, GPU_LIMIT)
        return limit.limit


def local_gpu_cluster(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    devices: list[str] | None = None,
    processes: bool = True,
    **kwargs: Any,
):
    """A SpecCluster on 127.0.0.1 with one worker per GPU (or per CPU "GPU slot"), each `GPU: 1`."""
    from distributed import Scheduler, SpecCluster, Worker

    devices = _cuda_devices() if devices is None else devices
    if n_workers is None:
        n_workers = len(devices) or int(os.environ.get(WORKERS_ENV, "2"))
    threads = threads_per_worker or int(os.environ.get(THREADS_ENV, "2"))
    cpus = os.cpu_count() or 1
    # Start/stop chatter of the scheduler, nannies and workers would bury the run's own logs; a lost
    # worker and other trouble are warnings and still show.
    dask_level = os.environ.get(LOG_LEVEL_ENV, "warning").upper()
    logging.getLogger("distributed").setLevel(dask_level)
    # Worker processes configure logging when they import distributed, i.e. from the environment they
    # inherit at spawn (the nanny's `env` is applied too late for that).
    if LOG_LEVEL_ENV in os.environ or "DASK_LOGGING__DISTRIBUTED" not in os.environ:
        os.environ["DASK_LOGGING__DISTRIBUTED"] = dask_level.lower()
    base_env = {
        "PREFECT_LOGGING_EXTRA_LOGGERS": os.environ.get("PREFECT_LOGGING_EXTRA_LOGGERS", CORE_LOGGERS),
        "OMP_NUM_THREADS": str(max(1, cpus // n_workers)),
        "MKL_NUM_THREADS": str(max(1, cpus // n_workers)),
    }
    workers = {}
    for index in range(n_workers):
        env = dict(base_env)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
        options: dict[str, Any] = {
            "nthreads": threads, "resources": {GPU_RESOURCE: 1}, "host": "127.0.0.1",
            "name": f"gpu-{index}", "dashboard": False,
        }
        if processes:
            options["preload"] = [__name__]  # dask_setup below, in the worker process
        if processes:
            options["env"] = env
        workers[f"gpu-{index}"] = {"cls": patient_nanny() if processes else Worker, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="viewneti-local", **kwargs)


NANNY_CLOSE_TIMEOUT_S = 30.0


def dask_setup(worker) -> None:
    """Worker preload: short console errors (flows/console.py), and a quick exit.

    With torch, diffusers and Prefect loaded, the final garbage collections of a worker process took
    ~4 s of its exit on a busy 2-core machine (measured: ~0.8 s with this). `gc.freeze` at exit moves
    every object out of the collector's reach; refcounting still frees them and the OS takes the rest.
    """
    import atexit
    import gc

    import prefect  # noqa: F401 - sets up Prefect's logging, whose console handler is shortened next

    from flows.console import shorten_console_errors

    shorten_console_errors()
    atexit.register(gc.freeze)


@functools.cache
def patient_nanny():
    """The Nanny class of local clusters (built on first use: importing distributed is not free)."""
    from distributed import Nanny

    class PatientNanny(Nanny):
        """A Nanny that gives its worker process time to exit on its own when the cluster closes.

        Dask's default (5 s, of which 4 s before SIGKILL) is shorter than a worker that has loaded
        torch and diffusers needs to shut down on a busy machine, so every successful run ended with
        "Worker process still alive after 4.0 seconds, killing" and lost the worker's last log lines.
        """

        async def close(self, timeout: float = NANNY_CLOSE_TIMEOUT_S, reason: str = "nanny-close") -> str:
            return await super().close(timeout=timeout, reason=reason)

    PatientNanny.__module__ = __name__
    return PatientNanny


def gpu_task_runner(address: str | None = None, **cluster_kwargs: Any):
    """The DaskTaskRunner of the GPU flows (decided when the flow module is imported, from the env)."""
    from prefect_dask import DaskTaskRunner

    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class=local_gpu_cluster, cluster_kwargs=cluster_kwargs)


@contextlib.contextmanager
def gpu_annotations(gpus: int = 1, priority: int = 0) -> Iterator[None]:
    """Submit Prefect tasks inside this block to have Dask run them only on a worker with a free GPU.

    `priority`: among ready tasks Dask runs higher ones first; later stages of an item get a higher
    priority so finished items (and their persisted results) land early instead of all at the end.
    """
    import dask

    with dask.annotate(resources={GPU_RESOURCE: gpus}, priority=priority):
        yield


# ---- a cluster from the configuration (execution.cluster) ------------------------------------------

CLUSTER_KEY = "execution.cluster"
EXTRAS = {"dask_jobqueue": "slurm", "dask_kubernetes": "kubernetes", "dask_cuda": "cuda"}


class ClusterConfigError(ValueError):
    """`execution.cluster` names a cluster that cannot be started or reached, or that has no GPU slots."""


def import_cluster_class(path: str):
    """The callable behind an import path; ValueError saying what to install when it is missing."""
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path like dask_jobqueue.SLURMCluster")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(module_name.split(".")[0])
        hint = f"; install it with: pip install 'viewneti[{extra}]'" if extra else ""
        raise ValueError(f"cannot import {module_name!r} ({exc}){hint}") from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise ValueError(f"module {module_name!r} has no cluster class {attr!r}")
    return obj


def _named_parameters(fn) -> tuple[set[str], bool]:
    """(keyword names `fn` takes, whether it also takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_cluster_kwargs(path: str, kwargs: dict[str, Any]) -> None:
    """Reject kwargs the class cannot take, where its signature says so (dask-jobqueue passes the rest of
    its kwargs to its job class, whose **kwargs go to the base job class: that chain is followed)."""
    if "asynchronous" in kwargs:
        raise ValueError("'asynchronous' is managed by Prefect: remove it")
    cls = import_cluster_class(path)
    names, takes_any = _named_parameters(cls)
    job_cls = getattr(cls, "job_cls", None)
    if takes_any and isinstance(job_cls, type):
        for klass in job_cls.__mro__:
            if "__init__" in vars(klass):
                more, takes_any = _named_parameters(klass.__init__)
                names |= more - {"self"}
                if not takes_any:
                    break
    unknown = sorted(set(kwargs) - names)
    if unknown and not takes_any:
        raise ValueError(f"kwargs {unknown} are not arguments of {path}")


def runner_options(settings) -> dict[str, Any]:
    """DaskTaskRunner(**options) for a non-local `ClusterSettings` (flows/params.py)."""
    if settings.address:
        return {"address": settings.address}
    return {"cluster_class": settings.class_, "cluster_kwargs": dict(settings.kwargs),
            "adapt_kwargs": settings.adapt.model_dump() if settings.adapt else {}}


def use_configured_cluster(settings) -> str:
    """Point this flow run's DaskTaskRunner at `settings` (an `execution.cluster`) and start or reach the
    cluster now, so a bad class, bad kwargs, an unreachable scheduler or workers without GPU slots stop
    the run before any work, with one message naming the key. Returns a line for the logs."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if not isinstance(runner, DaskTaskRunner):
        return "(no Dask task runner)"
    if not settings.is_local:
        options = runner_options(settings)
        # prefect-dask creates the cluster on first use of `.client`, from these public settings.
        runner.address = options.get("address")
        runner.cluster_class = options.get("cluster_class")
        runner.resolved_cluster_class = import_cluster_class(settings.class_) if settings.class_ else None
        runner.cluster_kwargs = options.get("cluster_kwargs", {})
        runner.adapt_kwargs = options.get("adapt_kwargs", {})
        if runner.adapt_kwargs:
            runner.adapt_kwargs = {**runner.adapt_kwargs, "Adaptive": gpu_adaptive()}
    if settings.is_local:  # the environment's choice: name that, not the config key
        key = f"{ADDRESS_ENV}={runner.address}" if runner.address else "execution.cluster (local)"
        what = f"the scheduler at {runner.address}" if runner.address else "the local GPU cluster"
    else:
        key = CLUSTER_KEY
        what = (f"{settings.class_} with kwargs {settings.kwargs}" if settings.class_
                else f"the scheduler at {settings.address}")
    dask_logger = logging.getLogger(runner.logger.name)
    level = dask_logger.level
    dask_logger.setLevel(logging.CRITICAL)  # its "Failed to create ..." traceback; the cause is re-raised
    try:
        client = runner.client
    except Exception as exc:  # noqa: BLE001 - any failure to start is a configuration problem here
        raise ClusterConfigError(f"{key}: starting {what} failed: {type(exc).__name__}: {exc}") from None
    finally:
        dask_logger.setLevel(level)
    if not settings.is_local:
        check_started_cluster(getattr(client, "cluster", None), runner.adapt_kwargs, key, what)
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if workers and not any(w.get("resources", {}).get(GPU_RESOURCE) for w in workers):
        raise ClusterConfigError(
            f"{key}: none of the {len(workers)} worker(s) of {what} declares a {GPU_RESOURCE!r} resource, "
            f"so GPU tasks would wait forever; start workers with --resources {GPU_RESOURCE}=1 (LocalCluster: "
            f"kwargs.resources: {{{GPU_RESOURCE}: 1}}; dask-jobqueue: kwargs.worker_extra_args: "
            f"[--resources, {GPU_RESOURCE}=1])")
    return cluster_description(runner)


@functools.cache
def gpu_adaptive():
    """The Adaptive class of `execution.cluster.adapt` (built on first use: importing distributed is not free)."""
    from distributed import Scheduler
    from distributed.deploy.adaptive import Adaptive

    class GpuAdaptive(Adaptive):
        """Dask's Adaptive sizes a cluster by estimated CPU time per thread and knows nothing of resources:
        until a task has finished it counts 0.5 s per task, so the GPU tasks of a whole fan-out look like
        one worker's work, and a worker with several threads looks like room for several GPU tasks. This one
        also asks for a worker per GPU task that could run now (running, or waiting for a free GPU slot),
        within the adapt bounds. A remote scheduler (e.g. on Kubernetes) keeps Dask's estimate."""

        async def target(self) -> int:
            estimate = await super().target()
            scheduler = getattr(self.cluster, "scheduler", None)
            if not isinstance(scheduler, Scheduler):
                return estimate
            return max(estimate, gpu_workers_wanted(scheduler))

    GpuAdaptive.__module__ = __name__
    return GpuAdaptive


def gpu_workers_wanted(scheduler) -> int:
    """Workers needed to run every GPU task that is ready now (on a worker, or waiting for one) at once."""
    ready = [*scheduler.unrunnable, *(ts for ws in scheduler.workers.values() for ts in ws.processing)]
    demand = sum((ts.resource_restrictions or {}).get(GPU_RESOURCE, 0) for ts in ready)
    slots = max((ws.resources.get(GPU_RESOURCE, 0) for ws in scheduler.workers.values()), default=0) or 1
    return math.ceil(demand / slots)


def check_started_cluster(cluster, adapt: dict[str, Any] | None, key: str, what: str) -> None:
    """A started cluster of `execution.cluster` that could never get a worker fails now, not after an
    endless wait: Slurm refusing its jobs (flows/slurm.py), or no workers and no adapt bounds."""
    if cluster is None:  # a running scheduler (address): its workers are someone else's
        return
    from flows.slurm import SlurmRefusal, check_slurm_cluster, is_slurm_cluster

    if is_slurm_cluster(cluster):
        try:
            check_slurm_cluster(cluster)
        except (SlurmRefusal, OSError, subprocess.SubprocessError) as exc:
            raise ClusterConfigError(f"{key}: Slurm would not run the workers of {what}: {exc}") from None
    if not adapt and not getattr(cluster, "worker_spec", None) and not cluster.scheduler_info.get("workers"):
        raise ClusterConfigError(f"{key}: {what} started with no workers and no adapt bounds, so GPU tasks would "
                                 "wait forever; add adapt: {minimum: 0, maximum: N} (or kwargs.n_workers)")


def job_unit(cluster_class: str | None) -> str:
    """What one worker of an adaptive cluster is, for the logs: 'Slurm jobs', 'PBS jobs', ... or 'workers'."""
    module, _, name = (cluster_class or "").rpartition(".")
    if module.split(".")[0] != "dask_jobqueue" or not name.endswith("Cluster"):
        return "workers"
    system = name.removesuffix("Cluster")
    return f"{'Slurm' if system == 'SLURM' else system} jobs"


def cluster_description(task_runner) -> str:
    """One line for the logs: where the GPU tasks run. An adaptive cluster usually starts with no worker:
    say so, with its bounds, so that "0 workers" reads as what it is."""
    try:
        client = task_runner.client
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except Exception as exc:  # noqa: BLE001 - informational only
        return f"(cluster not reachable: {exc})"
    parts = [f"{w.get('name', addr)}@{addr} {w.get('resources', {})}" for addr, w in workers.items()]
    adapt = getattr(task_runner, "adapt_kwargs", None) or {}
    if "maximum" in adapt:
        name = task_runner.cluster_class if isinstance(task_runner.cluster_class, str) else "the cluster"
        now = f"{len(workers)} worker{'' if len(workers) == 1 else 's'} now"
        line = (f"{name} (scheduler {client.scheduler.address}): {now}, adapting up to {adapt['maximum']} "
                f"{job_unit(name)}")
        return line + (": " + ", ".join(parts) if parts else "")
    return f"{len(workers)} Dask worker(s): " + ", ".join(parts)
