"""Preflight: check what a benchmark needs but uses only hours later, before any of that work starts.

The base model is loaded after data preparation (which downloads ~100 GB of DTU for the real run) and
the LPIPS backbone after fitting and inference; a missing one should cost seconds, not a day.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.runtime import run_logger


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(models: list[tuple[str, str | None]], lpips_weights: str) -> dict:
    """`models`: (name or path, revision) pairs; `lpips_weights`: the evaluation's LPIPS backbone.
    Every missing one is named in one PreflightError."""
    from viewneti_core.preflight import check_requirements

    logger = run_logger()
    found = check_requirements([tuple(m) for m in models], lpips_weights)
    logger.info("preflight: base model(s) %s, LPIPS backbone %s", ", ".join(found["models"]), found["lpips"])
    return found
