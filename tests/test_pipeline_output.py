"""What `viewneti-pipeline` prints when a run fails: the cause first and short, every missing thing
named, and only outputs that exist (a real Prefect server, the real command in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_failed_run_prints_the_cause_first_and_short(prefect_server, tmp_path):
    """It printed 181 lines with 4 tracebacks, then outputs marked "(missing)" and artifact names that
    were never created; preflight named only the first missing thing."""
    from viewneti_core.evaluation.metrics import VGG16_FILE

    missing_model = tmp_path / "no-such-model"
    config = {
        "name": "fail-fast", "run_dir": str(tmp_path / "run"), "test_scans": [21], "n_views": [1],
        "data": {"sources": ["http://127.0.0.1:9/none.zip"]},
        "pretrain": {"learnable_mode": 3, "model": {"pretrained_model_name_or_path": str(missing_model)},
                     "data": {"dtu_pretrain_scans": [3]}},
        "fit": {"learnable_mode": 5, "model": {"pretrained_model_name_or_path": str(missing_model)}},
        "evaluation": {"lpips_weights": "pretrained", "device": "cpu"},
        "execution": {"retries": 0, "retry_delay_s": 0},
    }
    path = tmp_path / "fail.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ) | {"PYTHONUNBUFFERED": "1", "TORCH_HOME": str(tmp_path / "empty-torch-home")}
    done = subprocess.run([sys.executable, "-m", "viewneti_cli.pipeline", "run", "--config", str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    text = done.stdout + done.stderr
    lines = [line for line in text.splitlines() if line.strip()]
    assert done.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert len(lines) <= 40, f"{len(lines)} lines:\n" + "\n".join(lines)
    failed = next(i for i, line in enumerate(lines) if line.startswith("the benchmark FAILED"))
    assert "2 things this run needs are missing" in lines[failed]
    summary = "\n".join(lines[failed:])
    assert str(missing_model) in summary and VGG16_FILE in summary and "--lpips none" in summary
    assert "(missing)" not in text and "no outputs were written" in summary
    assert "artifacts:" not in text and "report.md" not in text
    assert not Path(tmp_path / "run" / "data").exists()
