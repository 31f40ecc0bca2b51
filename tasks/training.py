"""Training tasks: mode-3 pretraining of the view mapper and mode-5 fitting of one (scan, n_views) item.

Both resume from the run's last checkpoint when one exists (a crashed or preempted attempt loses at
most `log.save_steps` steps) and start over only when the checkpoint cannot be continued under the new
configuration: the rule of `viewneti train --resume` (`viewneti_core.training.checkpoints.resume_problems`).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from tasks.fault_drills import maybe_inject_failure
from tasks.runtime import (
    fingerprint_files,
    gpu_slot,
    ledger_entry,
    retry_transient,
    run_logger,
)
from viewneti_core.config import ViewNetiConfig


def _resume_mode(config: ViewNetiConfig, logger) -> tuple[ViewNetiConfig, str | None]:
    """('latest', same config) to continue a compatible run, else (config with overwrite_ok, None)."""
    from viewneti_core.training.checkpoints import list_checkpoints, resume_problems
    from viewneti_core.training.trainer import run_dir_of

    run_dir = run_dir_of(config)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        problems = resume_problems(checkpoints[-1], config.model_dump(mode="json"))
        if not problems:
            logger.info("resuming %s from %s", run_dir, checkpoints[-1].name)
            return config, "latest"
        logger.warning("%s holds checkpoints of a different configuration (%s); starting over", run_dir,
                       "; ".join(problems))
    elif run_dir.exists() and any(run_dir.iterdir()):
        logger.info("%s has no checkpoint yet (an earlier attempt stopped early); starting over", run_dir)
    return config.model_copy(update={"log": config.log.model_copy(update={"overwrite_ok": True})}), None


PROGRESS_EVERY_S = 10.0  # a UI progress update is one API call: at most one per this many seconds


def last_loss(metrics_file: Path) -> float | None:
    """The loss of the last step in the run's metrics.jsonl (read from its end: the file grows every step)."""
    import json

    try:
        with metrics_file.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().splitlines()
        return float(json.loads(lines[-1])["loss"]) if lines else None
    except (OSError, ValueError, KeyError):
        return None


class TrainingProgress:
    """A Prefect progress artifact for a long training run: step/total, last loss and an ETA, updated
    while it runs (first step, then every PROGRESS_EVERY_S seconds, and the last step)."""

    def __init__(self, key: str, total: int, start_step: int, metrics_file: Path, label: str):
        import time

        from prefect.artifacts import create_progress_artifact

        self.total, self.start_step, self.metrics_file, self.label = max(1, total), start_step, metrics_file, label
        self.t0 = self.last = time.monotonic()
        self.id = create_progress_artifact(progress=100.0 * start_step / self.total, key=key,
                                           description=self.describe(start_step, None, None))

    def describe(self, step: int, loss: float | None, eta_s: float | None) -> str:
        parts = [f"{self.label}: step {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if eta_s is not None:
            parts.append(f"ETA {_duration(eta_s)}")
        return " · ".join(parts)

    def update(self, step: int) -> None:
        import time

        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if step != self.start_step + 1 and step < self.total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = (step - self.start_step) / max(now - self.t0, 1e-9)  # steps/s of this attempt
        eta = (self.total - step) / rate if rate > 0 else None
        update_progress_artifact(artifact_id=self.id, progress=100.0 * min(step, self.total) / self.total,
                                 description=self.describe(step, last_loss(self.metrics_file), eta))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _step_hook(logger, total: int, item: str, ledger_dir: Path, progress: TrainingProgress | None = None):
    every = max(1, total // 10)

    def on_step_end(step: int) -> None:
        if step % every == 0 or step == total:
            logger.info("step %d/%d", step, total)
        if progress is not None:
            progress.update(step)
        maybe_inject_failure(item, "fit", ledger_dir, step=step)

    return on_step_end


def _train(config: ViewNetiConfig, logger, item: str, ledger_dir: Path, ledger: dict,
           progress_key: str | None = None) -> dict:
    """`progress_key`: also show the steps, loss and ETA as a progress artifact of that key."""
    from viewneti_core.training.checkpoints import list_checkpoints
    from viewneti_core.training.trainer import METRICS_FILE, run_dir_of, train

    config, resume = _resume_mode(config, logger)
    start = 0
    if resume is not None:
        start = ledger["resumed_from"] = int(list_checkpoints(run_dir_of(config))[-1].name.split("-")[-1])
    progress = None
    if progress_key is not None:
        progress = TrainingProgress(progress_key, config.optim.max_train_steps, start,
                                    run_dir_of(config) / METRICS_FILE, f"pretraining {item}")
    hook = _step_hook(logger, config.optim.max_train_steps, item, ledger_dir, progress)
    result = train(config, resume=resume, on_step_end=hook, progress=False)
    ledger["steps"] = result.steps
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.final_checkpoint), "step": result.steps,
            "weights": result.weights}


def view_mapper_fingerprint(checkpoint: Path) -> str:
    """Content hash of a checkpoint's view mapper: part of the cache key of everything fitted on it."""
    from viewneti_core.method.conditioning import VIEW_MAPPER_KEY
    from viewneti_core.training.checkpoints import read_checkpoint_info

    stem = Path(checkpoint) / read_checkpoint_info(checkpoint)["mappers"][VIEW_MAPPER_KEY]
    return fingerprint_files(sorted(stem.parent.glob(stem.name + ".*")))


@task(name="pretrain-view-mapper", retry_condition_fn=retry_transient, task_run_name="pretrain-{name}")
def pretrain_task(config: ViewNetiConfig, name: str, ledger_dir: str, progress_key: str | None = None) -> dict:
    """Mode 3 on `config.data.dtu_pretrain_scans`; returns the final checkpoint and its view-mapper hash.

    `progress_key`: the progress artifact (steps, loss, ETA) to keep up to date while it trains.
    """
    logger = run_logger()
    if config.learnable_mode != 3:
        raise ValueError(f"pretraining is learnable_mode 3, got {config.learnable_mode}")
    with gpu_slot(), ledger_entry(Path(ledger_dir), "pretrain", name) as ledger:
        record = _train(config, logger, name, Path(ledger_dir), ledger, progress_key)
    record["fingerprint"] = view_mapper_fingerprint(Path(record["checkpoint"]))
    logger.info("view mapper ready: %s (step %d, %s weights)", record["checkpoint"], record["step"], record["weights"])
    return record


@task(name="resolve-view-mapper", retry_condition_fn=retry_transient)
def resolve_view_mapper_task(spec: str) -> dict:
    """A given pretrained view mapper (registry name, run dir or checkpoint dir) as a record."""
    from viewneti_core.training.view_mapper_registry import resolve_view_mapper_path

    stem = resolve_view_mapper_path(spec)
    checkpoint = stem.parent.parent if (stem.parent.parent / "checkpoint.json").is_file() else None
    fingerprint = fingerprint_files(sorted(stem.parent.glob(stem.name + ".*")))
    run_logger().info("using the given view mapper %s (%s)", spec, stem)
    return {"checkpoint": str(checkpoint) if checkpoint else str(stem), "spec": spec, "fingerprint": fingerprint,
            "step": None, "weights": None}


@task(name="fit-scan", retry_condition_fn=retry_transient, task_run_name="fit-{item}")
def fit_task(config: ViewNetiConfig, item: str, view_mapper_fingerprint: str, ledger_dir: str) -> dict:
    """Mode 5: fit the object mapper of one scan from n views next to the frozen pretrained view mapper.

    `view_mapper_fingerprint` is only part of the cache key: a new view mapper means a new fit.
    """
    logger = run_logger()
    if config.learnable_mode != 5:
        raise ValueError(f"per-scan fitting is learnable_mode 5, got {config.learnable_mode}")
    with gpu_slot(), ledger_entry(Path(ledger_dir), "fit", item) as ledger:
        maybe_inject_failure(item, "fit", Path(ledger_dir))
        record = _train(config, logger, item, Path(ledger_dir), ledger)
    record.update({"item": item, "scan": config.data.dtu_scan, "n_views": config.data.dtu_subset})
    return record
