"""How far two raters agree: per-episode agreement and agreement across policies.

Pure numpy. In this harness the reference rater is always the **simulator** (its success
oracle) and the candidate is the **world model** (a judge's verdict on a world-model rollout,
or a judge's verdict on a simulator rollout when the judge itself is scored). The parameter
names say which side is which wherever the order matters.

Per episode (binary or multi-class labels):
  ``confusion``, ``accuracy``, ``cohen_kappa``, ``precision_recall``.
Across policies (one success rate per policy and backend):
  ``pearson``, ``spearman``, ``mmrv`` (SimplerEnv's mean maximum rank violation).
Helpers for the summary: ``bootstrap_ci``, ``latent_divergence``.

Undefined cases: Pearson r and Spearman rho follow SimplerEnv's convention (``simpler_env/utils/
metrics.py``): both score vectors constant and identical gives 1, one constant and the other
not gives 0. Cohen's kappa of two raters who both give one and the same label on every item is
0/0 and is reported as undefined (None, ``null`` in ``results.json``), as scikit-learn's NaN
says: a policy that always fails in both backends agrees perfectly by accuracy, but kappa has
nothing to measure there.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np


def _pair(a: Sequence, b: Sequence, what: str) -> tuple[list, list]:
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"{what}: the two raters rated different numbers of items ({len(a)} vs {len(b)})")
    if not a:
        raise ValueError(f"{what}: no items to compare")
    return a, b


def _bools(values: Sequence, what: str) -> np.ndarray:
    arr = np.asarray(list(values))
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{what} expects booleans (or 0/1), got {arr[~np.isin(arr, (0, 1))][:3].tolist()}")
    return arr.astype(bool)


def shown(value: float | None, spec: str = ".2f") -> str:
    """A statistic for text: formatted, or "undefined" where it is None (kappa of two constant raters)."""
    return "undefined" if value is None else format(value, spec)


# per episode --------------------------------------------------------------------------------
def confusion(sim: Sequence[bool], judged: Sequence[bool]) -> dict[str, int]:
    """Binary confusion counts with the simulator as ground truth and success as positive:
    ``tp`` both succeed, ``fp`` judged success where the simulator failed, ``fn`` judged
    failure where the simulator succeeded, ``tn`` both fail."""
    sim_l, judged_l = _pair(sim, judged, "confusion")
    s, j = _bools(sim_l, "confusion"), _bools(judged_l, "confusion")
    return {"tp": int(np.sum(s & j)), "fp": int(np.sum(~s & j)), "fn": int(np.sum(s & ~j)),
            "tn": int(np.sum(~s & ~j))}


def accuracy(sim: Sequence[Hashable], judged: Sequence[Hashable]) -> float:
    """Fraction of items on which the two raters give the same label."""
    a, b = _pair(sim, judged, "accuracy")
    return float(np.mean([x == y for x, y in zip(a, b)]))


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable], *, undefined: float | None = None) -> float | None:
    """Cohen's kappa ``(p_o - p_e) / (1 - p_e)`` for two raters over the same items, any number
    of classes (labels are compared for equality; bools and 0/1 mix). Symmetric in ``a``, ``b``.

    ``p_o`` is the observed agreement, ``p_e`` the agreement expected if both raters labelled
    independently with their own label frequencies. Equals scikit-learn's
    ``cohen_kappa_score`` (unweighted) wherever that is defined.

    One rater constant, the other not: ``p_e == p_o`` exactly, so kappa is 0 — a rater that
    always says the same thing agrees only as often as chance predicts. Both raters constant
    with the same label: ``p_e == 1`` and the formula is 0/0 (scikit-learn returns NaN). We
    return ``undefined`` (default None: undefined; a NaN would break ``results.json``). Report
    the accuracy and the confusion counts beside kappa, which stay defined in this case.
    """
    a, b = _pair(a, b, "cohen_kappa")
    a = [bool(x) if isinstance(x, np.bool_) else x for x in a]
    b = [bool(x) if isinstance(x, np.bool_) else x for x in b]
    labels = list(dict.fromkeys(a + b))
    index = {lab: i for i, lab in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    n = table.sum()
    p_o = np.trace(table) / n
    p_e = float(np.sum(table.sum(axis=1) * table.sum(axis=0))) / (n * n)
    if np.isclose(p_e, 1.0):
        return None if undefined is None else float(undefined)
    return float((p_o - p_e) / (1.0 - p_e))


def precision_recall(sim: Sequence[bool], judged: Sequence[bool]) -> dict[str, float]:
    """Precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)`` and their F1, success positive.
    A ratio with a zero denominator is 0.0 (scikit-learn's ``zero_division`` default): a judge
    that never says success has no precision to credit, and on a set without successes there
    is no recall to earn."""
    c = confusion(sim, judged)
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


# across policies ----------------------------------------------------------------------------
def _scores(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} expects one score per policy, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} expects finite scores, got {arr[~np.isfinite(arr)][:3].tolist()}")
    return arr


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r between two score vectors (symmetric). A constant vector has no variance:
    r is 1 if both are constant, 0 if only one is (the module's convention, SimplerEnv's)."""
    x_l, y_l = _pair(x, y, "pearson")
    xa, ya = _scores(x_l, "pearson"), _scores(y_l, "pearson")
    xc, yc = xa - xa.mean(), ya - ya.mean()
    sx, sy = float(np.sqrt(np.sum(xc * xc))), float(np.sqrt(np.sum(yc * yc)))
    x_const, y_const = sx <= 1e-12 * max(1.0, float(np.abs(xa).max())), sy <= 1e-12 * max(1.0, float(np.abs(ya).max()))
    if x_const or y_const:
        return 1.0 if x_const and y_const else 0.0
    return float(np.clip(np.sum(xc * yc) / (sx * sy), -1.0, 1.0))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span (``scipy.stats.rankdata``'s
    ``average`` method)."""
    v = _scores(values, "average_ranks")
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the average ranks (ties averaged)."""
    x_l, y_l = _pair(x, y, "spearman")
    return pearson(average_ranks(x_l), average_ranks(y_l))


def mmrv(*, sim_scores: Sequence[float], wm_scores: Sequence[float]) -> float:
    """Mean maximum rank violation (SIMPLER, Li et al. 2024), lower is better, in [0, 1] for
    success rates.

    ``sim_scores``: each policy's success rate in the **simulator** (the reference, SimplerEnv's
    "real"); ``wm_scores``: the same policies' success rates in the **world model** (the proxy,
    SimplerEnv's "sim"). Keyword-only, because swapping them changes the value.

    For each policy i, over the other policies j whose order the world model gets wrong
    (``(wm_i > wm_j) != (sim_i > sim_j)``, strict comparisons, so a tie on one side and an order
    on the other counts), take the largest reference gap ``|sim_i - sim_j|``; average over i.
    Swapping two policies that are close in the simulator costs little, swapping a strong and a
    weak one costs much. Same as ``simpler_env.utils.metrics.mean_maximum_rank_violation(
    perf_sim=wm_scores, perf_real=sim_scores)``.
    """
    sim_l, wm_l = _pair(sim_scores, wm_scores, "mmrv")
    real, proxy = _scores(sim_l, "mmrv sim_scores"), _scores(wm_l, "mmrv wm_scores")
    proxy_order = proxy[:, None] > proxy[None, :]  # (P, P)
    real_order = real[:, None] > real[None, :]
    gaps = np.abs(real[:, None] - real[None, :])
    violated = np.where(proxy_order != real_order, gaps, 0.0)
    return float(violated.max(axis=1).mean())


# summaries ----------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], float] = np.mean, *,
                 resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``values`` (e.g. per-episode 0/1
    successes), deterministic under ``seed``. One value gives a zero-width interval."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_ci: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    stats = np.array([statistic(v[row]) for row in idx]) if statistic is not np.mean else v[idx].mean(axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def latent_divergence(wm_latents: np.ndarray, sim_latents: np.ndarray) -> dict[str, list[float]]:
    """Per-step distance between a world-model rollout's latents and the encoded simulator
    rollout, both (T, N, D) from the same encoder: mean squared error and mean token cosine
    similarity at each step (the first step is the shared context, so it should be ~0 / ~1)."""
    a = np.asarray(wm_latents, dtype=np.float64)
    b = np.asarray(sim_latents, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"latent_divergence expects two (T, N, D) arrays of one shape, got {a.shape} and {b.shape}")
    mse = ((a - b) ** 2).mean(axis=(1, 2))
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)  # (T, N)
    both_zero, one_zero = (na == 0) & (nb == 0), (na == 0) ^ (nb == 0)
    cos = (a * b).sum(-1) / np.maximum(na * nb, 1e-300)
    cos = np.where(both_zero, 1.0, np.where(one_zero, 0.0, cos)).mean(axis=1)
    return {"mse": mse.tolist(), "cosine": cos.tolist()}
