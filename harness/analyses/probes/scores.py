"""Per-dimension R^2 and Pearson r of a probe's predictions, and their averages over dimension groups.

R^2 per target column is ``1 - SS_res / SS_tot`` with ``SS_tot`` about the *test* mean (sklearn's
``r2_score``), so predicting the training mean scores at or below 0. A column that is constant on the
test set has no R^2 (and no Pearson r); it is NaN and left out of every average (nan-mean).
"""

from __future__ import annotations

import numpy as np


def r2_per_dim(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n, d), (n, d) -> (d,) coefficient of determination per column (NaN for a constant column)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    out = np.full(y.shape[1], np.nan)
    ok = ss_tot > 1e-12 * len(y)
    out[ok] = 1.0 - ss_res[ok] / ss_tot[ok]
    return out


def pearson_per_dim(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n, d), (n, d) -> (d,) Pearson correlation per column (NaN where either side is constant)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    yc, pc = y - y.mean(axis=0), pred - pred.mean(axis=0)
    denom = np.sqrt((yc ** 2).sum(axis=0) * (pc ** 2).sum(axis=0))
    out = np.full(y.shape[1], np.nan)
    ok = denom > 1e-12 * len(y)
    out[ok] = (yc * pc).sum(axis=0)[ok] / denom[ok]
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean over the finite entries; NaN when there are none."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def score(y: np.ndarray, pred: np.ndarray, groups: dict[str, np.ndarray]) -> dict[str, object]:
    """R^2 and Pearson r, overall (mean over target columns) and per group (mean over the group's
    columns). ``groups`` maps a name to the boolean mask of its target columns."""
    r2, r = r2_per_dim(y, pred), pearson_per_dim(y, pred)
    return {
        "r2": nanmean(r2), "pearson": nanmean(r),
        "r2_groups": {g: nanmean(r2[m]) for g, m in groups.items()},
        "pearson_groups": {g: nanmean(r[m]) for g, m in groups.items()},
    }
