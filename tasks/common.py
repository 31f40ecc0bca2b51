"""What every pipeline task shares: caching on inputs + code, JSON results under the run directory,
retries of transient failures only, forwarding of viewneti_core logs to the run pages, and a ledger
of executions (which worker ran what, when).

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
FAIL_ITEMS_ENV = "VIEWNETI_PIPELINE_FAIL_ITEMS"  # fault injection: "scan114-1view[@stage[+step]][:once|:kill],..."
KILLED_EXIT_CODE = 86  # exit status of a worker process killed by injection
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
    except InjectedFailure as exc:
        return exc.transient
    except PERMANENT_ERRORS:
        return False
    except Exception:
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


# ---- fault injection (tests, drills) -------------------------------------------------------------


class InjectedFailure(RuntimeError):
    """A failure injected through VIEWNETI_PIPELINE_FAIL_ITEMS (never raised unless asked for)."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


def maybe_inject_failure(item: str, stage: str, marker_dir: Path, step: int | None = None) -> None:
    """Raise for `item` at `stage` if VIEWNETI_PIPELINE_FAIL_ITEMS lists it (a no-op otherwise).

    Entries, comma separated: `scan114-1view` (fails every attempt, at the start of the fit stage),
    `scan114-1view@infer` (another stage: fit, infer, evaluate), `scan114-1view@fit+2` (fails right
    after training step 2, i.e. after that step's checkpoint was written), `...:once` (fails the first
    attempt only: a transient failure that a retry fixes), `...:kill` (the first attempt kills the whole
    Dask worker process, as a crashed or preempted machine would: no exception, no cleanup).
    """
    spec = os.environ.get(FAIL_ITEMS_ENV, "")
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        entry, _, mode = entry.partition(":")
        name, _, where = entry.partition("@")
        where_stage, _, after = (where or "fit").partition("+")
        if name != item or where_stage != stage:
            continue
        if (int(after) if after else None) != step:
            continue
        at = f"{stage}" + (f" after step {step}" if step is not None else "")
        if mode in ("once", "kill"):
            marker = Path(marker_dir) / f".injected-{item}-{stage}-{after or 0}"
            if marker.exists():
                return
            marker.parent.mkdir(parents=True, exist_ok=True)
            if mode == "kill":
                _kill_this_worker(marker, f"{item} at {at}")
            marker.write_text("failed once\n")
            raise InjectedFailure(f"injected transient failure of {item} at {at} (first attempt only)", True)
        raise InjectedFailure(f"injected failure of {item} at {at} (set by {FAIL_ITEMS_ENV})", False)


def _kill_this_worker(marker: Path, where: str) -> None:
    identity = worker_identity()
    if identity["worker_name"] == "local":
        raise RuntimeError(f"{FAIL_ITEMS_ENV}: ':kill' needs a Dask worker process, but {where} runs locally")
    write_json_atomic(marker, {"killed": where, **identity, "time": time.time()})
    logging.getLogger(CORE_LOGGER).warning("injected: killing Dask worker %s (pid %d) during %s",
                                           identity["worker_name"], identity["pid"], where)
    os._exit(KILLED_EXIT_CODE)


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
