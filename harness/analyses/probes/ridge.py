"""Closed-form ridge regression, the linear probe, with its penalty chosen on validation data.

Features are standardised and targets centred with statistics of the fitting set (no intercept
penalty). One SVD of the training matrix gives the solution for every penalty in the grid:
``W(a) = V diag(s / (s^2 + a)) U^T Y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scores import nanmean, r2_per_dim

ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))


@dataclass
class Standardizer:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def _svd_solutions(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> np.ndarray:
    """(A, p, d) ridge weights for standardised x (n, p) and centred y (n, d)."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y  # (r, d)
    shrink = s[None, :] / (s[None, :] ** 2 + np.asarray(alphas)[:, None])  # (A, r)
    return np.einsum("rp,ar,rd->apd", vt, shrink, uty)


class RidgeProbe:
    """``fit(x, y, x_val, y_val)`` picks the penalty with the best mean validation R^2 (with
    ``per_target``, each target column's own best penalty: a column the features cannot predict
    then does not shrink the others), then refits on training + validation data; ``predict(x)``."""

    def __init__(self, alphas: tuple[float, ...] = ALPHAS, per_target: bool = False):
        self.alphas, self.per_target = alphas, per_target
        self.alpha: float | list[float] | None = None  # a list, one per target column, with per_target
        self.val_r2: float | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, x_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> RidgeProbe:
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        middle = len(self.alphas) // 2
        if x_val is not None and len(x_val) and len(self.alphas) > 1:
            xs, ym = Standardizer.fit(x), y.mean(axis=0)
            weights = _svd_solutions(xs(x), y - ym, self.alphas)
            xv = xs(np.asarray(x_val, np.float64))
            per_dim = np.stack([r2_per_dim(y_val, xv @ w + ym) for w in weights])  # (alphas, targets)
            if self.per_target:
                finite = np.where(np.isfinite(per_dim), per_dim, -np.inf)
                best = [int(np.argmax(finite[:, d])) if np.isfinite(per_dim[:, d]).any() else middle
                        for d in range(per_dim.shape[1])]
                self.alpha = [self.alphas[b] for b in best]
                self.val_r2 = float(nanmean(np.array([per_dim[b, d] for d, b in enumerate(best)])))
            else:
                scores = [nanmean(row) for row in per_dim]
                b = int(np.nanargmax(scores)) if np.isfinite(scores).any() else middle
                self.alpha, self.val_r2 = self.alphas[b], float(scores[b])
            x, y = np.concatenate([x, x_val]), np.concatenate([y, np.asarray(y_val, np.float64)])
        else:
            self.alpha = [self.alphas[middle]] * y.shape[1] if self.per_target else self.alphas[middle]
        return self.fit_penalties(x, y, self.alpha if self.per_target else [self.alpha] * y.shape[1])

    def fit_penalties(self, x: np.ndarray, y: np.ndarray, penalties: list[float]) -> RidgeProbe:
        """Fit with the given penalty per target column (one SVD for all of them)."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        self.scaler = Standardizer.fit(x)
        self.y_mean = y.mean(axis=0)
        distinct = tuple(sorted(set(penalties)))
        solutions = dict(zip(distinct, _svd_solutions(self.scaler(x), y - self.y_mean, distinct)))
        self.weight = np.stack([solutions[a][:, d] for d, a in enumerate(penalties)], axis=1)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.scaler(np.asarray(x, np.float64)) @ self.weight + self.y_mean
