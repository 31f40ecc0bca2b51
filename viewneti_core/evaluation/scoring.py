"""Evaluate a predictions directory against DTU ground truth: one Parquet row per image and protocol.

The input is what `inference.write_predictions` writes (uint8 renders + a JSON index naming the run,
scan, step, seeds, cameras, training cameras, base model, weight label and DTU root). Ground truth and
masks come from the DTU tree through `viewneti_core.data.dtu`. Rows are keyed by
(run, scan, n_views, mode, step, seed, cam, role, protocol); the column list is `ROW_SCHEMA`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from viewneti_core.atomic_files import temp_file_beside
from viewneti_core.data import dtu
from viewneti_core.errors import ArtifactError
from viewneti_core.evaluation import seed_spread
from viewneti_core.evaluation.metrics import (
    EVAL_SIZE,
    LPIPS,
    check_aspect,
    get_protocol,
    image_metrics,
    load_ground_truth,
    load_mask,
    resize_bicubic_uint8,
)
from viewneti_core.inference import PREDICTIONS_FILE, PREDICTIONS_INDEX, read_predictions
from viewneti_core.safe_io import require

logger = logging.getLogger(__name__)

DEFAULT_PROTOCOLS = ("viewneti", "regnerf")
LPIPS_CHOICES = ("pretrained", "random", "none")

ROW_SCHEMA = pa.schema([
    ("run", pa.string()),  # run name (default: the run directory's name)
    ("scan", pa.int64()),
    ("n_views", pa.int64()),  # number of training views of the run (0 for a mode-3 pretraining run)
    ("mode", pa.int64()),  # learnable_mode of the run
    ("step", pa.int64()),
    ("seed", pa.int64()),
    ("cam", pa.int64()),  # 0-based DTU camera index
    ("role", pa.string()),  # "train" (one of the run's training views), "test", or "excluded" (DTU excluded view)
    ("dtu_test_view", pa.bool_()),  # one of the 25 standard DTU test views
    ("protocol", pa.string()),  # "viewneti" or "regnerf"
    ("background", pa.string()),  # colour of masked-out pixels for SSIM / LPIPS
    ("masked", pa.bool_()),  # False: the scan has no mask for this view, the metrics cover the whole image
    ("psnr", pa.float64()),
    ("ssim", pa.float64()),
    ("lpips", pa.float64()),  # NaN when LPIPS was not computed (lpips_backbone == "none")
    ("mse", pa.float64()),
    ("model", pa.string()),  # base model id the run was trained on
    ("weights", pa.string()),  # "pretrained" or "random" (base-model weights: random = not benchmark quality)
    ("lpips_backbone", pa.string()),  # "pretrained", "random" (tests only) or "none"
    ("object_token", pa.string()),
    ("light", pa.int64()),
    ("eval_height", pa.int64()),
    ("eval_width", pa.int64()),
    ("pred_height", pa.int64()),
    ("pred_width", pa.int64()),
    ("run_dir", pa.string()),
    ("predictions", pa.string()),  # the predictions directory the row was computed from
    *seed_spread.SPREAD_FIELDS,  # per-view values across the seeds (seed_spread.py), repeated on each seed row
])


def view_role(cam: int, train_cams: set[int]) -> str:
    """'train' for the run's own training views; other rendered views are 'test' unless DTU excludes them."""
    if cam in train_cams:
        return "train"
    return "excluded" if cam in dtu.EXCLUDED_VIEWS else "test"


def _load(pred_dir: Path) -> tuple[dict, dict[tuple[int, int], torch.Tensor]]:
    if not pred_dir.is_dir():
        raise FileNotFoundError(
            f"no predictions directory {pred_dir}: expected one written by `viewneti infer` "
            f"({PREDICTIONS_INDEX} + {PREDICTIONS_FILE})"
        )
    for name in (PREDICTIONS_INDEX, PREDICTIONS_FILE):
        if not (pred_dir / name).is_file():
            raise FileNotFoundError(f"{pred_dir} has no {name}: it is not a complete predictions directory")
    try:
        index, images = read_predictions(pred_dir)
    except KeyError as exc:
        raise ValueError(f"{pred_dir / PREDICTIONS_INDEX} names image {exc} that {PREDICTIONS_FILE} does not hold") from None
    if not images:
        raise ValueError(f"{pred_dir} holds no predicted images (its index lists none)")
    missing = [k for k in ("scan", "n_views", "train_cams", "step", "data_root") if k not in index]
    if missing:
        raise ValueError(f"{pred_dir / PREDICTIONS_INDEX} lacks {missing}: not written by viewneti inference")
    check_index_types(index, str(pred_dir / PREDICTIONS_INDEX))
    return index, images


def check_index_types(index: dict, where: str) -> None:
    """The keys of predictions.json that scoring reads, checked for their types (one line naming the file)."""
    for key, kinds in (("scan", (int, type(None))), ("n_views", int), ("step", int), ("data_root", str),
                       ("train_cams", list), ("light", int), ("learnable_mode", int)):
        if key in index:
            require(index, key, kinds, where)
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in index["train_cams"]):
        raise ArtifactError(f"{where}: key 'train_cams' must list camera indices (integers)")


def _to_uint8(image: torch.Tensor, what: str) -> torch.Tensor:
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"{what} has shape {tuple(image.shape)}, expected an RGB image (3, H, W)")
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


def evaluate_predictions(
    pred_dir: Path,
    out_parquet: Path | None = None,
    protocols: tuple[str, ...] | list[str] = DEFAULT_PROTOCOLS,
    device: str = "cpu",
    lpips_weights: str = "pretrained",
    run_name: str | None = None,
    data_root: Path | None = None,
    eval_size: tuple[int, int] = EVAL_SIZE,
    batch_size: int = 8,
    progress: bool = True,
    views_chosen: bool = False,
    uncertainty: bool | None = None,
) -> Path:
    """Score every predicted image against DTU ground truth in each protocol; write one Parquet table.

    out_parquet defaults to PRED_DIR/metrics.parquet. lpips_weights: "pretrained" (needs torchvision's
    VGG16 file, see metrics.LPIPS), "random" (tests; labelled in `lpips_backbone`) or "none" (LPIPS
    column NaN). data_root overrides the DTU root recorded in predictions.json (e.g. on another
    machine). eval_size is the (H, W) of the protocol and is recorded in every row; change it only for
    quick checks. `views_chosen`: the caller rendered a subset of the views on purpose (the pipeline's
    `views` parameter), so an incomplete regnerf view set is logged, not warned about. `uncertainty`: the
    per-view columns across seeds and the std maps (seed_spread.py); None turns them on when the
    predictions hold 2 or more seeds, True with fewer is an error. The file is
    written to a temporary name and renamed, so readers never see half a table.
    """
    pred_dir = Path(pred_dir)
    out_parquet = Path(out_parquet) if out_parquet is not None else pred_dir / "metrics.parquet"
    if isinstance(protocols, str):
        protocols = protocols.split(",")
    protocols = tuple(p.strip() for p in protocols if p.strip())
    if not protocols:
        raise ValueError("no protocols given; choose from viewneti, regnerf")
    specs = [get_protocol(p) for p in protocols]
    if lpips_weights not in LPIPS_CHOICES:
        raise ValueError(f"lpips_weights must be one of {LPIPS_CHOICES}, got {lpips_weights!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    # Build LPIPS first: a missing VGG file should stop us before any work is done.
    lpips_model = LPIPS(lpips_weights).to(device) if lpips_weights != "none" else None

    index, images = _load(pred_dir)
    scan = index["scan"]
    if scan is None:
        raise ValueError(f"{pred_dir} was not rendered for a DTU scan (scan is null): there is no ground truth")
    root = Path(data_root) if data_root is not None else Path(index["data_root"])
    light = int(index.get("light", dtu.DEFAULT_LIGHT))
    train_cams = {int(c) for c in index["train_cams"]}
    n_views = int(index["n_views"])
    if len(train_cams) != n_views:
        raise ValueError(f"{pred_dir / PREDICTIONS_INDEX}: n_views={n_views} but train_cams={sorted(train_cams)}")

    preds = {key: _to_uint8(img, f"prediction seed{key[0]}_cam{key[1]:02d}") for key, img in images.items()}
    sizes = {tuple(p.shape[-2:]) for p in preds.values()}
    if len(sizes) != 1:
        raise ValueError(f"predictions in {pred_dir} have different sizes {sorted(sizes)} (H x W)")
    pred_h, pred_w = sizes.pop()
    check_aspect(pred_h, pred_w, f"the predictions in {pred_dir}")
    cams = sorted({cam for _, cam in preds})
    seeds = sorted({seed for seed, _ in preds})
    spread_on = seed_spread.wanted(uncertainty, seeds, pred_dir)

    gts, masks = {}, {}
    for cam in cams:
        path = root / dtu.image_relpath(scan, cam, light)
        if not path.is_file():
            raise FileNotFoundError(
                f"ground truth for scan {scan} cam {cam} light {light} not found at {path}; "
                "pass data_root (--data-root) if the DTU tree has moved"
            )
        gts[cam] = resize_bicubic_uint8(load_ground_truth(path).unsqueeze(0), eval_size)[0]
        mask_path = dtu.find_mask(root, scan, cam)
        masks[cam] = load_mask(mask_path, eval_size) if mask_path is not None else None
    unmasked = [cam for cam in cams if masks[cam] is None]
    if unmasked and len(unmasked) < len(cams):
        logger.warning("scan %d has masks for some views but not for cams %s: those rows are masked=False",
                       scan, unmasked)
    elif unmasked:
        logger.warning("scan %d has no masks: every row is evaluated on the whole image and flagged masked=False",
                       scan)

    lpips_label = lpips_model.backbone_label if lpips_model is not None else "none"
    base = {
        "run": run_name or Path(index.get("run_dir") or pred_dir).name, "scan": int(scan), "n_views": n_views,
        "mode": int(index.get("learnable_mode", -1)), "step": int(index["step"]),
        "model": str(index.get("base_model", "")), "weights": str(index.get("weights", "unknown")),
        "lpips_backbone": lpips_label, "object_token": str(index.get("object_token", "")), "light": light,
        "eval_height": eval_size[0], "eval_width": eval_size[1], "pred_height": pred_h, "pred_width": pred_w,
        "run_dir": str(index.get("run_dir", "")), "predictions": str(pred_dir),
    }
    rows: list[dict] = []
    work = []
    for proto in specs:
        selected = [c for c in cams if not proto.dtu_test_views_only or (c in dtu.TEST_VIEWS and c not in train_cams)]
        if proto.dtu_test_views_only and len(selected) < len(dtu.TEST_VIEWS):
            logger.log(logging.INFO if views_chosen else logging.WARNING,
                       "%s protocol: %d of the %d DTU test views were rendered", proto.name, len(selected),
                       len(dtu.TEST_VIEWS))
        work.append((proto, [(seed, cam) for seed in seeds for cam in selected if (seed, cam) in preds]))
    bar = tqdm(total=sum(len(items) for _, items in work), desc="evaluating", unit="image", disable=not progress)
    for proto, items in work:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            pred = resize_bicubic_uint8(torch.stack([preds[k] for k in chunk]).to(device), eval_size).float() / 255
            gt = torch.stack([gts[cam] for _, cam in chunk]).to(device).float() / 255
            mask = torch.stack([
                masks[cam] if masks[cam] is not None else torch.ones(eval_size, dtype=torch.bool) for _, cam in chunk
            ]).to(device)
            values = image_metrics(pred, gt, mask, proto, lpips_model)
            for i, (seed, cam) in enumerate(chunk):
                rows.append(base | {
                    "seed": seed, "cam": cam, "role": view_role(cam, train_cams),
                    "dtu_test_view": cam in dtu.TEST_VIEWS, "protocol": proto.name, "background": proto.background,
                    "masked": masks[cam] is not None,
                    **{k: float(values[k][i]) for k in ("psnr", "ssim", "lpips", "mse")},
                })
            bar.update(len(chunk))
    bar.close()
    spread = seed_spread.score_spread(preds, gts, masks, work, rows, eval_size, device, lpips_model, batch_size,
                                      pred_dir) if spread_on else None
    seed_spread.add_spread_columns(rows, spread, "turned off" if len(seeds) >= 2 else "one seed: no spread")
    bad = [(r["seed"], r["cam"]) for r in rows if math.isnan(r["mse"])]
    if bad:
        logger.warning("empty masks (nothing to compare, metrics NaN) for (seed, cam) %s", sorted(set(bad)))
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    return write_parquet_atomic(table, out_parquet)


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write next to the target and rename, so a reader never sees half a table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".parquet.tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
