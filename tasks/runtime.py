"""What every pipeline task shares: caching on inputs + code, JSON results under the run directory,
retries of transient failures only, forwarding of viewneti_core logs to the run pages, a ledger
of executions (which worker ran what, when) and the GPU slot. The fault drills are in `fault_drills`.

Results are small JSON records of paths and numbers; tensors and models never leave a task.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

import viewneti_core

CORE_LOGGER = "viewneti_core"
LEDGER_ENV = "VIEWNETI_PIPELINE_LEDGER"  # "0" disables the execution ledger
CODE_VERSION_ENV = "VIEWNETI_CODE_VERSION"  # pin the code part of cache keys (e.g. a release or git sha)

# Errors that no retry can fix: a bad configuration, missing inputs, an injected permanent failure.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError,
                                                     NotImplementedError)


ITEM_PATTERN = re.compile(r"^scan(\d+)-(\d+)views?$")


def item_name(scan: int, n_views: int) -> str:
    """The name of one (scan, n_views) item of the benchmark: run names, directories, ledger entries."""
    return f"scan{scan}-{n_views}view"


def parse_item_name(name: str) -> tuple[int, int]:
    match = ITEM_PATTERN.match(name)
    if not match:
        raise ValueError(f"{name!r} is not an item name like 'scan114-1view'")
    return int(match.group(1)), int(match.group(2))


# ---- caching -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def core_code_version() -> str:
    """What a cached result was computed with: $VIEWNETI_CODE_VERSION if set (a release tag or git sha
    shared by every machine of a cluster), else a sha256 over the sources of viewneti_core and tasks."""
    pinned = os.environ.get(CODE_VERSION_ENV)
    if pinned:
        return pinned
    digest = hashlib.sha256()
    for package_dir in (Path(viewneti_core.__file__).parent, Path(__file__).parent):
        for path in sorted(package_dir.rglob("*.py")):
            digest.update(str(path.relative_to(package_dir.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass
class CodeVersion(CachePolicy):
    """Cache-key component: the code of viewneti_core + tasks (a code change invalidates results)."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        return core_code_version()


CACHE_POLICY = INPUTS + TASK_SOURCE + CodeVersion()


def task_options(results_dir: Path, retries: int = 0, retry_delay_s: float = 0.0,
                 refresh_cache: bool = False) -> dict[str, Any]:
    """`Task.with_options(**task_options(...))`: results and cache records as JSON under the run dir."""
    return {
        "persist_result": True,
        "result_storage": Path(results_dir),
        "result_serializer": "json",
        "cache_policy": CACHE_POLICY,
        "refresh_cache": refresh_cache,
        "retries": retries,
        "retry_delay_seconds": retry_delay_s,
    }


def retry_transient(task, task_run, state) -> bool:
    """Prefect retry condition: retry unless the error is one that a retry cannot fix."""
    try:
        state.result()
    except Exception as exc:  # an error that knows (an injected drill failure) decides itself
        if isinstance(getattr(exc, "transient", None), bool):
            return exc.transient
        if isinstance(exc, PERMANENT_ERRORS):
            return False
        return True
    return True


# ---- logging -------------------------------------------------------------------------------------


def forward_core_logs(level: int = logging.INFO) -> None:
    """Send viewneti_core's logs to the Prefect run pages (like PREFECT_LOGGING_EXTRA_LOGGERS).

    Idempotent; needed in Dask worker processes, where Prefect's logging setup may not know about
    our logger.
    """
    core = logging.getLogger(CORE_LOGGER)
    core.setLevel(min(core.level or level, level))
    extra = logging.getLogger("prefect.extra")
    for handler in extra.handlers:
        if handler not in core.handlers:
            core.addHandler(handler)
    if not extra.handlers:  # Prefect's logging was not set up in this process yet
        from prefect.logging.configuration import ensure_logging_setup

        ensure_logging_setup()
        for handler in logging.getLogger("prefect.extra").handlers:
            if handler not in core.handlers:
                core.addHandler(handler)


def run_logger():
    forward_core_logs()
    return get_run_logger()


# ---- execution ledger ------------------------------------------------------------------------------


def worker_identity() -> dict[str, Any]:
    """The Dask worker running this code (address, name), or the local process."""
    identity: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        from distributed import get_worker

        worker = get_worker()
        identity.update({"worker": worker.address, "worker_name": str(worker.name)})
    except (ImportError, ValueError):
        identity.update({"worker": f"local:{os.getpid()}", "worker_name": "local"})
    if os.environ.get("SLURM_JOB_ID"):  # a worker started as a Slurm job (dask-jobqueue): which job ran what
        identity["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return identity


GPU_LIMIT = "viewneti-gpu"  # Prefect global concurrency limit: slots = GPUs shared by every flow run
GPU_LEASE_S = 60.0  # a slot held by a killed process returns to the pool within this time (renewed while alive)


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold one slot of the global concurrency limit `viewneti-gpu` while a GPU task runs.

    Dask's `GPU: 1` resource keeps one task per worker of *one* cluster; two flow runs that each start
    their own local cluster on the same host would still put two tasks on each GPU. The limit is global
    to the Prefect server, so it caps the GPU tasks of all runs together. Created by `viewneti-pipeline
    run|demo` (`prefect gcl create viewneti-gpu --limit N` for deployments); without it nothing waits.
    """
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=1, lease_duration=GPU_LEASE_S, raise_on_lease_renewal_failure=False):
        yield


@contextlib.contextmanager
def ledger_entry(ledger_dir: Path, task: str, item: str, **extra: Any) -> Iterator[dict[str, Any]]:
    """Record one execution (start/end wall time, worker, outcome) as its own JSON file.

    One file per execution, written atomically, so concurrent workers on shared storage never
    interleave; `ledger/` answers "which worker ran what, when, how often".
    """
    record: dict[str, Any] = {"task": task, "item": item, "start": time.time(), **worker_identity(),
                              "code_version": core_code_version(), **extra}
    ctx = TaskRunContext.get()
    if ctx is not None:
        record.update({"task_run_id": str(ctx.task_run.id), "attempt": ctx.task_run.run_count})
    try:
        yield record
        record["status"] = "completed"
    except BaseException as exc:
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        record["end"] = time.time()
        if os.environ.get(LEDGER_ENV, "1") != "0":
            path = Path(ledger_dir) / f"{item}.{task}.{int(record['start'] * 1000)}.{uuid.uuid4().hex[:8]}.json"
            write_json_atomic(path, record)


def read_ledger(ledger_dir: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(Path(ledger_dir).glob("*.json")):
        with contextlib.suppress(OSError, ValueError):
            entries.append(json.loads(path.read_text()))
    return sorted(entries, key=lambda e: e["start"])


# ---- files -----------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over file names and contents (small files: mapper weights, JSON)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
