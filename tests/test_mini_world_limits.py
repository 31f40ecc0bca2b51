"""`python -m bench.mini_world_limits`: the VAE's ceiling on a held-out scan's test views, and a fit
scored at its own input cameras."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import mini_world_limits as limits
from viewneti_core.data import dtu
from viewneti_core.inference import read_predictions

# Measured on the shipped weights (2026-12-05), scan 21 from 9 inputs: VAE round trip 20.75 dB masked,
# copying the nearest input 14.68. The bar for a broken VAE or scoring (a shifted or mis-scaled decode
# drops far below the copy).
VAE_OVER_NEAREST_DB = 3.0


@pytest.mark.slow
def test_the_vae_holds_the_test_views_well_above_copying_the_nearest_of_9_inputs(tmp_path, capsys):
    assert limits.main(["--scans", "21", "--n-views", "9", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "limits.csv", index_col="scan")
    row = table.loc["21"]
    assert row["vae"] > row["nearest-view"] + VAE_OVER_NEAREST_DB, row
    assert "fit-inputs" not in table.columns  # no --fits: no fit is scored
    _, images = read_predictions(tmp_path / "predictions" / "vae-scan21")
    assert sorted(cam for _, cam in images) == sorted(dtu.TEST_VIEWS)
    assert "| 21 |" in capsys.readouterr().out


@pytest.mark.slow
def test_a_fit_is_scored_at_its_own_input_cameras(fitted_run, tmp_path):
    psnr = limits.input_view_psnr(fitted_run, tmp_path / "inputs", seeds=[0, 1])
    _, images = read_predictions(tmp_path / "inputs")
    assert sorted(images) == sorted((seed, cam) for seed in (0, 1) for cam in dtu.train_views(3))
    assert 0 < psnr < 60  # random weights: a finite score of some noise, not a perfect copy


def test_fits_without_mode2_runs_are_refused_by_name_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mode2-scan21-9view.*--fits"):
        limits.main(["--scans", "21", "--fits", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
