"""Agreement metrics against scikit-learn, scipy, a published sim-vs-real table and hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from harness.stats.agreement import (
    accuracy,
    average_ranks,
    bootstrap_ci,
    cohen_kappa,
    confusion,
    latent_divergence,
    mmrv,
    pearson,
    precision_recall,
    spearman,
)

# Real-robot and SIMPLER success rates of Google Robot policies, as published with SimplerEnv
# (Li et al. 2024, "Evaluating Real-World Robot Manipulation Policies in Simulation"; the tables
# REAL_PERF / SIMPLER_PERF in simpler-env/SimplerEnv simpler_env/utils/metrics.py). Policies in
# the order rt-2-x, rt-1-converged, rt-1-15pct, rt-1-x, rt-1-begin, octo-base.
REAL = {
    "google_robot_pick_coke_can": [0.907, 0.853, 0.920, 0.760, 0.133, 0.293],
    "google_robot_move_near": [0.733, 0.633, 0.583, 0.450, 0.017, 0.350],
    "google_robot_open_drawer": [0.333, 0.815, 0.704, 0.519, 0.000, 0.148],
    "google_robot_close_drawer": [0.630, 0.926, 0.889, 0.741, 0.000, 0.519],
    "google_robot_place_apple_in_closed_top_drawer": [0.074, 0.185, 0.185, 0.407, 0.000, 0.000],
}
SIMPLER = {
    "google_robot_pick_coke_can": [0.787, 0.857, 0.710, 0.567, 0.027, 0.170],
    "google_robot_move_near": [0.779, 0.442, 0.354, 0.317, 0.050, 0.042],
    "google_robot_open_drawer": [0.157, 0.601, 0.463, 0.296, 0.000, 0.009],
    "google_robot_close_drawer": [0.343, 0.861, 0.667, 0.891, 0.278, 0.444],
    "google_robot_place_apple_in_closed_top_drawer": [0.037, 0.065, 0.130, 0.213, 0.000, 0.000],
}


def _mmrv_by_definition(reference, proxy):
    """MMRV written out from the paper's definition, one policy pair at a time."""
    worst = []
    for i in range(len(reference)):
        v = 0.0
        for j in range(len(reference)):
            if (proxy[i] > proxy[j]) != (reference[i] > reference[j]):
                v = max(v, abs(reference[i] - reference[j]))
        worst.append(v)
    return sum(worst) / len(worst)


# --- per-episode -------------------------------------------------------------------------------
def test_confusion_accuracy_precision_recall_hand_computed():
    sim = [True, True, True, False, False, False, False, True]
    judged = [True, True, False, True, False, False, False, False]
    assert confusion(sim, judged) == {"tp": 2, "fp": 1, "fn": 2, "tn": 3}
    assert accuracy(sim, judged) == pytest.approx(5 / 8)
    pr = precision_recall(sim, judged)
    assert pr["precision"] == pytest.approx(2 / 3)
    assert pr["recall"] == pytest.approx(2 / 4)
    assert pr["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # p_o = 5/8; p_e = (4/8)(3/8) + (4/8)(5/8) = 1/2; kappa = (5/8 - 1/2) / (1/2) = 1/4
    assert cohen_kappa(sim, judged) == pytest.approx(0.25)
    # zero denominators are 0.0, as scikit-learn's zero_division default
    assert precision_recall([True, False], [False, False]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert confusion([1, 0], [0, 0]) == {"tp": 0, "fp": 0, "fn": 1, "tn": 1}


def test_cohen_kappa_matches_scikit_learn_binary_and_multiclass():
    sk = pytest.importorskip("sklearn.metrics", reason='scikit-learn not installed: pip install -e ".[test]"')
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 40))
        classes = int(rng.integers(2, 5))
        a = rng.integers(0, classes, n)
        # correlated second rater: copies a with some probability
        b = np.where(rng.random(n) < rng.random(), a, rng.integers(0, classes, n))
        if len(set(a.tolist()) | set(b.tolist())) < 2:
            continue  # both constant and equal: sklearn is undefined (tested below)
        assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(sk.cohen_kappa_score(a, b), abs=1e-12), trial
        assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa(b.tolist(), a.tolist()))
    # string labels, and booleans mixed with 0/1
    a = ["left", "right", "up", "up", "left", "down", "right"]
    b = ["left", "up", "up", "up", "right", "down", "right"]
    assert cohen_kappa(a, b) == pytest.approx(sk.cohen_kappa_score(a, b))
    assert cohen_kappa([True, False, True, True], [1, 0, 0, 1]) == pytest.approx(
        sk.cohen_kappa_score([1, 0, 1, 1], [1, 0, 0, 1]))


def test_cohen_kappa_constant_raters():
    # one constant rater: p_e == p_o, kappa 0 (scikit-learn agrees)
    assert cohen_kappa([True, False, True], [True, True, True]) == 0.0
    assert cohen_kappa([False, False, False], [True, False, True]) == 0.0
    # both constant and opposite: p_o = 0, p_e = 0 -> 0
    assert cohen_kappa([False] * 4, [True] * 4) == 0.0
    # both constant and equal: 0/0, undefined as in scikit-learn (None; a value may be asked for)
    assert cohen_kappa([True] * 5, [True] * 5) is None
    assert cohen_kappa([False] * 10, [False] * 10) is None  # an always-failing policy: no perfect kappa
    assert cohen_kappa([0, 0], [0, 0], undefined=0.0) == 0.0
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0


def test_input_checks():
    with pytest.raises(ValueError, match="different numbers"):
        cohen_kappa([1, 0], [1])
    with pytest.raises(ValueError, match="no items"):
        accuracy([], [])
    with pytest.raises(ValueError, match="booleans"):
        confusion([0, 2], [1, 1])
    with pytest.raises(ValueError, match="finite"):
        pearson([0.1, float("nan")], [0.2, 0.3])
    with pytest.raises(TypeError):
        mmrv([0.1, 0.2], [0.2, 0.1])  # keyword-only: which side is the simulator must be said


# --- across policies ---------------------------------------------------------------------------
def test_mmrv_move_near_hand_computed():
    """Move Near: SIMPLER orders every pair as the real robot does except rt-1-begin (real 0.017,
    SIMPLER 0.050) and octo-base (real 0.350, SIMPLER 0.042). That one swap costs each of the two
    policies the real gap 0.350 - 0.017 = 0.333, the others nothing: MMRV = 2 * 0.333 / 6 = 0.111.
    With the arguments swapped the cost would be the SIMPLER gap 0.008: 2 * 0.008 / 6."""
    real, sim = REAL["google_robot_move_near"], SIMPLER["google_robot_move_near"]
    assert mmrv(sim_scores=real, wm_scores=sim) == pytest.approx(2 * 0.333 / 6)
    assert mmrv(sim_scores=sim, wm_scores=real) == pytest.approx(2 * 0.008 / 6)


@pytest.mark.parametrize("task", sorted(REAL))
def test_pearson_spearman_mmrv_on_simpler_table(task):
    stats = pytest.importorskip("scipy.stats", reason="scipy not installed (comes with scikit-learn)")
    real, sim = REAL[task], SIMPLER[task]
    assert pearson(real, sim) == pytest.approx(stats.pearsonr(real, sim)[0], abs=1e-12)
    assert pearson(real, sim) == pytest.approx(pearson(sim, real))
    assert spearman(real, sim) == pytest.approx(stats.spearmanr(real, sim)[0], abs=1e-12)
    assert mmrv(sim_scores=real, wm_scores=sim) == pytest.approx(_mmrv_by_definition(real, sim), abs=1e-12)
    assert 0.0 <= mmrv(sim_scores=real, wm_scores=sim) <= 1.0


def test_mmrv_and_correlation_limits():
    scores = [0.9, 0.5, 0.2, 0.1]
    assert mmrv(sim_scores=scores, wm_scores=[0.8, 0.6, 0.3, 0.0]) == 0.0  # same order
    assert pearson(scores, scores) == pytest.approx(1.0)
    assert spearman(scores, [0.8, 0.6, 0.3, 0.0]) == pytest.approx(1.0)
    reversed_ = scores[::-1]
    assert spearman(scores, reversed_) == pytest.approx(-1.0)
    # fully reversed: policy i's worst violation is its largest gap to any other policy
    expected = np.mean([0.8, 0.4, 0.7, 0.8])
    assert mmrv(sim_scores=scores, wm_scores=reversed_) == pytest.approx(expected)
    # a tie in the world model where the simulator orders two policies violates the pair from the
    # better policy's side only (strict comparisons, as SimplerEnv): (0.4 + 0) / 2
    assert mmrv(sim_scores=[0.6, 0.2], wm_scores=[0.5, 0.5]) == pytest.approx(0.2)
    # constant vectors: SimplerEnv's convention
    assert pearson([0.3, 0.3, 0.3], [0.1, 0.5, 0.9]) == 0.0
    assert pearson([0.3, 0.3], [0.7, 0.7]) == 1.0


def test_average_ranks_ties():
    assert average_ranks([0.5, 0.1, 0.5, 0.9, 0.1]).tolist() == [3.5, 1.5, 3.5, 5.0, 1.5]
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for _ in range(50):
        x, y = rng.integers(0, 4, 8).astype(float), rng.integers(0, 4, 8).astype(float)
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_bootstrap_ci_and_latent_divergence():
    ones = [1, 1, 1, 0, 0, 1, 0, 1, 1, 0] * 3
    lo, hi = bootstrap_ci(ones, seed=0)
    assert lo < np.mean(ones) < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_ci(ones, seed=0) == (lo, hi)  # deterministic under the seed
    assert bootstrap_ci([1.0]) == (1.0, 1.0)
    assert bootstrap_ci(ones, np.median, resamples=200)[0] <= 1.0
    z = np.random.default_rng(0).normal(size=(3, 4, 5))
    d = latent_divergence(z, z)
    assert d["mse"] == [0.0, 0.0, 0.0] and np.allclose(d["cosine"], 1.0)
    w = z.copy()
    w[2] = -w[2]
    d = latent_divergence(w, z)
    assert d["mse"][2] == pytest.approx(float((4 * z[2] ** 2).mean()))
    assert d["cosine"][2] == pytest.approx(-1.0)
    assert latent_divergence(np.zeros((1, 2, 3)), np.ones((1, 2, 3)))["cosine"] == [0.0]


def test_every_pair_order_costs_its_reference_gap():
    """Property: MMRV is 0 exactly when every pair the world model misorders is tied in the simulator."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        ref = rng.integers(0, 5, 5) / 4
        prox = rng.integers(0, 5, 5) / 4
        same = all((prox[i] > prox[j]) == (ref[i] > ref[j]) for i, j in itertools.product(range(5), repeat=2))
        free = all(ref[i] == ref[j] for i, j in itertools.product(range(5), repeat=2)
                   if (prox[i] > prox[j]) != (ref[i] > ref[j]))  # violations only between tied policies
        assert (mmrv(sim_scores=ref, wm_scores=prox) == 0.0) == free
        if same:
            assert free


def test_mcnemar_exact_is_the_two_sided_binomial_test_of_the_discordant_pairs():
    from harness.stats.paired import mcnemar_exact

    r = mcnemar_exact([1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1])  # 5 vs 1 discordant
    assert r == {"n": 7, "a_only": 5, "b_only": 1, "p_value": 0.21875}  # 2 * (1 + 6) / 64
    assert mcnemar_exact([0] * 10, [1] * 10)["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1])["p_value"] == 1.0  # nothing discordant
    assert mcnemar_exact([1, 0], [0, 1])["p_value"] == 1.0  # 1 vs 1
    with pytest.raises(ValueError, match="paired"):
        mcnemar_exact([1, 0], [1])
