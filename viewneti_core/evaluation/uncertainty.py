"""The spread of one view's samples over seeds, and whether it points at the wrong pixels.

ViewNeTI draws a different image for every seed. These functions turn the N >= 2 samples of one view
into numbers (docs/method.md, "Sample diversity and uncertainty"):

- `pixel_std`: per-pixel standard deviation over the seeds (population std, N in the denominator),
  root-mean-square over the colour channels, so it is in image units ([0, 0.5] for images in [0, 1]);
- `ensemble_uint8`: the seed-mean image, rounded to 8 bits like every other prediction;
- `pairwise_rmse`: the mean over seed pairs of the masked pixel RMSE between two samples (diversity);
- `pixel_abs_error`: per-pixel absolute error, the mean over channels of |prediction - truth|;
- `spearman`: rank correlation of std and error over the masked pixels (scipy);
- `sparsification`: remove the most uncertain pixels first and track the mean error of the rest;
  against the oracle (largest errors first), the area between the two curves is AUSE.

Ties in the uncertainty (8-bit renders give many equal stds, identical seeds give a constant std) are
removed in random order, in expectation: a tie group loses its pixels in proportion, so a constant
uncertainty gives exactly the random-order baseline (a flat curve at the mean error), not an
arbitrary order picked by a sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SPARSIFICATION_STEPS = 20
# Fractions of the masked pixels removed: 0, 0.05, ..., 0.95 (removing all of them leaves no error to track).
SPARSIFICATION_FRACTIONS = np.arange(SPARSIFICATION_STEPS) / SPARSIFICATION_STEPS


def _check_samples(samples: torch.Tensor) -> torch.Tensor:
    if samples.dim() != 4:
        raise ValueError(f"samples must be (N, C, H, W), got shape {tuple(samples.shape)}")
    if samples.shape[0] < 2:
        raise ValueError(f"the spread over seeds needs at least 2 samples of the view, got {samples.shape[0]}")
    return samples.double()


def pixel_std(samples: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) samples in [0, 1] -> (H, W): sqrt(mean over channels of the variance over seeds)."""
    x = _check_samples(samples)
    return x.var(dim=0, unbiased=False).mean(dim=0).sqrt()


def ensemble_uint8(samples: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) samples -> their mean image (C, H, W), halves rounded up as predictions are written."""
    if samples.dtype != torch.uint8:
        raise TypeError(f"expected uint8 samples, got {samples.dtype}")
    x = _check_samples(samples)
    return (x.mean(dim=0) + 0.5).floor().clamp(0, 255).to(torch.uint8)


def pixel_abs_error(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(C, H, W) prediction and truth in [0, 1] -> (H, W) mean over channels of |pred - gt|."""
    if pred.shape != gt.shape or pred.dim() != 3:
        raise ValueError(f"need two (C, H, W) images of one shape, got {tuple(pred.shape)}, {tuple(gt.shape)}")
    return (pred.double() - gt.double()).abs().mean(dim=0)


def pairwise_rmse(samples: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over the N(N-1)/2 seed pairs of sqrt(sum(m (a - b)^2) / sum(m)), m over the 3 channels
    (the masked MSE of the DTU protocol between two samples). NaN for an empty mask."""
    x = _check_samples(samples)
    m = mask.to(torch.bool)
    if m.shape != x.shape[-2:]:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match the samples' {tuple(x.shape[-2:])}")
    if not m.any():
        return math.nan
    pixels = x[:, :, m]  # (N, C, P)
    rmses = [float(((pixels[i] - pixels[j]) ** 2).mean().sqrt())
             for i in range(len(pixels)) for j in range(i + 1, len(pixels))]
    return float(np.mean(rmses))


def is_constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values.flat[0]))


def spearman(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr) of two 1-D pixel arrays.

    A constant array ranks nothing: the correlation is undefined, and we return 0 (no association)
    rather than NaN; callers say so in the row's `uncertainty_note`. Empty arrays give NaN.
    """
    from scipy.stats import spearmanr

    uncertainty, error = np.asarray(uncertainty, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    if uncertainty.size != error.size:
        raise ValueError(f"{uncertainty.size} uncertainties for {error.size} errors")
    if uncertainty.size == 0:
        return math.nan
    if is_constant(uncertainty) or is_constant(error):
        return 0.0
    return float(spearmanr(uncertainty, error).statistic)


def sparsification(uncertainty: np.ndarray, error: np.ndarray,
                   fractions: np.ndarray = SPARSIFICATION_FRACTIONS) -> np.ndarray:
    """Mean error of the pixels left after removing floor(f * P) most uncertain ones, for each f.

    Pixels with equal uncertainty are removed in random order, in expectation: the tie group that
    the cut falls into contributes its mean error for every removed pixel it loses.
    """
    u, e = np.asarray(uncertainty, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    if u.size != e.size:
        raise ValueError(f"{u.size} uncertainties for {e.size} errors")
    if u.size == 0:
        return np.full(len(fractions), math.nan)
    if np.any((fractions < 0) | (fractions >= 1)):
        raise ValueError("sparsification fractions must lie in [0, 1)")
    order = np.argsort(-u, kind="stable")
    u_sorted, e_sorted = u[order], e[order]
    total = u.size
    cumulative = np.concatenate([[0.0], np.cumsum(e_sorted)])
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])  # first position of each tie group
    ends = np.r_[starts[1:], total]
    removed = np.floor(fractions * total).astype(np.int64)
    group = np.searchsorted(starts, removed, side="right") - 1  # the group holding the first kept position
    a, b = starts[group], ends[group]
    group_mean = (cumulative[b] - cumulative[a]) / (b - a)
    removed_sum = cumulative[a] + (removed - a) * group_mean
    return (cumulative[total] - removed_sum) / (total - removed)


@dataclass(frozen=True)
class Sparsification:
    """Sparsification of one view: curves at SPARSIFICATION_FRACTIONS, their areas, and the baseline."""

    by_uncertainty: np.ndarray  # remove the most uncertain pixels first
    oracle: np.ndarray  # remove the largest errors first (the best any uncertainty can do)
    ause: float  # area between by_uncertainty and oracle (0: the uncertainty ranks errors perfectly)
    ause_random: float  # the same area for a random order (a flat curve at the mean error)


def _area(curve: np.ndarray, fractions: np.ndarray) -> float:
    """Trapezoid rule (written out: np.trapezoid needs numpy 2)."""
    return float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(fractions)))


def sparsification_errors(uncertainty: np.ndarray, error: np.ndarray,
                          fractions: np.ndarray = SPARSIFICATION_FRACTIONS) -> Sparsification:
    """Both curves, AUSE and the random-order AUSE (trapezoid rule over `fractions`). NaN when empty."""
    by_uncertainty = sparsification(uncertainty, error, fractions)
    oracle = sparsification(error, error, fractions)
    random_curve = np.full(len(fractions), by_uncertainty[0])  # expected mean error of a random removal
    oracle_area = _area(oracle, fractions)
    return Sparsification(by_uncertainty, oracle, _area(by_uncertainty, fractions) - oracle_area,
                          _area(random_curve, fractions) - oracle_area)
