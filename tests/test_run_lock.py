"""One writer per run directory (issue 21, section 1), with real processes and real files.

Two `viewneti train` on one run directory, and a `--resume latest` next to a live run, fail at once
naming the holder's host and PID; a holder killed with SIGKILL leaves a record that the next run
reports and takes over; checkpoint temp directories are unique per writer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fixtures.runs import make_train_config

from viewneti_core.config import dump_config
from viewneti_core.errors import RunInUseError
from viewneti_core.run_lock import RunLock, hold_run_lock, lock_path, read_holder
from viewneti_core.training.checkpoints import TrainingState, list_checkpoints, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from viewneti_core.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); time.sleep(600)")


def _holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_lock_names_the_holder_and_is_taken_over_after_kill_9(tmp_path):
    run_dir = tmp_path / "runs" / "exp"
    proc = _holder(run_dir)
    try:
        with pytest.raises(RunInUseError) as err:
            RunLock(run_dir).acquire()
        message = str(err.value)
        assert str(run_dir) in message and f"pid {proc.pid}" in message and socket.gethostname() in message
        assert read_holder(run_dir)["pid"] == proc.pid
    finally:
        _kill(proc)
    lock = RunLock(run_dir).acquire()  # the kernel released the dead holder's flock
    try:
        assert lock.previous is not None and lock.previous["pid"] == proc.pid  # its record: reported, replaced
        assert read_holder(run_dir)["pid"] == os.getpid()
        with pytest.raises(RunInUseError):  # a second lock in the same process is refused too
            RunLock(run_dir).acquire()
    finally:
        lock.release()
    # hold_run_lock is re-entrant in one thread (the CLI locks before train() does), not across threads.
    errors = []
    with hold_run_lock(run_dir) as outer, hold_run_lock(run_dir) as inner:
        assert inner is outer
        thread = threading.Thread(target=lambda: errors.append(_try_hold(run_dir)))
        thread.start()
        thread.join()
    assert errors == ["RunInUseError"]
    assert read_holder(run_dir) is None  # a clean release leaves no record, so nothing looks stale
    again = RunLock(run_dir).acquire()
    assert again.previous is None
    again.release()
    assert not run_dir.exists() and lock_path(run_dir).is_file()  # the lock lives beside the run dir


def _try_hold(run_dir: Path) -> str:
    try:
        with hold_run_lock(run_dir):
            return "held"
    except RunInUseError:
        return "RunInUseError"


def test_checkpoint_temp_dirs_are_unique_per_writer(tmp_path, camera_normalization):
    """A second writer of the same step must not reuse or delete the first one's temp directory."""
    from viewneti_core.method.mappers import build_mapper

    mapper = build_mapper("object", 32, 1.0, token="<o>", super_category_token="object", hidden_dim=8)
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    others = tmp_path / "checkpoints" / ".checkpoint-5.tmp"  # today's fixed name, used by another writer
    (others / "mappers").mkdir(parents=True)
    (others / "mappers" / "in-progress.json").write_text("{}")
    final = save_checkpoint(tmp_path, 5, {"<o>": mapper}, {}, optimizer, scheduler, TrainingState(5, 0, 5))
    assert (others / "mappers" / "in-progress.json").is_file()  # untouched
    assert final.name == "checkpoint-5" and (final / "training_state.safetensors").is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-5"]


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "viewneti_cli.viewneti", "train", "--config", str(config), *extra]


def _steps(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]


@pytest.mark.slow  # three `viewneti train` processes on the tiny model
def test_second_train_and_resume_fail_at_once_while_a_run_trains(tmp_path, synthetic_dtu_root, tiny_model_dir):
    runs = tmp_path / "runs"
    config = make_train_config(synthetic_dtu_root, tiny_model_dir, runs, 2, "shared",
                               optim={"max_train_steps": 100_000}, log={"save_steps": 2})
    config_file = tmp_path / "train.yaml"
    config_file.write_text(dump_config(config))
    run_dir = runs / "shared"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first_log = (tmp_path / "first.log").open("w")  # a file, not a pipe: progress bars must never block it
    first = subprocess.Popen(_train_cmd(config_file), cwd=REPO, env=env, stdout=first_log, stderr=first_log)
    try:
        deadline = time.monotonic() + 240
        while len(list_checkpoints(run_dir)) < 2:  # it has trained and written checkpoints
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the first run wrote no checkpoints in 240 s"
            time.sleep(0.5)
        # A second run of the same config and a --resume of the live run, started together.
        second = subprocess.Popen(_train_cmd(config_file), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        resume = subprocess.Popen(_train_cmd(config_file, "--resume", "latest"), cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for proc in (second, resume):
            _, err = proc.communicate(timeout=240)
            assert proc.returncode == 2, err[-3000:]
            assert "Traceback" not in err
            line = next(line for line in err.splitlines() if line.startswith("viewneti: error:"))
            assert f"run directory {run_dir} is in use" in line
            assert f"host {socket.gethostname()}, pid {first.pid}" in line
        assert first.poll() is None  # the first run was not disturbed
        steps = _steps(run_dir / "metrics.jsonl")
        assert steps == list(range(1, len(steps) + 1))  # one writer: no duplicated or missing step
    finally:
        if first.poll() is None:
            _kill(first)  # a killed holder: its lock record stays behind
        first_log.close()
    latest = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    assert read_holder(run_dir)["pid"] == first.pid
    done = subprocess.run(_train_cmd(config_file, "--resume", "latest", "--optim.max_train_steps", str(latest + 1)),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "taking over the lock" in done.stderr and f"pid {first.pid}" in done.stderr
    steps = _steps(run_dir / "metrics.jsonl")
    assert steps == list(range(1, latest + 2))  # truncated to the checkpoint, then continued
    assert read_holder(run_dir) is None  # released cleanly
    assert not list((run_dir / "checkpoints").glob(".checkpoint-*"))  # no temp dirs left behind
