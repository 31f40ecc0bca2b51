"""The issue-19 bars as `python -m bench.mini_world` computes them (viewneti_core.mini_world.bars), checked
against the arithmetic written out by hand: paired differences per (scan, seed), margin = their mean,
spread = the sample standard deviation over scans of each scan's mean difference, reached = margin > spread."""

import math

import pandas as pd
import pytest

from viewneti_core.mini_world.bars import bar_table, markdown

SEEDS = (0, 1)


def rows_for(variant: str, n_views: int, per_set: dict, gap: dict | None = None) -> list[dict]:
    """Two test views per image set whose scores average to the set's value (so the per-set mean is tested);
    `per_set`: {(scan, seed): masked PSNR}; SSIM = PSNR / 100; whole-image PSNR = PSNR + 3, against the
    mirrored views lower by `gap[(scan, seed)]` (default 0)."""
    out = []
    for (scan, seed), value in per_set.items():
        for offset in (-0.5, 0.5):
            psnr = value + offset
            out.append({"variant": variant, "n_views": n_views, "scan": scan, "seed": seed, "psnr": psnr,
                        "ssim": psnr / 100, "psnr_image": psnr + 3,
                        "psnr_image_reversed": psnr + 3 - (gap or {}).get((scan, seed), 0.0)})
    return out


def bar(table: pd.DataFrame, name: str, n_views: int) -> pd.Series:
    hits = table[(table.bar == name) & (table.n_views == n_views)]
    assert len(hits) == 1, f"{name} at {n_views} views: {len(hits)} rows"
    return hits.iloc[0]


def test_paired_margin_spread_and_verdict_by_hand():
    # differences viewneti - mode2 per (scan, seed): scan 10: +2, +4 (mean 3); 20: +1, +1 (1); 30: -1, +1 (0)
    diffs = {(10, 0): 2.0, (10, 1): 4.0, (20, 0): 1.0, (20, 1): 1.0, (30, 0): -1.0, (30, 1): 1.0}
    mode2 = {key: 12.0 + 0.1 * key[0] for key in diffs}
    viewneti = {key: mode2[key] + d for key, d in diffs.items()}
    table = bar_table(pd.DataFrame(rows_for("viewneti", 1, viewneti) + rows_for("mode2", 1, mode2)))

    masked = bar(table, "ViewNeTI - mode 2, masked PSNR", 1)
    margin = sum(diffs.values()) / 6  # 8 / 6
    per_scan = [3.0, 1.0, 0.0]
    mean = sum(per_scan) / 3
    spread = math.sqrt(sum((v - mean) ** 2 for v in per_scan) / 2)  # sample std: 1.5275
    assert masked.margin == pytest.approx(margin)
    assert masked.spread == pytest.approx(spread)
    assert (masked.scans, masked.ahead, masked.reached) == (3, 2, False)  # scan 30's mean is 0: not ahead
    assert bar(table, "ViewNeTI - mode 2, SSIM", 1).margin == pytest.approx(margin / 100)
    # only the bars whose two variants are in the rows
    assert not table.bar.str.contains("untrained|nearest").any()
    assert "| ViewNeTI - mode 2, masked PSNR | 1 | +1.333 | 1.528 | 2 of 3 | no |" in markdown(table)

    # the same wins on every scene: margin 2 with spread 0 -> reached
    steady = {key: mode2[key] + 2.0 for key in diffs}
    table = bar_table(pd.DataFrame(rows_for("viewneti", 1, steady) + rows_for("mode2", 1, mode2)))
    assert bool(bar(table, "ViewNeTI - mode 2, masked PSNR", 1).reached) is True


def test_only_sets_present_in_both_variants_are_paired_and_one_scan_has_no_verdict():
    nearest = {(scan, seed): 15.0 for scan in (10, 20) for seed in SEEDS}
    mode2 = {key: 16.0 for key in nearest if key != (20, 1)} | {(20, 1): 10.0}
    rows = rows_for("mode2", 9, mode2) + rows_for("nearest-view", 9, nearest)
    rows = [r for r in rows if (r["scan"], r["seed"]) != (20, 1) or r["variant"] != "mode2"]  # a set missing
    interp = bar(bar_table(pd.DataFrame(rows)), "mode 2 - nearest input view, masked PSNR", 9)
    assert interp.margin == pytest.approx(1.0) and interp.spread == pytest.approx(0.0)
    assert (interp.scans, interp.ahead, interp.reached) == (2, 2, True)

    one_scan = [r for r in rows if r["scan"] == 10]
    single = bar(bar_table(pd.DataFrame(one_scan)), "mode 2 - nearest input view, masked PSNR", 9)
    assert single.reached is None and "n/a (1 scan)" in markdown(bar_table(pd.DataFrame(one_scan)))


def test_the_interpolation_bar_needs_six_or_more_views():
    sets = {(scan, seed): 14.0 for scan in (10, 20) for seed in SEEDS}
    rows = []
    for n in (3, 9):
        rows += rows_for("mode2", n, sets) + rows_for("nearest-view", n, {k: 13.0 for k in sets})
    table = bar_table(pd.DataFrame(rows))
    assert table.n_views.tolist() == [9]  # a 3-view mode 2 is the ablation, not the interpolation claim


def test_view_gap_bar_needs_two_db_and_more_than_its_spread():
    sets = {(scan, seed): 14.0 for scan in (10, 20, 30) for seed in SEEDS}
    name = "view gap of ViewNeTI >= 2 dB"

    def verdict(gaps_per_scan):
        gap = {(scan, seed): gaps_per_scan[scan] for scan, seed in sets}
        return bar(bar_table(pd.DataFrame(rows_for("viewneti", 3, sets, gap))), name, 3)

    ok = verdict({10: 2.5, 20: 2.5, 30: 1.8})
    assert ok.margin == pytest.approx(6.8 / 3) and ok.reached and ok.ahead == 2
    assert not verdict({10: 1.9, 20: 1.9, 30: 1.9}).reached  # under the floor, however steady
    assert not verdict({10: 0.0, 20: 0.3, 30: 6.0}).reached  # 2.1 dB on average, carried by one scene


@pytest.mark.slow
def test_the_bench_prints_and_writes_the_bars(tmp_path, capsys):
    """`python -m bench.mini_world` ends with the bars of what it measured (a 1-step mode-2 fit here: the
    glue, not the numbers), and writes them to bars.csv."""
    from bench.mini_world import main

    out = tmp_path / "bench"
    assert main(["--scans", "21,40", "--n-views", "9", "--variants", "mode2,nearest-view", "--steps", "1",
                 "--seeds", "0", "--denoising-steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    written = pd.read_csv(out / "bars.csv")
    assert written.bar.tolist() == ["mode 2 - nearest input view, masked PSNR"]
    assert written.scans.tolist() == [2] and written.n_views.tolist() == [9]
    assert f"| mode 2 - nearest input view, masked PSNR | 9 | {written.margin[0]:+.3f} |" in printed
    copy = pd.read_csv(out / "results.csv").set_index("variant").loc["nearest-view"]  # the object's edge / interior
    assert f"| {copy.edge_psnr_mean:.2f} / {copy.interior_psnr_mean:.2f} |" in printed
