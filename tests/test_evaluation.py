"""Evaluation tables and the summary, on the synthetic DTU tree with predictions made from ground truth
plus noise (no diffusion model: the metrics are what is under test). Every number that matters is
recomputed independently here: PIL + torchvision + skimage + numpy for single rows, pandas groupby for
the summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from fixtures.reference_math import bicubic_resize_no_antialias_uint8
from PIL import Image
from safetensors.torch import load_file
from skimage.metrics import structural_similarity

from viewneti_cli.viewneti import main
from viewneti_core.data import dtu
from viewneti_core.evaluation.metrics import LPIPS, MissingWeightsError, apply_background
from viewneti_core.evaluation.scoring import ROW_SCHEMA, evaluate_predictions
from viewneti_core.evaluation.summary import summarize
from viewneti_core.inference import PREDICTIONS_FILE, write_predictions

LIGHT = 3
SMALL = (48, 64)  # eval size for tests that only check view selection / bookkeeping (protocol: 300x400)


def _gt(root, scan: int, cam: int) -> torch.Tensor:
    with Image.open(root / dtu.image_relpath(scan, cam, LIGHT)) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255


def make_predictions(out, root, scan: int, cams, seeds, train_cams, noise=0.05, size=None, weights="random"):
    """A predictions dir as `viewneti infer` writes it, with GT + seeded noise instead of renders."""
    images = {}
    for seed in seeds:
        gen = torch.Generator().manual_seed(1000 * seed + scan)
        for cam in cams:
            img = _gt(root, scan, cam)
            if size is not None:
                img = torch.nn.functional.interpolate(img[None], size=(size[1], size[0]), mode="bilinear")[0]
            images[(seed, cam)] = (img + noise * torch.randn(img.shape, generator=gen)).clamp(0, 1)
    meta = {
        "run_dir": str(out.parent / f"run-scan{scan}-n{len(train_cams)}"), "step": 100, "learnable_mode": 5,
        "scan": scan, "object_token": "<object>", "n_views": len(train_cams), "train_cams": sorted(train_cams),
        "seeds": list(seeds), "cams": list(cams), "base_model": "builtin:tiny", "weights": weights, "light": LIGHT,
        "data_root": str(root), "size": [768, 576],
    }
    return write_predictions(out, images, meta)


# A 3-view run: its 3 training views, another DTU training view (40, a test view for this run but not a
# standard DTU test view), a DTU-excluded view (3) and three standard test views.
CAMS_A = [25, 22, 28, 40, 3, 1, 2, 9]
TRAIN_3 = dtu.train_views(3)


@pytest.fixture(scope="module")
def tables(synthetic_dtu_root, tmp_path_factory):
    """Scan 21 evaluated at the protocol size (300x400) as "full21"; for the summary, masked scans 21 and
    114 and unmasked scan 2 at a small size (the aggregation does not depend on it, CPU time does)."""
    base = tmp_path_factory.mktemp("evaluation")
    out = {}
    for scan, cams in ((21, CAMS_A), (114, [25, 22, 28, 1, 2, 9]), (2, [25, 22, 28, 1, 2, 9])):
        pred = make_predictions(base / f"pred{scan}", synthetic_dtu_root, scan, cams, (0, 1), TRAIN_3,
                                noise=0.03 + 0.01 * (scan % 3), size=(160, 120) if scan == 21 else None)
        out[scan] = evaluate_predictions(pred, base / f"metrics{scan}.parquet", lpips_weights="none", eval_size=SMALL)
    out["full21"] = evaluate_predictions(base / "pred21", base / "metrics21-full.parquet", lpips_weights="none")
    return out


def test_schema_and_row_keys(tables):
    schema = pq.read_schema(tables["full21"])
    assert schema.names == ROW_SCHEMA.names
    assert [schema.field(n).type for n in schema.names] == [ROW_SCHEMA.field(n).type for n in ROW_SCHEMA.names]
    df = pd.read_parquet(tables["full21"])
    keys = ["run", "scan", "n_views", "mode", "step", "seed", "cam", "role", "protocol"]
    assert not df.duplicated(keys).any()
    assert set(df["run"]) == {"run-scan21-n3"} and set(df["scan"]) == {21} and set(df["step"]) == {100}
    assert set(df["model"]) == {"builtin:tiny"} and set(df["weights"]) == {"random"}
    assert set(df["lpips_backbone"]) == {"none"} and df["lpips"].isna().all()
    assert set(df["eval_height"]) == {300} and set(df["eval_width"]) == {400}
    assert set(df["pred_height"]) == {120} and set(df["pred_width"]) == {160}
    assert df["masked"].all()  # scan 21 is a masked test scan
    assert np.isfinite(df[["psnr", "ssim", "mse"]].to_numpy()).all()


def test_protocols_select_views_and_backgrounds(tables):
    df = pd.read_parquet(tables["full21"])
    v, r = df[df.protocol == "viewneti"], df[df.protocol == "regnerf"]
    assert len(v) == 2 * len(CAMS_A) and set(v["background"]) == {"black"}
    assert set(r["cam"]) == {1, 2, 9} and len(r) == 6 and set(r["background"]) == {"white"}
    assert set(r["role"]) == {"test"} and r["dtu_test_view"].all()
    roles = v[v.seed == 0].set_index("cam")["role"].to_dict()
    assert {c for c, role in roles.items() if role == "train"} == set(TRAIN_3)  # exactly the run's 3 views
    assert roles[40] == "test" and roles[3] == "excluded"
    assert not v.set_index("cam").loc[40, "dtu_test_view"].any()
    # PSNR does not depend on the background; SSIM does
    both = v.merge(r, on=["seed", "cam"], suffixes=("_v", "_r"))
    np.testing.assert_allclose(both["psnr_v"], both["psnr_r"], rtol=1e-12)
    assert (both["ssim_v"] != both["ssim_r"]).all()


def test_rows_equal_an_independent_computation(tables, synthetic_dtu_root):
    """PIL (GT to 768x576) -> non-antialiased bicubic on uint8 (torchvision 0.14) -> 300x400; mask bicubic > 0.01; skimage SSIM."""
    df = pd.read_parquet(tables["full21"])
    pred_dir = tables["full21"].parent / "pred21"
    tensors = load_file(str(pred_dir / PREDICTIONS_FILE))
    for seed, cam in ((0, 1), (1, 25)):
        pred = bicubic_resize_no_antialias_uint8(tensors[f"seed{seed}_cam{cam:02d}"][None].numpy(),
                                                 (300, 400))[0] / 255
        gt_img = Image.open(synthetic_dtu_root / dtu.image_relpath(21, cam, LIGHT)).convert("RGB")
        gt_u8 = torch.from_numpy(np.array(gt_img.resize((768, 576), Image.BICUBIC))).permute(2, 0, 1)
        gt = bicubic_resize_no_antialias_uint8(gt_u8[None].numpy(), (300, 400))[0] / 255
        mask_img = Image.open(dtu.find_mask(synthetic_dtu_root, 21, cam)).convert("L").resize((400, 300), Image.BICUBIC)
        m = np.repeat((np.asarray(mask_img, dtype=np.float64) / 255 > 0.01)[None], 3, axis=0)
        assert 0 < m.mean() < 1  # a real mask: both regions present
        mse = ((gt * m - pred * m) ** 2).sum() / m.sum()
        for protocol, bg in (("viewneti", 0.0), ("regnerf", 1.0)):
            row = df[(df.seed == seed) & (df.cam == cam) & (df.protocol == protocol)]
            if protocol == "regnerf" and cam not in dtu.TEST_VIEWS:
                assert row.empty
                continue
            ref_ssim = structural_similarity(pred * m + bg * (1 - m), gt * m + bg * (1 - m), channel_axis=0,
                                             data_range=1.0)
            # the float64 resize statement rounds ~0.1% of pixels one level away from the float32 one the
            # original ran (see test_metrics), which moves the MSE by a few parts per million
            assert row["mse"].item() == pytest.approx(mse, rel=5e-5)
            assert row["psnr"].item() == pytest.approx(-10 * math.log10(mse), abs=2e-4)
            assert row["ssim"].item() == pytest.approx(ref_ssim, abs=1e-4)


def test_unmasked_scan_is_flagged_in_every_row(tables, synthetic_dtu_root):
    df = pd.read_parquet(tables[2])
    assert dtu.find_mask(synthetic_dtu_root, 2, 25) is None
    assert len(df) == 2 * 6 + 2 * 3 and not df["masked"].any()
    v = df[df.protocol == "viewneti"].set_index(["seed", "cam"])
    r = df[df.protocol == "regnerf"].set_index(["seed", "cam"])
    # no mask: the background colour is irrelevant, both protocols agree on every metric
    np.testing.assert_allclose(v.loc[r.index, "ssim"], r["ssim"], rtol=1e-12)
    assert pd.read_parquet(tables[114])["masked"].all()


def test_regnerf_uses_exactly_the_25_test_views(synthetic_dtu_root, tmp_path):
    """A 1-view run rendered on all 49 views: regnerf keeps the 25 DTU test views, viewneti all of them."""
    pred = make_predictions(tmp_path / "pred", synthetic_dtu_root, 114, range(dtu.NUM_VIEWS), (0,), dtu.train_views(1))
    df = pd.read_parquet(evaluate_predictions(pred, tmp_path / "m.parquet", lpips_weights="none", eval_size=SMALL))
    r, v = df[df.protocol == "regnerf"], df[df.protocol == "viewneti"]
    assert sorted(r["cam"]) == sorted(dtu.TEST_VIEWS) and len(r) == 25
    assert sorted(v["cam"]) == list(range(dtu.NUM_VIEWS))
    assert v.groupby("role")["cam"].apply(set).to_dict() == {
        "train": {25}, "excluded": set(dtu.EXCLUDED_VIEWS),
        "test": set(dtu.TEST_VIEWS) | set(dtu.TRAIN_VIEWS[1:]),
    }
    assert set(df["n_views"]) == {1} and set(df["eval_height"]) == {SMALL[0]}


def test_lpips_column_with_a_labelled_random_backbone(synthetic_dtu_root, tmp_path):
    pred = make_predictions(tmp_path / "pred", synthetic_dtu_root, 21, [1], (0,), TRAIN_3)
    out = evaluate_predictions(pred, tmp_path / "m.parquet", lpips_weights="random", eval_size=SMALL)
    df = pd.read_parquet(out)
    assert set(df["lpips_backbone"]) == {"random"} and df["lpips"].notna().all() and (df["lpips"] > 0).all()
    # recompute the regnerf row of cam 1: white background, images scaled to [-1, 1]
    from viewneti_core.evaluation.metrics import load_ground_truth, load_mask, resize_bicubic_uint8

    gt = resize_bicubic_uint8(load_ground_truth(synthetic_dtu_root / dtu.image_relpath(21, 1, LIGHT))[None],
                              SMALL).float() / 255
    tensors = load_file(str(pred / PREDICTIONS_FILE))
    p = resize_bicubic_uint8(tensors["seed0_cam01"][None], SMALL).float() / 255
    mask = load_mask(dtu.find_mask(synthetic_dtu_root, 21, 1), SMALL)[None]
    model = LPIPS("random")
    with torch.no_grad():
        expected = {bg: model(apply_background(p, mask, bg) * 2 - 1, apply_background(gt, mask, bg) * 2 - 1).item()
                    for bg in ("black", "white")}
    got = df[df.cam == 1].set_index("protocol")["lpips"]
    assert got["regnerf"] == pytest.approx(expected["white"], rel=1e-5)
    assert got["viewneti"] == pytest.approx(expected["black"], rel=1e-5)


def test_missing_vgg_weights_stop_evaluation_before_any_output(synthetic_dtu_root, tmp_path, monkeypatch):
    pred = make_predictions(tmp_path / "pred", synthetic_dtu_root, 21, [1], (0,), TRAIN_3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        evaluate_predictions(pred, tmp_path / "m.parquet")  # default: pretrained LPIPS
    assert not (tmp_path / "m.parquet").exists()


def test_errors_for_bad_inputs(synthetic_dtu_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="no predictions directory"):
        evaluate_predictions(tmp_path / "nothing", lpips_weights="none")
    empty = make_predictions(tmp_path / "empty", synthetic_dtu_root, 21, [], (0,), TRAIN_3)
    with pytest.raises(ValueError, match="no predicted images"):
        evaluate_predictions(empty, lpips_weights="none")
    square = make_predictions(tmp_path / "square", synthetic_dtu_root, 21, [1], (0,), TRAIN_3, size=(64, 64))
    with pytest.raises(ValueError, match="aspect"):
        evaluate_predictions(square, lpips_weights="none")
    ok = make_predictions(tmp_path / "ok", synthetic_dtu_root, 21, [1], (0,), TRAIN_3)
    with pytest.raises(FileNotFoundError, match="ground truth for scan 21"):
        evaluate_predictions(ok, lpips_weights="none", data_root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="protocol"):
        evaluate_predictions(ok, protocols=("nerf",), lpips_weights="none")
    (ok / PREDICTIONS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=PREDICTIONS_FILE):
        evaluate_predictions(ok, lpips_weights="none")
    assert not list(tmp_path.glob("**/*.parquet"))


def _expected_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's aggregation, written independently: views -> seeds -> scans."""
    t = df[df.role == "test"]
    keys = ["protocol", "masked"]
    per_ss = t.groupby(keys + ["scan", "seed"])[["psnr", "ssim"]].mean().reset_index()
    per_scan = per_ss.groupby(keys + ["scan"])[["psnr", "ssim"]].mean().reset_index()
    per_seed = per_ss.groupby(keys + ["seed"])[["psnr", "ssim"]].mean().reset_index()
    out = per_scan.groupby(keys)[["psnr", "ssim"]].agg(["mean", "std"])
    out.columns = [f"{m}_{'std_scans' if s == 'std' else s}" for m, s in out.columns]
    seeds = per_seed.groupby(keys)[["psnr", "ssim"]].std().add_suffix("_std_seeds")
    return out.join(seeds).join(per_scan.groupby(keys)["scan"].nunique().rename("n_scans"))


def _original_summarize_dtu(df: pd.DataFrame, masked: bool) -> dict[str, float]:
    """What the original's scripts/summarize_dtu.py printed, restated with plain loops: for each seed, the
    mean over ALL rendered views (training views included) of each scan, then the mean over scans; then
    (our addition, to compare one number) the mean of those per-seed values."""
    rows = df[(df.protocol == "viewneti") & (df.masked == masked) & df.role.isin(["train", "test"])]
    out = {}
    for metric in ("psnr", "ssim"):
        per_seed = []
        for seed in sorted(rows.seed.unique()):
            scans = [rows[(rows.seed == seed) & (rows.scan == scan)][metric].mean() for scan in sorted(rows.scan.unique())]
            per_seed.append(sum(scans) / len(scans))
        out[metric] = sum(per_seed) / len(per_seed)
    return out


def test_summary_matches_an_independent_groupby(tables, tmp_path):
    paths = [tables[21], tables[114], tables[2]]
    result = summarize(paths, tmp_path / "summary")
    df = pd.concat([pd.read_parquet(p) for p in paths])
    expected = _expected_summary(df)
    table = pd.read_parquet(result.table)
    assert table.columns[0] == "views" and set(table["views"]) == {"test", "all"}
    got = table[table["views"] == "test"].set_index(["protocol", "masked"])
    assert set(got.index) == set(expected.index) == {("viewneti", True), ("regnerf", True),
                                                     ("viewneti", False), ("regnerf", False)}
    for col in expected.columns:
        np.testing.assert_allclose(got.loc[expected.index, col].to_numpy(dtype=float),
                                   expected[col].to_numpy(dtype=float), rtol=1e-9, atol=1e-12, err_msg=col)
    assert got.loc[("viewneti", True), "n_scans"] == 2 and got.loc[("viewneti", True), "scans"] == "21,114"
    assert got.loc[("viewneti", False), "scans"] == "2"  # the unmasked scan is never mixed in
    assert got["lpips_mean"].isna().all()  # not computed -> NaN, not a mean over nothing
    assert set(got.loc[("regnerf", True), ["min_views", "max_views"]]) == {3}
    assert got.loc[("viewneti", True), "max_views"] == 4  # 21: 1, 2, 9, 40 (3 is excluded); 114: 1, 2, 9
    # the original's averaging: viewneti protocol only, training views included
    all_views = table[table["views"] == "all"].set_index("masked")
    assert set(table.loc[table["views"] == "all", "protocol"]) == {"viewneti"}
    for masked in (True, False):
        original = _original_summarize_dtu(df, masked)
        for metric, value in original.items():
            assert all_views.loc[masked, f"{metric}_mean"] == pytest.approx(value, rel=1e-9)
    assert all_views.loc[True, "psnr_mean"] != got.loc[("viewneti", True), "psnr_mean"]  # training views count
    assert all_views.loc[True, "max_views"] > got.loc[("viewneti", True), "max_views"]
    assert result.random_weights and result.n_groups == 6
    md = result.markdown.read_text()
    assert "RANDOM WEIGHTS" in md and "**RANDOM**" in md and "NO (unmasked)" in md
    assert md.index("## Test views (primary)") < md.index("## All rendered views")
    assert "summarize_dtu.py" in md
    csv = pd.read_csv(result.csv)
    np.testing.assert_allclose(csv["psnr_mean"], table["psnr_mean"], rtol=1e-12)
    # 2 seeds per view: the sparsification plot of the columns across seeds comes too (tests/test_uncertainty.py)
    assert [p.name for p in result.plots] == ["psnr_per_scan.png", "metrics_per_view.png", "sparsification.png"]
    for plot in result.plots:
        with Image.open(plot) as img:
            assert img.format == "PNG" and img.width > 300
    assert not list((tmp_path / "summary").glob(".*"))  # no temp files left behind


def test_summary_refuses_duplicates_and_empty_input(tables, tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        summarize([tables[21], tables[21]], tmp_path / "s")
    with pytest.raises(ValueError, match="no evaluation tables"):
        summarize([], tmp_path / "s")
    with pytest.raises(FileNotFoundError):
        summarize([tmp_path / "missing.parquet"], tmp_path / "s")


def test_cli_evaluate_and_summarize(tables, tmp_path, capsys):
    pred = tables[114].parent / "pred114"
    out = tmp_path / "cli.parquet"
    assert main(["evaluate", "--predictions", str(pred), "--out", str(out), "--protocols", "regnerf",
                 "--lpips", "none", "--run-name", "cli-run"]) == 0
    df = pd.read_parquet(out)
    assert set(df["protocol"]) == {"regnerf"} and set(df["run"]) == {"cli-run"}
    assert main(["summarize", "--tables", str(out), str(tables[21]), "--out", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in text and "summary.md" in text
    assert main(["evaluate", "--predictions", str(tmp_path / "nope"), "--lpips", "none"]) == 2
    assert "no predictions directory" in capsys.readouterr().err
