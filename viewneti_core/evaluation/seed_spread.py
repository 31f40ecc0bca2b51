"""Per-view columns of the metrics table computed across the seeds of a view (issue 22).

`evaluate_predictions` scores each (seed, view) image; this module adds what only the set of seeds
of a view has: the seed-mean ("ensemble") image and its DTU metrics, best-of-N, diversity, the
per-pixel std map (saved as an image next to the predictions) and its calibration (Spearman, the
sparsification curves, AUSE). A view's values are repeated on each of its seed rows, so the table
keeps one row per (seed, view, protocol) and the paper's protocol columns stay as they were; the
summary reads each view once (`uncertainty_seeds` >= 2 marks the rows that carry them).

Everything is computed at the protocol size, inside the protocol's mask, from the same 8-bit resized
images the per-seed metrics use. The math is in `uncertainty.py`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from viewneti_core.evaluation.metrics import (
    LPIPS,
    Protocol,
    apply_background,
    image_metrics,
    resize_bicubic_uint8,
)
from viewneti_core.evaluation.uncertainty import (
    SPARSIFICATION_FRACTIONS,
    ensemble_uint8,
    is_constant,
    pairwise_rmse,
    pixel_abs_error,
    pixel_std,
    sparsification_errors,
    spearman,
)
from viewneti_core.images import labelled_grid, save_image_atomic, to_pil

logger = logging.getLogger(__name__)

STD_MAP_FULL_SCALE = 0.25  # a std map PNG is white at a per-pixel std of 0.25 (of the [0, 1] range) or more
UNCERTAINTY_GRID = "uncertainty_grid.png"
CURVE = pa.list_(pa.float64())

SPREAD_FIELDS = [
    pa.field("uncertainty_seeds", pa.int64()),  # seeds behind the per-view columns below; < 2: not computed
    pa.field("ens_psnr", pa.float64()),  # DTU metrics of the seed-mean image
    pa.field("ens_ssim", pa.float64()),
    pa.field("ens_lpips", pa.float64()),
    pa.field("ens_mse", pa.float64()),
    pa.field("best_psnr", pa.float64()),  # best over the view's seeds: highest PSNR / SSIM, lowest LPIPS
    pa.field("best_ssim", pa.float64()),
    pa.field("best_lpips", pa.float64()),
    pa.field("div_rmse", pa.float64()),  # mean pairwise masked pixel RMSE between seeds
    pa.field("div_lpips", pa.float64()),  # mean pairwise LPIPS between seeds (NaN without a backbone)
    pa.field("unc_spearman", pa.float64()),  # Spearman(std, |error of the seed mean|) over masked pixels
    pa.field("ause", pa.float64()),  # area between the sparsification curve and the oracle's
    pa.field("ause_random", pa.float64()),  # the same for a random removal order
    pa.field("sparsification", CURVE),  # mean |error| left after removing the most uncertain fraction f
    pa.field("sparsification_oracle", CURVE),  # the same, largest errors removed first
    pa.field("uncertainty_note", pa.string()),  # why a value is missing or a convention; "" otherwise
]
SPREAD_COLUMNS = [f.name for f in SPREAD_FIELDS]
SPREAD_METRICS = ("ens_psnr", "ens_ssim", "ens_lpips", "best_psnr", "best_ssim", "best_lpips", "div_rmse",
                  "div_lpips", "unc_spearman", "ause", "ause_random")


def not_computed(reason: str, seeds: int = 0) -> dict:
    """The per-view columns of a row that has none, saying why."""
    values = dict.fromkeys(SPREAD_COLUMNS, math.nan)
    return values | {"uncertainty_seeds": seeds, "sparsification": None, "sparsification_oracle": None,
                     "uncertainty_note": reason}


def wanted(requested: bool | None, seeds: Sequence[int], pred_dir: Path) -> bool:
    """None (the default): on when the predictions hold 2 or more seeds. True with one seed is an error."""
    if requested is None:
        return len(seeds) >= 2
    if requested and len(seeds) < 2:
        raise ValueError(
            f"{pred_dir} holds predictions of {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): the spread over "
            "seeds needs at least 2. Render more (e.g. `viewneti infer --seeds 0,1,2,3`, or fit.eval.seeds in "
            "the benchmark config) or evaluate with --no-uncertainty")
    return bool(requested)


def std_map_image(std: torch.Tensor) -> Image.Image:
    """A (H, W) std map as an 8-bit grey image: 0 black, STD_MAP_FULL_SCALE and above white."""
    scaled = (std.double() / STD_MAP_FULL_SCALE).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(scaled.cpu().numpy())  # (H, W) uint8: mode "L"


def std_map_path(maps_dir: Path, cam: int) -> Path:
    return Path(maps_dir) / f"std_cam{cam:02d}.png"


def _pairwise_lpips(samples: torch.Tensor, mask: torch.Tensor, proto: Protocol, lpips_model: LPIPS,
                    batch_size: int) -> float:
    """Mean LPIPS over the seed pairs of (N, 3, H, W) samples in [0, 1], masked-out pixels in the background."""
    n = samples.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    shown = apply_background(samples, mask.expand(n, *mask.shape), proto.background) * 2 - 1
    values = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            values.append(lpips_model(shown[[i for i, _ in chunk]], shown[[j for _, j in chunk]]).double().cpu())
    return float(torch.cat(values).mean())


def score_spread(
    preds: dict[tuple[int, int], torch.Tensor],
    gts: dict[int, torch.Tensor],
    masks: dict[int, torch.Tensor | None],
    work: list[tuple[Protocol, list[tuple[int, int]]]],
    rows: list[dict],
    eval_size: tuple[int, int],
    device: str,
    lpips_model: LPIPS | None,
    batch_size: int,
    maps_dir: Path,
) -> dict[tuple[int, str], dict]:
    """{(cam, protocol): per-view columns} for every view with 2 or more seeds; std maps and the
    uncertainty grid are written to `maps_dir` (the predictions directory).

    `preds` are uint8 (3, H, W) at the prediction size, `gts` uint8 (3, H, W) at `eval_size`, `masks`
    bool (H, W) or None (unmasked scan), `work` the (protocol, [(seed, cam)]) lists the per-seed rows
    were scored from, `rows` those rows (best-of-N reads them).
    """
    cams = sorted({cam for _, items in work for _, cam in items})
    full = torch.ones(eval_size, dtype=torch.bool)
    per_view: dict[int, dict] = {}
    samples: dict[int, torch.Tensor] = {}
    ensembles: dict[int, torch.Tensor] = {}
    maps, grid_cams = [], []
    for cam in cams:
        seeds = sorted(seed for seed, c in preds if c == cam)
        if len(seeds) < 2:
            per_view[cam] = not_computed(f"only {len(seeds)} seed of this view", len(seeds))
            continue
        stack = torch.stack([preds[(seed, cam)] for seed in seeds])
        samples[cam] = resize_bicubic_uint8(stack, eval_size)
        ensembles[cam] = resize_bicubic_uint8(ensemble_uint8(stack)[None], eval_size)[0]
        x = samples[cam].double() / 255
        std = pixel_std(x)
        error = pixel_abs_error(ensembles[cam].double() / 255, gts[cam].double() / 255)
        mask = masks[cam] if masks[cam] is not None else full
        std_m, err_m = std[mask].numpy(), error[mask].numpy()
        notes = []
        if std_m.size == 0:
            notes.append("empty mask: nothing to compare, diversity and calibration are NaN")
        elif is_constant(std_m):
            notes.append("the seeds' images are identical in the mask (std constant): Spearman set to 0 "
                         "(no ranking), AUSE equals the random-order baseline")
        elif is_constant(err_m):
            notes.append("the error of the seed mean is constant in the mask: Spearman set to 0")
        curves = sparsification_errors(std_m, err_m)
        per_view[cam] = {
            "uncertainty_seeds": len(seeds), "div_rmse": pairwise_rmse(x, mask),
            "unc_spearman": spearman(std_m, err_m), "ause": curves.ause, "ause_random": curves.ause_random,
            "sparsification": [float(v) for v in curves.by_uncertainty],
            "sparsification_oracle": [float(v) for v in curves.oracle], "uncertainty_note": "; ".join(notes),
        }
        maps.append((cam, std, error * mask))
        grid_cams.append(cam)
        save_image_atomic(std_map_image(std), std_map_path(maps_dir, cam))
    if maps:
        _write_grid(maps, ensembles, gts, maps_dir, len(samples[grid_cams[0]]))

    out: dict[tuple[int, str], dict] = {}
    for proto, items in work:
        views = [cam for cam in dict.fromkeys(cam for _, cam in items) if cam in samples]
        for cam in dict.fromkeys(cam for _, cam in items):
            if cam not in samples:
                out[(cam, proto.name)] = per_view[cam]
        for start in range(0, len(views), batch_size):
            chunk = views[start : start + batch_size]
            pred = torch.stack([ensembles[c] for c in chunk]).to(device).float() / 255
            gt = torch.stack([gts[c] for c in chunk]).to(device).float() / 255
            mask = torch.stack([masks[c] if masks[c] is not None else full for c in chunk]).to(device)
            values = image_metrics(pred, gt, mask, proto, lpips_model)
            for i, cam in enumerate(chunk):
                seed_rows = [r for r in rows if r["cam"] == cam and r["protocol"] == proto.name]
                view_mask = masks[cam] if masks[cam] is not None else full
                div_lpips = math.nan
                if lpips_model is not None and view_mask.any():
                    div_lpips = _pairwise_lpips(samples[cam].to(device).float() / 255, view_mask.to(device), proto,
                                                lpips_model, batch_size)
                out[(cam, proto.name)] = per_view[cam] | {
                    **{f"ens_{k}": float(values[k][i]) for k in ("psnr", "ssim", "lpips", "mse")},
                    "best_psnr": float(np.max([r["psnr"] for r in seed_rows])),
                    "best_ssim": float(np.max([r["ssim"] for r in seed_rows])),
                    "best_lpips": float(np.min([r["lpips"] for r in seed_rows])),
                    "div_lpips": div_lpips,
                }
    empty = sorted({cam for (cam, _), v in out.items() if v["uncertainty_note"].startswith("empty mask")})
    if empty:
        logger.warning("empty masks for cams %s: their diversity and calibration columns are NaN", empty)
    return out


def _write_grid(maps: list[tuple[int, torch.Tensor, torch.Tensor]], ensembles: dict[int, torch.Tensor],
                gts: dict[int, torch.Tensor], maps_dir: Path, n_seeds: int) -> Path:
    """Rows: truth, seed mean, std map, |seed mean - truth| in the mask; one column per view."""
    truth = [to_pil(gts[cam].float() / 255) for cam, _, _ in maps]
    means = [to_pil(ensembles[cam].float() / 255) for cam, _, _ in maps]
    stds = [std_map_image(std).convert("RGB") for _, std, _ in maps]
    errors = [std_map_image(err).convert("RGB") for _, _, err in maps]
    grid = labelled_grid(
        [truth, means, stds, errors],
        ["GT", f"mean of {n_seeds} seeds", f"std (white {STD_MAP_FULL_SCALE})", "|mean-GT| masked"],
        title=f"spread over seeds, cams {maps[0][0]}..{maps[-1][0]} (std maps: std_camNN.png)",
    )
    return save_image_atomic(grid, Path(maps_dir) / UNCERTAINTY_GRID)


def add_spread_columns(rows: list[dict], spread: dict[tuple[int, str], dict] | None, reason: str) -> None:
    """Put each view's columns on its seed rows; rows of views without them get `reason`."""
    for row in rows:
        values = (spread or {}).get((row["cam"], row["protocol"]))
        row.update(values if values is not None else not_computed(reason))


__all__ = ["SPARSIFICATION_FRACTIONS", "SPREAD_COLUMNS", "SPREAD_FIELDS", "SPREAD_METRICS", "STD_MAP_FULL_SCALE",
           "UNCERTAINTY_GRID", "add_spread_columns", "not_computed", "score_spread", "std_map_image", "wanted"]
