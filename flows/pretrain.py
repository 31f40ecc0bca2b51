"""`pretrain-view-mapper`: mode-3 pretraining on a GPU worker (or skip when a view mapper is given).

When a view mapper is ready it emits the event `viewneti.view-mapper.ready` (payload: checkpoint,
fingerprint, benchmark); the per-scan deployment is triggered by it (deployments/prefect.yaml).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from flows.cluster import gpu_task_runner, use_configured_cluster
from flows.common import obtain_view_mapper, preflight, prepare_data, stage_run_name
from flows.params import BenchmarkConfig

VIEW_MAPPER_READY = "viewneti.view-mapper.ready"


@flow(name="pretrain-view-mapper", flow_run_name=stage_run_name("pretrain"), task_runner=gpu_task_runner(),
      validate_parameters=True)
def pretrain_view_mapper_flow(config: BenchmarkConfig = BenchmarkConfig(), emit: bool = True) -> dict:  # noqa: B008
    """Prepare the pretraining scans, then train (or resume) the shared view mapper in RUN_DIR/pretrain."""
    config = config.resolved()
    get_run_logger().info("GPU tasks run on %s", use_configured_cluster(config.execution.cluster))
    preflight(config, pretraining=True, fitting=False)
    prepare_data(config)
    mapper = obtain_view_mapper(config)
    if emit:
        emit_event(
            event=VIEW_MAPPER_READY,
            resource={"prefect.resource.id": f"viewneti.view-mapper.{config.name}",
                      "prefect.resource.name": f"view mapper of {config.name}"},
            payload={"checkpoint": mapper["checkpoint"], "fingerprint": mapper["fingerprint"],
                     "benchmark": config.name, "run_dir": str(config.run_dir)},
        )
        get_run_logger().info("emitted %s for %s", VIEW_MAPPER_READY, mapper["checkpoint"])
    return mapper
