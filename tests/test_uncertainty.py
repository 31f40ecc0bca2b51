"""Sample diversity and uncertainty (issue 22): the math on hand-made inputs whose answers are worked
out here by hand or by brute force, then the per-view columns of `evaluate_predictions`, the summary
rows and the report pictures on the synthetic DTU tree (predictions = truth + seeded noise)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from viewneti_cli.viewneti import main
from viewneti_core.data import dtu
from viewneti_core.evaluation.scoring import evaluate_predictions
from viewneti_core.evaluation.seed_spread import SPREAD_COLUMNS, STD_MAP_FULL_SCALE, UNCERTAINTY_GRID
from viewneti_core.evaluation.summary import summarize
from viewneti_core.evaluation.uncertainty import (
    SPARSIFICATION_FRACTIONS,
    ensemble_uint8,
    pairwise_rmse,
    pixel_std,
    sparsification,
    sparsification_errors,
    spearman,
)
from viewneti_core.inference import PREDICTIONS_FILE, write_predictions

SMALL = (48, 64)  # the synthetic tree's own size: resizing is the identity, so the references stay short
CAMS = [25, 22, 28, 1, 2, 9, 10]  # 3 training views of a 3-view run, 4 DTU test views


# ---- the math, on hand-made numbers ------------------------------------------------------------------------


def test_pixel_std_and_ensemble_by_hand():
    a, b = torch.zeros(3, 1, 2, dtype=torch.float64), torch.zeros(3, 1, 2, dtype=torch.float64)
    a[:, 0, 0], b[:, 0, 0] = 0.2, 0.6  # every channel 0.2 vs 0.6: std 0.2
    b[0, 0, 1] = 0.6  # only the red channel differs, by 0.6: variance 0.09 in one of 3 channels
    std = pixel_std(torch.stack([a, b]))
    assert std[0, 0].item() == pytest.approx(0.2, abs=1e-12)
    assert std[0, 1].item() == pytest.approx(math.sqrt(0.09 / 3), abs=1e-12)
    same = pixel_std(torch.stack([a, a, a]))
    assert torch.equal(same, torch.zeros_like(same))

    u8 = torch.tensor([[10, 0, 7], [11, 255, 8], [11, 255, 8]], dtype=torch.uint8).reshape(3, 3, 1, 1)
    # 3 seeds x 3 channels: channel means 32/3 = 10.67, 170, 23/3 = 7.67 -> 11, 170, 8
    assert ensemble_uint8(u8).flatten().tolist() == [11, 170, 8]
    two = torch.tensor([[[[10]]], [[[11]]]], dtype=torch.uint8)
    assert ensemble_uint8(two).item() == 11  # 10.5 rounds up, as predictions are quantised


def test_a_single_sample_is_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        pixel_std(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        pairwise_rmse(torch.zeros(1, 3, 4, 4), torch.ones(4, 4, dtype=torch.bool))


def test_pairwise_rmse_by_hand_and_inside_the_mask():
    levels = (0.0, 0.1, 0.3)  # pair distances 0.1, 0.3, 0.2: mean 0.2
    samples = torch.stack([torch.full((3, 4, 4), v, dtype=torch.float64) for v in levels])
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2] = True
    samples[:, :, 2:] = torch.rand(3, 3, 2, 4, dtype=torch.float64)  # outside the mask: must not count
    assert pairwise_rmse(samples, mask) == pytest.approx(0.2, abs=1e-12)
    assert math.isnan(pairwise_rmse(samples, torch.zeros(4, 4, dtype=torch.bool)))


def test_spearman_uses_ranks_and_names_the_constant_case():
    u = np.array([1.0, 2, 3, 4, 5])
    # rho = 1 - 6 sum d^2 / (n (n^2 - 1)) with rank differences d = (1, -1, 1, -1, 0): 1 - 24/120
    assert spearman(u, np.array([2.0, 1, 4, 3, 5])) == pytest.approx(0.8, abs=1e-12)
    assert spearman(u, u**3) == pytest.approx(1.0) and spearman(u, -u) == pytest.approx(-1.0)
    assert spearman(np.zeros(5), u) == 0.0 and spearman(u, np.ones(5)) == 0.0  # nothing to rank: 0, not NaN
    assert math.isnan(spearman(np.array([]), np.array([])))


def test_sparsification_and_ause_worked_by_hand():
    errors = np.array([0.4, 0.3, 0.2, 0.1])
    x = np.array([0.0, 0.25, 0.5, 0.75])
    # oracle: remove the largest errors first -> means of the rest 0.25, 0.2, 0.15, 0.1
    np.testing.assert_allclose(sparsification(errors, errors, x), [0.25, 0.2, 0.15, 0.1])
    # the worst order (smallest errors removed first): 0.25, 0.3, 0.35, 0.4
    worst = sparsification_errors(-errors, errors, x)
    np.testing.assert_allclose(worst.by_uncertainty, [0.25, 0.3, 0.35, 0.4])
    # trapezoids of the gaps (0, .1, .2, .3) and of the random-order gaps (0, .05, .1, .15), width 0.25
    assert worst.ause == pytest.approx(0.25 * (0.05 + 0.15 + 0.25), abs=1e-12)
    assert worst.ause_random == pytest.approx(0.25 * (0.025 + 0.075 + 0.125), abs=1e-12)


def test_oracle_ordered_uncertainty_gives_ause_zero_and_constant_gives_the_random_baseline():
    rng = np.random.default_rng(0)
    errors = rng.random(5000)
    for ordered in (errors, errors**2 + 3, np.log(errors)):  # any increasing function of the error
        result = sparsification_errors(ordered, errors)
        assert result.ause == pytest.approx(0.0, abs=1e-12)
        assert result.ause_random > 0.05
    flat = sparsification_errors(np.full(5000, 0.7), errors)
    np.testing.assert_allclose(flat.by_uncertainty, errors.mean(), rtol=1e-12)
    assert flat.ause == pytest.approx(flat.ause_random, rel=1e-9)
    informative = sparsification_errors(errors + rng.normal(0, 0.2, 5000), errors)
    assert 0 < informative.ause < informative.ause_random  # an uncertainty that knows something beats random
    assert sparsification_errors(-errors, errors).ause > flat.ause_random  # the reverse order loses to random


def test_ties_are_removed_in_random_order_in_expectation():
    """Brute force: average the mean of the kept pixels over every tie-break of a 6-pixel example."""
    u = np.array([3.0, 2, 2, 2, 1, 1])
    e = np.array([0.5, 0.1, 0.4, 0.9, 0.2, 0.7])
    fractions = np.arange(6) / 6
    expected = np.zeros(len(fractions))
    orders = [p for p in itertools.permutations(range(6)) if all(u[p[i]] >= u[p[i + 1]] for i in range(5))]
    for order in orders:
        expected += [e[list(order[k:])].mean() for k in range(6)]
    expected /= len(orders)
    np.testing.assert_allclose(sparsification(u, e, fractions), expected, rtol=1e-12)
    # distinct uncertainties: one order, the plain definition
    v = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2])
    plain = [e[np.argsort(-v)][k:].mean() for k in range(6)]
    np.testing.assert_allclose(sparsification(v, e, fractions), plain, rtol=1e-12)


# ---- the per-view columns of evaluate_predictions -----------------------------------------------------------


def _truth(root, scan: int, cam: int) -> torch.Tensor:
    with Image.open(root / dtu.image_relpath(scan, cam, 3)) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255


def _predictions(out, root, scan: int, seeds, noise: float = 0.06, identical: bool = False, ramp: bool = False):
    """Truth + seeded noise; `ramp`: the noise grows from the left edge (none) to the right."""
    images = {}
    for seed in seeds:
        gen = torch.Generator().manual_seed(0 if identical else 100 * seed + scan)
        for cam in CAMS:
            img = _truth(root, scan, cam)
            # noise growing with the camera index: views differ in diversity, as renders of far views do
            level = noise * (1 + cam / 10) * (torch.linspace(0, 1, img.shape[-1]) if ramp else 1)
            images[(seed, cam)] = (img + level * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    meta = {"run_dir": str(out.parent / f"run{scan}"), "step": 10, "learnable_mode": 5, "scan": scan,
            "object_token": "<object>", "n_views": 3, "train_cams": dtu.train_views(3), "seeds": list(seeds),
            "cams": CAMS, "base_model": "builtin:tiny", "weights": "random", "light": 3, "data_root": str(root),
            "size": [64, 48]}
    return write_predictions(out, images, meta)


def _mask(root, scan: int, cam: int) -> np.ndarray:
    with Image.open(dtu.find_mask(root, scan, cam)) as img:
        return np.asarray(img.convert("L").resize((SMALL[1], SMALL[0]), Image.BICUBIC), np.float64) / 255 > 0.01


@pytest.fixture(scope="module")
def spread_tables(synthetic_dtu_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("spread")
    out = {}
    for scan in (21, 114):
        pred = _predictions(base / f"pred{scan}", synthetic_dtu_root, scan, (0, 1, 2), ramp=scan == 114)
        out[scan] = evaluate_predictions(pred, base / f"metrics{scan}.parquet", lpips_weights="none", eval_size=SMALL,
                                         progress=False)
    return out


def test_per_view_columns_equal_independent_computations(spread_tables, synthetic_dtu_root, tmp_path):
    df = pd.read_parquet(spread_tables[21])
    pred_dir = spread_tables[21].parent / "pred21"
    tensors = load_file(str(pred_dir / PREDICTIONS_FILE))
    assert set(df["uncertainty_seeds"]) == {3} and set(df["uncertainty_note"]) == {""}
    v = df[df.protocol == "viewneti"]
    for cam in CAMS:
        rows = v[v.cam == cam]
        assert len(rows) == 3 and rows[SPREAD_COLUMNS[:-3]].nunique().max() == 1  # one value per view
        row = rows.iloc[0]
        u8 = np.stack([tensors[f"seed{s}_cam{cam:02d}"].numpy() for s in range(3)]).astype(np.float64)
        x = u8 / 255
        # best-of-N from the seed rows
        assert row.best_psnr == rows["psnr"].max() and row.best_ssim == rows["ssim"].max()
        # the std map PNG: population std over seeds, RMS over channels, white at STD_MAP_FULL_SCALE
        std = np.sqrt(x.var(axis=0).mean(axis=0))
        with Image.open(pred_dir / f"std_cam{cam:02d}.png") as img:
            png = np.asarray(img, dtype=np.float64)
        np.testing.assert_allclose(png, np.rint(np.clip(std / STD_MAP_FULL_SCALE, 0, 1) * 255), atol=1)
        # diversity: pairwise RMSE over the masked pixels and channels
        m = _mask(synthetic_dtu_root, 21, cam)
        pairs = [np.sqrt(((x[i] - x[j])[:, m] ** 2).mean()) for i, j in ((0, 1), (0, 2), (1, 2))]
        assert row.div_rmse == pytest.approx(np.mean(pairs), rel=1e-9)
        assert np.isnan(row.div_lpips) and np.isnan(row.ens_lpips) and np.isnan(row.best_lpips)  # no backbone
        assert len(row.sparsification) == len(SPARSIFICATION_FRACTIONS) and row.ause_random > 0
    # the ensemble: the seed-mean image (halves up), scored as a prediction of its own
    ensemble = {}
    for cam in CAMS:
        mean = np.mean([tensors[f"seed{s}_cam{cam:02d}"].numpy().astype(np.float64) for s in range(3)], axis=0)
        ensemble[(0, cam)] = torch.from_numpy(np.floor(mean + 0.5)) / 255
    index = json.loads((pred_dir / "predictions.json").read_text())
    meta = {k: v for k, v in index.items() if k != "images"} | {"seeds": [0]}
    alone = pd.read_parquet(evaluate_predictions(write_predictions(tmp_path / "ens", ensemble, meta),
                                                 lpips_weights="none", eval_size=SMALL, progress=False))
    assert set(alone["uncertainty_seeds"]) == {0} and "one seed" in alone["uncertainty_note"].iloc[0]
    merged = df[df.seed == 0].merge(alone, on=["cam", "protocol"], suffixes=("", "_alone"))
    assert len(merged) == len(df[df.seed == 0])
    np.testing.assert_allclose(merged["ens_psnr"], merged["psnr_alone"], rtol=1e-12)
    np.testing.assert_allclose(merged["ens_ssim"], merged["ssim_alone"], rtol=1e-12)
    assert (merged["ens_psnr"] > merged["psnr"]).all()  # averaging independent noise helps
    assert (pred_dir / UNCERTAINTY_GRID).is_file()


def test_where_the_noise_is_shows_in_diversity_and_calibration(spread_tables):
    """Scan 114's noise grows with the camera index and, inside each image, from left to right: the seeds'
    std then points at the pixels where the seed mean is wrong. Scan 21's noise is the same everywhere in
    an image: its std says nothing about where the error is."""
    ramp = pd.read_parquet(spread_tables[114])
    ramp = ramp[(ramp.protocol == "viewneti") & (ramp.seed == 0)].sort_values("cam")
    assert (ramp["unc_spearman"] > 0.3).all() and (ramp["ause"] < 0.75 * ramp["ause_random"]).all()
    flat = pd.read_parquet(spread_tables[21])
    flat = flat[(flat.protocol == "viewneti") & (flat.seed == 0)].sort_values("cam")
    assert flat["div_rmse"].is_monotonic_increasing
    assert (flat["unc_spearman"].abs() < 0.2).all() and (flat["ause"] > 0.7 * flat["ause_random"]).all()


def test_identical_seeds_give_zero_spread_and_the_random_baseline(synthetic_dtu_root, tmp_path):
    pred = _predictions(tmp_path / "same", synthetic_dtu_root, 21, (0, 1), identical=True)
    df = pd.read_parquet(evaluate_predictions(pred, lpips_weights="random", eval_size=SMALL, progress=False,
                                              protocols=("viewneti",)))
    assert (df["div_rmse"] == 0).all() and (df["div_lpips"].abs() < 1e-6).all()
    assert (df["unc_spearman"] == 0).all()
    np.testing.assert_allclose(df["ause"], df["ause_random"], rtol=1e-9)
    assert df["uncertainty_note"].str.contains("identical").all()
    np.testing.assert_allclose(df["ens_psnr"], df["psnr"], rtol=1e-12)  # the mean of equal images is the image
    numeric = [c for c in SPREAD_COLUMNS if c not in ("sparsification", "sparsification_oracle", "uncertainty_note")]
    assert not df[numeric].isna().any().any()


def test_an_empty_mask_is_named_not_spread(synthetic_dtu_root, tmp_path, caplog):
    root = tmp_path / "dtu"
    shutil.copytree(synthetic_dtu_root, root, ignore=lambda d, names: [n for n in names if n in ("scan2", "scan114")])
    mask = dtu.find_mask(root, 21, 1)
    Image.new("L", Image.open(mask).size, 0).save(mask)
    pred = _predictions(tmp_path / "pred", root, 21, (0, 1))
    with caplog.at_level(logging.WARNING):
        df = pd.read_parquet(evaluate_predictions(pred, lpips_weights="none", eval_size=SMALL, progress=False,
                                                  protocols=("viewneti",)))
    empty, other = df[df.cam == 1], df[df.cam != 1]
    assert empty["uncertainty_note"].str.startswith("empty mask").all()
    assert empty[["div_rmse", "ause", "ens_psnr"]].isna().all().all()
    assert not other[["div_rmse", "ause", "ause_random", "unc_spearman", "ens_psnr"]].isna().any().any()
    assert "empty masks for cams [1]" in caplog.text


def test_one_seed_is_a_clear_answer(synthetic_dtu_root, tmp_path, capsys):
    pred = _predictions(tmp_path / "one", synthetic_dtu_root, 21, (4,))
    df = pd.read_parquet(evaluate_predictions(pred, lpips_weights="none", eval_size=SMALL, progress=False))
    assert (df["uncertainty_seeds"] == 0).all() and df["uncertainty_note"].eq("one seed: no spread").all()
    assert not list(pred.glob("std_cam*.png"))
    with pytest.raises(ValueError, match=r"1 seed\(s\) \(4\).*at least 2.*--no-uncertainty"):
        evaluate_predictions(pred, lpips_weights="none", eval_size=SMALL, progress=False, uncertainty=True)
    assert main(["evaluate", "--predictions", str(pred), "--lpips", "none", "--uncertainty"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_cli_turns_the_columns_off_and_summarize_reports_them(spread_tables, synthetic_dtu_root, tmp_path, capsys):
    pred = _predictions(tmp_path / "off", synthetic_dtu_root, 21, (0, 1))
    assert main(["evaluate", "--predictions", str(pred), "--lpips", "none", "--no-uncertainty",
                 "--protocols", "viewneti"]) == 0
    assert "no columns across seeds: turned off" in capsys.readouterr().out
    off = pd.read_parquet(pred / "metrics.parquet")
    assert (off["uncertainty_seeds"] == 0).all() and not list(pred.glob("std_cam*.png"))

    assert main(["summarize", "--tables", str(spread_tables[21]), str(spread_tables[114]), "--out",
                 str(tmp_path / "sum")]) == 0
    printed = capsys.readouterr().out
    assert "uncertainty.parquet" in printed and "sparsification.png" in printed
    text = (tmp_path / "sum" / "summary.md").read_text()
    assert "## Sample diversity and uncertainty" in text and "best of N seeds" in text and "AUSE" in text


def test_summary_rows_match_an_independent_groupby(spread_tables, tmp_path):
    result = summarize([spread_tables[21], spread_tables[114]], tmp_path / "sum")
    table = pd.read_parquet(result.uncertainty)
    df = pd.concat([pd.read_parquet(p) for p in spread_tables.values()])
    test = df[(df.role == "test") & (df.seed == 1)]  # one row per view: any seed's copy
    for protocol in ("viewneti", "regnerf"):
        per_scan = test[test.protocol == protocol].groupby("scan")[["ause", "div_rmse", "ens_psnr", "best_ssim"]].mean()
        row = table[table.protocol == protocol].iloc[0]
        for metric in per_scan.columns:
            assert row[f"{metric}_mean"] == pytest.approx(per_scan[metric].mean(), rel=1e-12)
            assert row[f"{metric}_std_scans"] == pytest.approx(per_scan[metric].std(ddof=1), rel=1e-9)
        assert row["n_scans"] == 2 and row["min_seeds"] == row["max_seeds"] == 3
    assert (tmp_path / "sum" / "sparsification.png").is_file()
    # the primary table is untouched by the columns across seeds
    primary = pd.read_parquet(result.table)
    assert not [c for c in primary.columns if c.startswith(("ens_", "best_", "div_", "ause", "unc_"))]


def test_ui_table_rows_are_json_clean(spread_tables, tmp_path):
    from tasks.reporting import uncertainty_table_rows

    result = summarize([spread_tables[21], spread_tables[114]], tmp_path / "sum")
    rows = uncertainty_table_rows(pd.read_parquet(result.uncertainty))
    assert json.loads(json.dumps(rows, allow_nan=False)) == rows  # NaN (no LPIPS) became null, numpy became Python
    assert {r["protocol"] for r in rows} == {"viewneti", "regnerf"} and all(r["div_lpips_mean"] is None for r in rows)
    assert list(rows[0])[:4] == ["protocol", "n_views", "ens_psnr_mean", "best_psnr_mean"]


def test_tables_written_before_the_columns_still_summarise(spread_tables, tmp_path):
    old = pd.read_parquet(spread_tables[21]).drop(columns=SPREAD_COLUMNS)
    old.to_parquet(tmp_path / "old.parquet")
    result = summarize([tmp_path / "old.parquet"], tmp_path / "sum")
    assert result.uncertainty is None and "Sample diversity" not in result.markdown.read_text()


def test_report_shows_the_std_maps_beside_each_grid(spread_tables, tmp_path):
    from tasks.reporting import report_markdown

    pred_dir = spread_tables[21].parent / "pred21"
    grid = tmp_path / "grid_seed0.png"
    Image.new("RGB", (64, 24), "white").save(grid)
    record = {"item": "scan21-3view", "weights": "random", "grids": [str(grid)], "means": {},
              "uncertainty_grid": str(pred_dir / UNCERTAINTY_GRID)}
    ui = report_markdown("t", tmp_path, None, {"scan21-3view": record}, {}, [], inline_pictures=True)
    pictures = [line for line in ui.splitlines() if line.startswith("![")]
    assert len(pictures) == 1 and pictures[0].count("](data:image/png;base64,") == 2  # one line: grid + std maps
    on_disk = report_markdown("t", tmp_path, None, {"scan21-3view": record}, {}, [], pictures_from=tmp_path)
    assert "std maps" in on_disk and UNCERTAINTY_GRID in on_disk
