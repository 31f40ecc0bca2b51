"""Preflight: check what a benchmark needs but uses only hours later, before any of that work starts.

The base model is loaded after data preparation (which downloads ~100 GB of DTU for the real run) and
the LPIPS backbone after fitting and inference; a missing one should cost seconds, not a day.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_logger


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(models: list[tuple[str, str | None]], lpips_weights: str) -> dict:
    """`models`: (name or path, revision) pairs; `lpips_weights`: the evaluation's LPIPS backbone."""
    from viewneti_core.metrics import check_lpips_weights
    from viewneti_core.sd_models import check_model_available

    logger = run_logger()
    found = {"models": [check_model_available(name, revision) for name, revision in dict.fromkeys(models)],
             "lpips": check_lpips_weights(lpips_weights)}
    logger.info("preflight: base model(s) %s, LPIPS backbone %s", ", ".join(found["models"]), found["lpips"])
    return found
