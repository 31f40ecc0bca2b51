"""What a reader sees first: the metrics lead the paper-style table and the UI's table artifact (a narrow
pane cuts wide tables off on the right), and the report shows each item's grids and camera-path GIF."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.reporting import report_markdown, summary_table_rows
from viewneti_core.evaluation.summary import markdown_table


def _summary() -> pd.DataFrame:
    rows = []
    for n_views, psnr in ((1, 11.234), (3, 13.567)):
        rows.append({"views": "test", "protocol": "viewneti", "n_views": n_views, "step": 200, "weights": "mini-world",
                     "masked": True, "lpips_backbone": "none", "scans": "21,114", "n_scans": 2, "n_seeds": 2,
                     "min_views": 25, "max_views": 25, "psnr_mean": psnr, "psnr_std_scans": 0.5,
                     "ssim_mean": 0.8, "ssim_std_scans": 0.01, "lpips_mean": float("nan"),
                     "lpips_std_scans": float("nan"), "eval_height": 48, "eval_width": 64})
    return pd.DataFrame(rows)


def test_markdown_table_puts_the_metrics_after_protocol_and_n_views():
    lines = [line for line in markdown_table(_summary()).splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["protocol", "n_views", "PSNR ↑", "SSIM ↑", "LPIPS ↓"]
    body = {int(cells[1]): cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}
    assert body[1][2] == "11.23 ± 0.50" and body[3][2] == "13.57 ± 0.50"  # the numbers sit under their header
    assert body[3][3] == "0.800 ± 0.010" and body[3][4] == "n/a"
    assert len(header) == len(body[1]) == 12


def test_table_artifact_rows_lead_with_the_metrics():
    rows = summary_table_rows(_summary())
    assert [list(row)[:5] for row in rows] == [["protocol", "n_views", "psnr_mean", "ssim_mean", "lpips_mean"]] * 2
    assert rows[0]["psnr_mean"] == 11.234 and rows[0]["lpips_mean"] is None  # NaN is not valid JSON: None


def _gif(path: Path) -> Path:
    frames = [Image.fromarray(np.full((12, 16, 3), 40 * i, np.uint8)) for i in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_report_shows_grids_and_the_camera_path(tmp_path):
    item_dir = tmp_path / "items" / "scan114-3view" / "inference"
    item_dir.mkdir(parents=True)
    grid = item_dir / "grid_seed0.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(grid)
    gif = _gif(item_dir / "path_cam16_to_cam25_seed0.gif")
    items = {"scan114-3view": {"means": {"viewneti": {"psnr": 12.0, "ssim": 0.8, "lpips": None}},
                               "grids": [str(grid)], "gif": str(gif), "weights": "mini-world"}}
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    on_disk = report_markdown("t", tmp_path, None, items, {}, [], pictures_from=report_dir)
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", on_disk)
    assert {(report_dir / p).resolve() for p in shown} == {grid.resolve(), gif.resolve()}
    ui = report_markdown("t", tmp_path, None, items, {}, [], inline_pictures=True)
    [encoded] = re.findall(r"!\[scan114-3view camera path\]\(data:image/gif;base64,([A-Za-z0-9+/=]+)\)", ui)
    assert base64.b64decode(encoded) == gif.read_bytes()  # the animation itself, not a still thumbnail
    assert "camera path" in ui.split("## Items")[1].split("## Pictures")[0]  # linked in the items table too


def test_camera_path_of_the_benchmark_config_is_checked():
    import pytest
    from pydantic import ValidationError

    from flows.params import BenchmarkConfig

    assert BenchmarkConfig(camera_path=(16, 25, 12)).camera_path == (16, 25, 12)
    assert BenchmarkConfig().camera_path is None  # no GIF unless asked for
    for bad, message in (((16, 64, 12), "cameras \\[64\\] are outside 0..63"), ((-1, 25, 12), "cameras \\[-1\\]"),
                         ((16, 25, 1), "frames must be 2..240")):
        with pytest.raises(ValidationError, match=message):
            BenchmarkConfig(camera_path=bad)
