"""Training data that would train silently wrong is refused or warned about (issue 21, item 5):
repeated DTU camera files, a capture folder whose cameras have no spread, images of another aspect ratio."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.runs import make_train_config
from PIL import Image

from viewneti_core.config import dump_config
from viewneti_core.data import dtu
from viewneti_core.training.batches import build_training_data
from viewneti_core.training.trainer import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def copied_calibration_tree(synthetic_dtu_root, tmp_path) -> Path:
    """Scan 114 of the synthetic tree with all 64 camera files copies of camera 25's."""
    root = tmp_path / "dtu"
    shutil.copytree(synthetic_dtu_root / "Rectified" / "scan114", root / "Rectified" / "scan114")
    text = (synthetic_dtu_root / dtu.camera_relpath(25)).read_text()
    for cam in range(dtu.NUM_CAMERAS):
        path = root / dtu.camera_relpath(cam)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_identical_dtu_camera_files_are_refused_by_train_in_a_real_process(copied_calibration_tree, tiny_model_dir,
                                                                           tmp_path):
    config = make_train_config(copied_calibration_tree, tiny_model_dir, tmp_path / "runs", 2, "copies")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(dump_config(config))
    done = subprocess.run([sys.executable, "-m", "viewneti_cli.viewneti", "train", "--config", str(config_file)],
                          cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    first, second = (copied_calibration_tree / dtu.camera_relpath(c) for c in (0, 1))
    assert f"{second} holds the same camera as {first} (1 distinct cameras in 64 files)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "copies").exists()  # refused before the run directory was made


def _capture_folder(root: Path, cameras: list[np.ndarray], size: tuple[int, int]) -> Path:
    root.mkdir(parents=True)
    entries = []
    for i, camera in enumerate(cameras):
        pixels = np.random.default_rng(i).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
        entries.append({"file": f"img{i}.png", "projection": np.asarray(camera).tolist()})
    (root / "cameras.json").write_text(json.dumps({"images": entries}))
    return root


def test_a_capture_folder_of_one_camera_is_refused_for_a_new_view_mapper(synthetic_dtu_root, tiny_model_dir,
                                                                          pretrained_run, tmp_path):
    cameras = dtu.load_cameras(synthetic_dtu_root)
    folder = _capture_folder(tmp_path / "one", [cameras[25]], (64, 48))
    mode2 = make_train_config(folder, tiny_model_dir, tmp_path / "runs", 2, "one-camera")
    with pytest.raises(ValueError, match="all 1 image") as err:
        train(mode2, progress=False)
    assert str(folder / "cameras.json") in str(err.value) and "normalization_cameras" in str(err.value)
    assert not (tmp_path / "runs" / "one-camera").exists()
    # The same folder is fine for a pretrained view mapper (mode 5): it keeps its own normalisation.
    mode5 = make_train_config(folder, tiny_model_dir, tmp_path / "runs", 5, "one-camera-mode5",
                              model={"pretrained_view_mapper": str(pretrained_run)}, optim={"max_train_steps": 1})
    assert train(mode5, progress=False).steps == 1
    # Two images of one camera have no spread either.
    same = _capture_folder(tmp_path / "same", [cameras[25], cameras[25]], (64, 48))
    with pytest.raises(ValueError, match="all 2 image"):
        build_training_data(make_train_config(same, tiny_model_dir, tmp_path / "runs", 2, "same"))


def test_images_of_another_aspect_ratio_are_stretched_with_one_warning(synthetic_dtu_root, tiny_model_dir,
                                                                         tmp_path, caplog):
    cameras = dtu.load_cameras(synthetic_dtu_root)
    square = _capture_folder(tmp_path / "square", [cameras[c] for c in (25, 22, 28)], (100, 100))
    config = make_train_config(square, tiny_model_dir, tmp_path / "runs", 2, "square")  # data 64x48
    with caplog.at_level(logging.WARNING, logger="viewneti_core.data.datasets"):
        build_training_data(config)
    # One record can reach caplog twice when another test's logging setup (Prefect's extra loggers) left
    # a second path to its handler; a warning logged twice would be two records, so count records.
    records = {id(r): r for r in caplog.records if r.name == "viewneti_core.data.datasets"}
    lines = [r.getMessage() for r in records.values()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("3 of 3 training image(s) are stretched to 64x48 (aspect 1.33)")
    assert f"{square / 'img0.png'} (100x100, aspect 1.00)" in lines[0] and "data.width/data.height" in lines[0]
    caplog.clear()
    wide = _capture_folder(tmp_path / "wide", [cameras[c] for c in (25, 22, 28)], (160, 120))  # 4:3: no warning
    with caplog.at_level(logging.WARNING, logger="viewneti_core.data.datasets"):
        build_training_data(make_train_config(wide, tiny_model_dir, tmp_path / "runs", 2, "wide"))
    assert not [r for r in caplog.records if r.name == "viewneti_core.data.datasets"]
