"""The cluster files in docker/: checked as data, since no Docker daemon runs in CI.

What they must guarantee (issue: the cluster setup): nothing listens publicly, the Prefect API needs
credentials taken from the environment, each Dask GPU worker owns exactly one GPU and declares
`GPU=1`, and every service that runs our code shares the run directory.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())  # resolves the x-* anchors and << merges


def _required_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{(\w+):\?", text))


def test_only_loopback_ports_are_published(compose):
    published = {name: svc["ports"] for name, svc in compose["services"].items() if "ports" in svc}
    assert set(published) == {"prefect-server", "dask-scheduler"}, published
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"


def test_prefect_api_requires_credentials_from_the_environment(compose):
    services = compose["services"]
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?")
    clients = [name for name, svc in services.items() if "PREFECT_API_URL" in svc.get("environment", {})]
    assert {"prefect-worker", "dask-gpu-0", "dask-gpu-1"} <= set(clients)
    for name in clients:
        assert services[name]["environment"]["PREFECT_API_AUTH_STRING"].startswith("${PREFECT_API_AUTH_STRING:?"), name
    assert "POSTGRES_PASSWORD:?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    # env.example documents every variable compose refuses to start without
    example = {line.split("=", 1)[0] for line in (DOCKER / "env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert _required_variables((DOCKER / "compose.yaml").read_text()) <= example


def test_one_gpu_per_dask_worker_and_shared_runs(compose):
    services = compose["services"]
    workers = {name: svc for name, svc in services.items() if svc.get("command", "").startswith("dask worker")}
    assert len(workers) >= 2
    devices = []
    for name, svc in workers.items():
        argv = shlex.split(svc["command"])
        assert argv[argv.index("--resources") + 1] == "GPU=1", name
        assert argv[argv.index("--nworkers") + 1] == "1", name
        assert argv[2] == "tcp://dask-scheduler:8786", name
        (reservation,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert reservation["capabilities"] == ["gpu"] and len(reservation["device_ids"]) == 1, name
        devices += reservation["device_ids"]
        assert "runs:/opt/viewneti/outputs" in svc["volumes"], name
    assert len(devices) == len(set(devices)), f"two workers share a GPU: {devices}"
    worker = services["prefect-worker"]
    assert worker["environment"]["VIEWNETI_DASK_ADDRESS"] == "tcp://dask-scheduler:8786"
    assert "runs:/opt/viewneti/outputs" in worker["volumes"]


def test_image_runs_as_an_unprivileged_user_with_the_pinned_torch():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert users and users[-1] not in {"root", "0"}
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"torchvision==0.29.1"' in pyproject
    for path in ("viewneti_core", "viewneti_cli", "tasks", "flows", "deployments", "configs"):
        assert re.search(rf"^COPY {path} ", dockerfile, flags=re.MULTILINE), f"the image lacks {path}/"
