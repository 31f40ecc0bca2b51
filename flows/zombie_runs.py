"""Flow runs whose process is killed (kill -9, a lost node, an OOM kill) must not stay RUNNING forever.

Such a run never reports a final state. Flow runs send a heartbeat event every HEARTBEAT_S seconds
(Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY), and the automation below turns a RUNNING run that sent no
heartbeat and no final state for ZOMBIE_AFTER_S into Crashed (Prefect's documented recipe). Runs that
never sent a heartbeat are never touched.

Both the deploy step (`python -m viewneti_cli.deploy`, which replaces the automation so it matches this
file) and every run the pipeline starts itself (`viewneti-pipeline run` / `demo`, which creates it only
when the server lacks it) install it; the latter also makes its own flow run send heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

logger = logging.getLogger(__name__)

HEARTBEAT_S = 30  # Prefect's minimum; must match PREFECT_FLOWS_HEARTBEAT_FREQUENCY in deployments/prefect.yaml
ZOMBIE_AFTER_S = 3 * HEARTBEAT_S  # three missed heartbeats
ZOMBIE_AUTOMATION = "viewneti-crash-zombie-flow-runs"


def zombie_automation():
    """Proactive trigger: after a heartbeat, expect another heartbeat or a final state within ZOMBIE_AFTER_S."""
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description=f"Mark a flow run Crashed when it sent no heartbeat for {ZOMBIE_AFTER_S} s (its process died)",
        trigger=EventTrigger(
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[ChangeFlowRunState(state="CRASHED",
                                    message=f"No heartbeat for {ZOMBIE_AFTER_S} s: the flow run's process is gone")],
    )


def ensure_zombie_automation(replace: bool = False) -> tuple[str, bool]:
    """(id of the automation, whether this call created it). An existing one is kept unless `replace`
    (the deploy step). Two pipelines starting at once may both create it: all but the lowest id are then
    deleted, by both, so one remains."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(ZOMBIE_AUTOMATION)
        if existing and not replace:
            return str(min(str(a.id) for a in existing)), False
        for old in existing:
            client.delete_automation(old.id)
        client.create_automation(zombie_automation())
        found = sorted(client.read_automations_by_name(ZOMBIE_AUTOMATION), key=lambda a: str(a.id))
        for extra in found[1:]:
            with contextlib.suppress(Exception):  # the other starter may have deleted it first
                client.delete_automation(extra.id)
        return str(found[0].id), True


@contextlib.contextmanager
def crash_marking() -> Iterator[str]:
    """Around a flow run started in this process: the automation exists on the server and the run sends
    heartbeats at least every HEARTBEAT_S (a slower configured frequency would let the automation mark a
    live run Crashed). Yields a line for the console."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    try:
        automation, created = ensure_zombie_automation()
        line = (f"a killed run is marked Crashed after {ZOMBIE_AFTER_S} s without a heartbeat (automation "
                f"{ZOMBIE_AUTOMATION}{', created now' if created else ''})")
    except Exception as exc:  # noqa: BLE001 - e.g. a server without automations: the run still runs
        logger.warning("could not install the automation %s (%s): a killed run of this pipeline would stay "
                       "RUNNING; `python -m viewneti_cli.deploy` installs it", ZOMBIE_AUTOMATION, exc)
        line = f"WARNING: no {ZOMBIE_AUTOMATION} automation ({type(exc).__name__}): a killed run stays RUNNING"
    configured = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    frequency = HEARTBEAT_S if configured is None else min(int(configured), HEARTBEAT_S)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: frequency}):
        yield line
