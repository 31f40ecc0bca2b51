"""Data tasks: prepare the DTU tree (download with resume + checksum, safe extraction, manifest)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.runtime import ledger_entry, retry_transient, run_logger


@task(name="prepare-dtu-data", retry_condition_fn=retry_transient, cache_policy=NO_CACHE, persist_result=False)
def prepare_dtu_task(
    sources: list[str],
    scans: list[int],
    out_dir: str,
    light: int,
    sha256: dict[str, str],
    cache_dir: str | None,
    ledger_dir: str,
) -> dict:
    """Not cached: prepare_dtu is itself idempotent (a tree stamped with the same inputs is verified
    and left alone), and re-checking the tree is what catches files deleted since the last run."""
    from viewneti_core.data.prepare import prepare_dtu

    logger = run_logger()
    logger.info("preparing %d scan(s) from %d source(s) into %s", len(scans), len(sources), out_dir)
    with ledger_entry(Path(ledger_dir), "prepare", "data"):
        result = prepare_dtu(sources, scans, Path(out_dir), light=light, sha256=sha256 or None,
                             cache_dir=Path(cache_dir) if cache_dir else None, progress=False)
    logger.info(result.message)
    return {
        "root": str(result.out_dir), "manifest": str(result.manifest), "scans": list(result.scans),
        "light": result.light, "n_images": result.n_images, "skipped": result.skipped,
        "scans_with_masks": list(result.scans_with_masks),
    }
