"""The deploy step: what a Prefect server needs besides the deployments themselves.

    python -m viewneti_cli.deploy [--gpu-slots N]

creates (or keeps) the process work pool, the GPU concurrency limit (with --gpu-slots), the automation
that marks zombie flow runs Crashed, and then registers every deployment of deployments/prefect.yaml
(`prefect deploy --all`). Safe to run again: each piece is created only when missing, the automation is
replaced so that it always matches flows/zombie_runs.py (where it is defined).

Zombie runs: a flow run whose process is killed (kill -9, a lost node) never reports a final state and
would stay RUNNING forever. Flow runs send a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
seconds (set to HEARTBEAT_S for the work pool in deployments/prefect.yaml); the automation turns a
RUNNING run that sent no heartbeat and no final state for ZOMBIE_AFTER_S into Crashed (Prefect's
documented recipe). A re-run then reuses every finished task result from the run directory, as after
any other failure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

# The automation lives with the flows: `viewneti-pipeline run` and `demo` install it too (flows/zombie_runs.py).
from flows.zombie_runs import (  # noqa: F401 - re-exported for scripts and tests
    HEARTBEAT_S,
    ZOMBIE_AFTER_S,
    ZOMBIE_AUTOMATION,
    ensure_zombie_automation,
    zombie_automation,
)

REPO = Path(__file__).resolve().parents[1]
WORK_POOL = "viewneti-process"


def ensure_work_pool() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(WORK_POOL)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=WORK_POOL, type="process"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m viewneti_cli.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-slots", type=int, default=None,
                        help="create the global concurrency limit viewneti-gpu with this many slots if missing")
    args = parser.parse_args(argv)
    ensure_work_pool()
    if args.gpu_slots is not None:
        from flows.cluster import ensure_gpu_limit

        print(f"viewneti-gpu: {ensure_gpu_limit(args.gpu_slots)} slot(s)")
    print(f"automation {ZOMBIE_AUTOMATION}: {ensure_zombie_automation(replace=True)[0]}")
    done = subprocess.run([sys.executable, "-m", "prefect", "deploy", "--prefect-file", "deployments/prefect.yaml",
                           "--all", "--no-prompt"], cwd=REPO)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
