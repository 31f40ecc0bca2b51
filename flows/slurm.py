"""Asking Slurm, before any work, whether it will run the jobs of a dask-jobqueue `SLURMCluster`.

Under adapt (minimum 0) no job is submitted when the cluster starts, and a job Slurm refuses later only
shows up as an error in dask-jobqueue's background loop: the flow would wait forever for workers that
cannot come. So at the start of a flow run the cluster's own job script goes through
`sbatch --test-only` (Slurm's verdict on the partition, account, CPUs, memory, gres, walltime; nothing
is queued), and the partition must be UP: a DOWN partition still accepts jobs, which then never start.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SLURM_TIMEOUT_S = 30.0


class SlurmRefusal(RuntimeError):
    """Slurm would not run this cluster's jobs; the message quotes Slurm."""


def is_slurm_cluster(cluster) -> bool:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        return False
    return isinstance(cluster, SLURMCluster)


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    executable = shutil.which(args[0])
    if executable is None:
        raise SlurmRefusal(f"{args[0]} not found on PATH: this host cannot submit Slurm jobs")
    return subprocess.run([executable, *args[1:]], input=stdin, capture_output=True, text=True,
                          timeout=SLURM_TIMEOUT_S)


def _slurm_says(done: subprocess.CompletedProcess) -> str:
    return " / ".join(line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip())


def script_partition(script: str) -> str | None:
    """The partition a job script asks for (`#SBATCH -p X` or `--partition=X`), None for the default."""
    for line in script.splitlines():
        match = re.match(r"#SBATCH\s+(?:-p\s*|--partition[=\s])\s*(\S+)", line.strip())
        if match:
            return match.group(1)
    return None


def partition_state(partition: str | None) -> tuple[str, str]:
    """(name, State) of `partition` (None: the default one) from `scontrol show partition`."""
    done = _run(["scontrol", "show", "partition", "--oneliner", *([partition] if partition else [])])
    if done.returncode != 0:
        raise SlurmRefusal(f"scontrol show partition: {_slurm_says(done)}")
    for line in done.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if partition is not None or fields.get("Default") == "YES":
            return fields.get("PartitionName", partition or "?"), fields.get("State", "?")
    raise SlurmRefusal("Slurm has no default partition: set kwargs.queue")


def check_slurm_cluster(cluster) -> str:
    """Raise SlurmRefusal, quoting Slurm, unless a job of `cluster` would be accepted and could start.
    Returns Slurm's answer to the test submission (for the logs)."""
    script = cluster.job_script()
    with tempfile.TemporaryDirectory(prefix="viewneti-sbatch-") as folder:
        path = Path(folder) / "job.sh"
        path.write_text(script)
        done = _run(["sbatch", "--test-only", str(path)])
    if done.returncode != 0:
        raise SlurmRefusal(f"sbatch --test-only of the worker job script was refused: {_slurm_says(done)}")
    name, state = partition_state(script_partition(script))
    if state != "UP":
        raise SlurmRefusal(f"partition {name!r} is {state} (scontrol show partition: State={state}): jobs would "
                           "wait in the queue and never start")
    return _slurm_says(done)
