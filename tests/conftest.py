"""Shared pytest configuration. Expensive fixtures are session-scoped and live in tests/fixtures/.

The environment below is pinned for the whole session, before torch or Dask is imported, so the suite
behaves the same on a laptop and on a GPU machine: no CUDA device is visible (every device "auto"
resolves to the CPU, in this process and in every Dask worker and subprocess it starts), and a local
pipeline cluster has exactly 2 CPU workers with one "GPU" slot each (flows/cluster.py would otherwise
start one worker per visible GPU), and nothing inherited from a developer's shell points the pipeline at
another cluster or injects faults. Tests that change the environment do it through `monkeypatch`.
The exception: VIEWNETI_TEST_GPU=1 leaves CUDA visible and runs only the tests marked `gpu` (tests/test_gpu.py).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process task tests attach Prefect's API log handler to viewneti_core's logger; later library calls
# outside any flow run would then warn on every log line.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
# VIEWNETI_TEST_GPU=1 (bench/gpu_check.sh, with `-m gpu`) keeps the GPUs visible for the tests marked `gpu`.
GPU_RUN = os.environ.get("VIEWNETI_TEST_GPU") == "1"
if not GPU_RUN:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# A developer's shell may point the pipeline at a real cluster or Prefect home, change the Dask workers or
# their log level, pin the code version or the ledger, or inject faults: not in the tests. Every
# VIEWNETI_* variable is cleared except the suite's own switches (VIEWNETI_TEST_*, e.g. COMPILE, GPU).
for _inherited in [name for name in os.environ if name.startswith("VIEWNETI_") and not name.startswith("VIEWNETI_TEST_")]:
    del os.environ[_inherited]
os.environ["VIEWNETI_DASK_WORKERS"] = "2"

import pytest  # noqa: E402 - after the environment is pinned

pytest_plugins = ["fixtures.models", "fixtures.data", "fixtures.runs", "fixtures.prefect_server",
                  "fixtures.slurm"]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only under VIEWNETI_TEST_GPU=1 on a machine with CUDA; elsewhere they are
    skipped with the reason. With the variable set and no CUDA device the run stops: it asked for them."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if GPU_RUN:
        import torch

        if gpu_items and not torch.cuda.is_available():
            raise pytest.UsageError("VIEWNETI_TEST_GPU=1 but torch sees no CUDA device (check CUDA_VISIBLE_DEVICES, "
                                    "the driver and nvidia-smi)")
        cpu_only = pytest.mark.skip(reason="VIEWNETI_TEST_GPU=1 runs only the tests marked gpu (CUDA is visible)")
        for item in items:
            if not item.get_closest_marker("gpu"):
                item.add_marker(cpu_only)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: run `VIEWNETI_TEST_GPU=1 pytest -m gpu` on a GPU machine "
                                   "(bench/gpu_check.sh does); the rest of the suite hides CUDA")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _prefect_env_for_server_tests(request):
    """A test that uses the session's Prefect server (directly or through a fixture) runs pointed at it,
    and what it creates there (concurrency limits, automations) is deleted afterwards; other tests run
    with the environment untouched."""
    if "prefect_server" not in request.fixturenames:
        yield
        return
    from fixtures.prefect_server import prefect_env

    with prefect_env(request.getfixturevalue("prefect_server")):
        yield


@pytest.fixture
def listen_to(caplog):
    """`with listen_to("flows.cluster", logging.WARNING): ...` records that logger's lines in `caplog`.

    caplog's handler sits on the root logger and capfd sees only the stderr handler that was current when
    logging was configured: earlier tests (Prefect's logging setup, a dictConfig) may keep a record from
    both. The handler is put on the logger itself (and only there: each record once)."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def listening(name: str, level: int):
        logger = logging.getLogger(name)
        logger.addHandler(caplog.handler)
        propagate, logger.propagate = logger.propagate, False
        disabled, logger.disabled = logger.disabled, False  # a logging.config.dictConfig may have disabled it
        try:
            with caplog.at_level(level, logger=name):
                yield caplog
        finally:
            logger.removeHandler(caplog.handler)
            logger.propagate, logger.disabled = propagate, disabled

    return listening
