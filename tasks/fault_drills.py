"""Fault drills: failures injected on purpose through $VIEWNETI_PIPELINE_FAIL_ITEMS, so tests and
operators can watch retries, resumes and a killed worker behave as they should. Nothing here runs
unless the variable names an item; kept apart from the task runtime that production code relies on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from tasks.runtime import CORE_LOGGER, worker_identity, write_json_atomic

FAIL_ITEMS_ENV = "VIEWNETI_PIPELINE_FAIL_ITEMS"  # "scan114-1view[@stage[+step]][:once|:kill|:hold|:meet=N],..."
MEET_DIR_ENV = "VIEWNETI_PIPELINE_MEET_DIR"  # the rendezvous folder of ':meet=N', shared by the runs that meet
KILLED_EXIT_CODE = 86  # exit status of a worker process killed by injection
HOLD_LIMIT_S = 600.0  # a held attempt that nobody killed gives up (fails for good) after this long


class InjectedFailure(RuntimeError):
    """A failure injected through VIEWNETI_PIPELINE_FAIL_ITEMS (never raised unless asked for)."""

    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient

    def __reduce__(self):  # both arguments: Dask sends the exception between processes by pickling it
        return type(self), (str(self), self.transient)


def maybe_inject_failure(item: str, stage: str, marker_dir: Path, step: int | None = None) -> None:
    """Raise for `item` at `stage` if VIEWNETI_PIPELINE_FAIL_ITEMS lists it (a no-op otherwise).

    Entries, comma separated: `scan114-1view` (fails every attempt, at the start of the fit stage),
    `scan114-1view@infer` (another stage: fit, infer, evaluate), `scan114-1view@fit+2` (fails right
    after training step 2, i.e. after that step's checkpoint was written), `...:once` (fails the first
    attempt only: a transient failure that a retry fixes), `...:kill` (the first attempt kills the whole
    Dask worker process, as a crashed or preempted machine would: no exception, no cleanup), `...:hold`
    (the first attempt stops where it is and waits, holding its worker, until someone kills that worker:
    a Slurm job cancelled or out of walltime at a known point; the marker file names the worker and job),
    `...:meet=N` (not a failure: a barrier; the attempt signs in to $VIEWNETI_PIPELINE_MEET_DIR and waits
    until N attempts, of any runs, have signed in there; then all go on. Tests use it to make two runs'
    GPU tasks run at the same instant instead of hoping they do).
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
        if mode.startswith("meet="):
            _meet(mode.removeprefix("meet="), f"{item} at {at}")
            continue
        if mode in ("once", "kill", "hold"):
            marker = Path(marker_dir) / f".injected-{item}-{stage}-{after or 0}"
            if marker.exists():
                return
            marker.parent.mkdir(parents=True, exist_ok=True)
            if mode == "kill":
                _kill_this_worker(marker, f"{item} at {at}")
            if mode == "hold":
                _hold_until_killed(marker, f"{item} at {at}")
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


def _hold_until_killed(marker: Path, where: str) -> None:
    identity = worker_identity()
    write_json_atomic(marker, {"held": where, **identity, "time": time.time()})
    job = f", Slurm job {identity['slurm_job_id']}" if "slurm_job_id" in identity else ""
    logging.getLogger(CORE_LOGGER).warning("injected: %s holds Dask worker %s (pid %d%s) until it is killed", where,
                                           identity["worker_name"], identity["pid"], job)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
    raise InjectedFailure(f"injected hold of {where}: nobody killed the worker within {HOLD_LIMIT_S:.0f} s", False)


def _meet(parties: str, where: str) -> None:
    if not parties.isdigit() or int(parties) < 1:
        raise ValueError(f"{FAIL_ITEMS_ENV}: ':meet=N' needs a whole number N >= 1, got {parties!r} for {where}")
    if not os.environ.get(MEET_DIR_ENV):
        raise ValueError(f"{FAIL_ITEMS_ENV}: ':meet={parties}' for {where} needs ${MEET_DIR_ENV}, the shared "
                         "folder where the meeting attempts sign in")
    folder = Path(os.environ[MEET_DIR_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    identity = worker_identity()
    write_json_atomic(folder / f"{identity['pid']}-{time.time_ns()}.json", {"where": where, **identity})
    logging.getLogger(CORE_LOGGER).info("injected: %s waits at the meeting point %s for %s attempts", where,
                                        folder, parties)
    deadline = time.monotonic() + HOLD_LIMIT_S
    while len(list(folder.glob("*.json"))) < int(parties):
        if time.monotonic() > deadline:
            raise InjectedFailure(f"injected meeting of {where}: {parties} attempts did not sign in to {folder} "
                                  f"within {HOLD_LIMIT_S:.0f} s", False)
        time.sleep(0.1)
