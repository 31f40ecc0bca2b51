"""`pretrain-view-mapper`: mode-3 pretraining on a GPU worker (or skip when a view mapper is given).

When a view mapper is ready it saves the resolved benchmark config as RUN_DIR/benchmark-config.json and
emits the event `viewneti.view-mapper.ready` (payload: checkpoint, fingerprint, benchmark, run_dir and
config_file); the `on-view-mapper-ready` deployment is triggered by it and runs that benchmark's whole
fan-out with that view mapper (deployments/prefect.yaml, flows/benchmark.py).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.events import emit_event

from flows.cluster import gpu_task_runner, use_configured_cluster
from flows.params import BenchmarkConfig
from flows.stages import obtain_view_mapper, preflight, prepare_data, stage_run_name
from tasks.runtime import write_json_atomic

VIEW_MAPPER_READY = "viewneti.view-mapper.ready"
CONFIG_FILE = "benchmark-config.json"


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
        # The event carries a reference to the whole (resolved, absolute-path) config rather than the config
        # itself: events are size-limited, and a file in the run directory is also a record of what ran.
        config_file = write_json_atomic(config.run_dir / CONFIG_FILE, config.model_dump(mode="json"))
        emit_event(
            event=VIEW_MAPPER_READY,
            resource={"prefect.resource.id": f"viewneti.view-mapper.{config.name}",
                      "prefect.resource.name": f"view mapper of {config.name}"},
            payload={"checkpoint": mapper["checkpoint"], "fingerprint": mapper["fingerprint"],
                     "benchmark": config.name, "run_dir": str(config.run_dir), "config_file": str(config_file)},
        )
        get_run_logger().info("emitted %s for %s", VIEW_MAPPER_READY, mapper["checkpoint"])
    return mapper
