"""One writer per run directory: an exclusive `flock` held for the whole training run.

Two trainings in one run directory (a user starting a config twice, a retried cluster task while the
lost worker's process still runs, `--resume latest` next to a live run) would interleave checkpoints,
metrics and config.yaml. The first one takes `EXP_DIR/.NAME.lock` (beside the run directory, so a
failed start or resume changes nothing inside it) and holds it until it ends; any other fails at once,
naming the holder's host and PID, which the holder writes into the lock file.

What it relies on: the kernel's advisory `flock`. The kernel releases it when the holder's process
ends in any way (kill -9 included), so a stale lock cannot block a new run; the record a killed holder
leaves behind is reported and replaced ("taking over"). On NFS, Linux implements `flock` with the
server's byte-range locks (NLM for NFSv3, built into NFSv4), so it holds across hosts when the
filesystem is mounted with locking (not `nolock` or `local_lock=flock|all`); Lustre needs `-o flock`
(`localflock` locks only one client). A filesystem without locks fails the run with a clear error
rather than running unprotected. If a host dies, its NFS locks are freed when its lease expires
(NFSv4: about 90 s); before each checkpoint the holder re-reads the record and stops if another
process has taken the lock meanwhile.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from viewneti_core.atomic_files import file_mode
from viewneti_core.errors import RunInUseError

logger = logging.getLogger(__name__)

_CONTENDED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
_NO_LOCKS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL)
RECORD_WAIT_S = 2.0  # how long a loser waits for a just-started holder to write its record


def lock_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def _describe(record: dict | None) -> str:
    if not record:
        return "holder not recorded yet"
    return f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, since {record.get('started', '?')}"


def _parse(data: bytes) -> dict | None:
    try:
        record = json.loads(data.decode("utf-8")) if data.strip() else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_holder(run_dir: Path) -> dict | None:
    """The record of the process that holds (or last held without releasing) the run's lock."""
    try:
        with open(lock_path(run_dir), "rb") as f:  # a fresh open: NFS close-to-open gives current data
            return _parse(f.read(4096))
    except FileNotFoundError:
        return None


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = lock_path(self.run_dir)
        self.record: dict | None = None
        self.previous: dict | None = None  # a dead holder's record found when taking the lock
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())  # never O_TRUNC: the holder's record
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in _CONTENDED:
                raise RunInUseError(self._in_use_message()) from None
            if exc.errno in _NO_LOCKS:
                raise OSError(exc.errno, f"the filesystem does not support file locks ({exc.strerror}); a run "
                              "directory must be on one that does (NFS mounted with locking, Lustre with "
                              "-o flock), so that two runs cannot write into it at once", str(self.path)) from None
            raise
        self._fd = fd
        self.previous = _parse(os.pread(fd, 4096, 0))
        if self.previous:
            logger.warning("taking over the lock of %s: its last holder (%s) ended without releasing it",
                           self.run_dir, _describe(self.previous))
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": secrets.token_hex(8),
                       "command": " ".join(sys.argv)[:300]}
        try:
            self._write(json.dumps(self.record).encode() + b"\n")
        except BaseException:
            self.release()
            raise
        return self

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        if data:
            os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _in_use_message(self) -> str:
        deadline = time.monotonic() + RECORD_WAIT_S
        record = read_holder(self.run_dir)
        while not record and time.monotonic() < deadline:  # the holder locked a moment ago
            time.sleep(0.05)
            record = read_holder(self.run_dir)
        return (f"run directory {self.run_dir} is in use by another training run ({_describe(record)}; lock file "
                f"{self.path}). Two runs in one directory would corrupt each other's checkpoints and metrics: "
                "wait for it to end or stop it (then --resume latest continues it), or choose another log.exp_name")

    def check_still_held(self) -> None:
        """Stop if the record is no longer ours (e.g. an NFS lease lost while this host was cut off)."""
        current = read_holder(self.run_dir)
        if self.record is not None and (current or {}).get("token") != self.record["token"]:
            raise RunInUseError(f"lost the lock of run directory {self.run_dir}: {self.path} now names "
                                f"{_describe(current)}; stopping before writing into it")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a clean end leaves no record: only a killed holder's record is "stale"
        except OSError:
            pass
        finally:
            os.close(fd)  # closing releases the flock
        # The lock file itself stays: deleting it would let a waiter lock a file nobody else can see.


_HELD: dict[tuple[str, int], RunLock] = {}  # (lock file, thread) -> the lock that thread holds


@contextmanager
def hold_run_lock(run_dir: Path, enabled: bool = True) -> Iterator[RunLock | None]:
    """Hold the run directory's lock for the `with` block (`enabled=False`: the non-zero ranks of a
    multi-process run, which share their rank 0's lock).

    Re-entrant in one thread, so the CLI can take the lock before importing torch (a second run then
    fails in a second) and `train()` inside it finds it held; another thread of the same process (two
    pipeline tasks in one Dask worker) is refused like another process."""
    if not enabled:
        yield None
        return
    key = (str(lock_path(run_dir).absolute()), threading.get_ident())
    if key in _HELD:
        yield _HELD[key]
        return
    lock = RunLock(run_dir).acquire()
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()
