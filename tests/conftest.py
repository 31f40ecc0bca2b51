"""Shared pytest configuration. Expensive fixtures are session-scoped and live in tests/fixtures/.

The environment below is pinned for the whole session, before torch or Dask is imported, so the suite
behaves the same on a laptop and on a GPU machine: no CUDA device is visible (every device "auto"
resolves to the CPU, in this process and in every Dask worker and subprocess it starts), and a local
pipeline cluster has exactly 2 CPU workers with one "GPU" slot each (flows/cluster.py would otherwise
start one worker per visible GPU), and nothing inherited from a developer's shell points the pipeline at
another cluster or injects faults. Tests that change the environment do it through `monkeypatch`.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# In-process task tests attach Prefect's API log handler to viewneti_core's logger; later library calls
# outside any flow run would then warn on every log line.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["VIEWNETI_DASK_WORKERS"] = "2"
# A developer's shell may point the pipeline at a real cluster or inject faults: not in the tests.
for _inherited in ("VIEWNETI_DASK_ADDRESS", "VIEWNETI_PIPELINE_FAIL_ITEMS", "VIEWNETI_CODE_VERSION",
                   "VIEWNETI_VIEW_MAPPER_REGISTRY"):
    os.environ.pop(_inherited, None)

pytest_plugins = ["fixtures.models", "fixtures.data", "fixtures.runs"]
