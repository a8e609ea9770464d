"""The world-model-vs-simulator block of results.json: does the world model agree with reality?

Built from the episode records of a matched run (``harness eval --wm NAME``). For each
world-model backend:

- ``episodes``: per-episode agreement of world-model-judged success with simulator success
  (accuracy, Cohen's kappa, confusion counts, precision/recall) over every matched pair, each
  with a bootstrap 95% interval; an episode that raised counts as a failure of its backend
  (``errors``: pairs with one);
- ``judge_on_sim``: the same judge scored on the simulator's own rollouts against the oracle, so
  a judge error is not mistaken for a world-model error;
- ``policies``: each policy's success rate in both backends with Wilson 95% intervals (also per
  task), its per-episode agreement, and an exact McNemar test of simulator vs world model on its
  paired episodes;
- ``ranking``: across policies, Pearson r, Spearman rho and MMRV (rank violations weighted by
  the simulator's success-rate gaps) of world-model vs simulator success rates, each with a
  bootstrap 95% interval;
- ``paired_tests``: for every two policies, an exact McNemar test on the episodes both ran (same
  task and init state), in the simulator and in the world model;
- ``bootstrap``: how the intervals were drawn: ``resamples`` resamples of the matched episodes,
  with replacement within each policy and task (so every policy keeps its episode count per
  task), percentile intervals at ``level``, numpy's default_rng(``seed``);
- ``latent_divergence``: mean normalised latent MSE per world-model step between the world
  model's rollout and the encoded simulator rollout, over the episodes replayed open-loop under
  the simulator's actions only (the model's own error), with the number of episodes at each
  step; ``latent_divergence_closed_loop``: the same over closed-loop episodes, where the world
  model follows the policy's actions on its own frames, so the two rollouts may part for that
  reason too;
- ``modes``: how many episodes acted closed-loop in the world model and how many replayed
  simulator actions open-loop (policies that read the simulator's state).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from harness.stats import agreement as ag
from harness.stats.intervals import wilson_interval
from harness.stats.paired import mcnemar_exact

SIM = "sim"
OPEN_LOOP = "open_loop_replay"
BOOTSTRAP = {"resamples": 2000, "level": 0.95, "seed": 0, "within": "policy and task"}


def _rate_block(successes: list[bool]) -> dict[str, Any]:
    n, k = len(successes), int(sum(bool(s) for s in successes))
    if not n:
        return {"n": 0, "successes": 0, "success_rate": None, "ci95": [None, None]}
    return {"n": n, "successes": k, "success_rate": k / n, "ci95": list(wilson_interval(k, n))}


def _episode_agreement(sim: list[bool], other: list[bool]) -> dict[str, Any]:
    if not sim:
        return {"n": 0}
    return {"n": len(sim), "accuracy": ag.accuracy(sim, other), "cohen_kappa": ag.cohen_kappa(sim, other),
            "confusion": ag.confusion(sim, other), **ag.precision_recall(sim, other)}


def _ranking(sim_rates: dict[str, float], wm_rates: dict[str, float]) -> dict[str, Any]:
    names = sorted(set(sim_rates) & set(wm_rates))
    if len(names) < 2:
        return {"policies": names, "note": "ranking needs at least 2 policies"}
    s, w = [sim_rates[n] for n in names], [wm_rates[n] for n in names]
    return {"policies": names, "pearson_r": ag.pearson(s, w), "spearman_rho": ag.spearman(s, w),
            "mmrv": ag.mmrv(sim_scores=s, wm_scores=w)}


def _percentile(values: list[float], level: float) -> list[float | None]:
    if not values:
        return [None, None]
    lo, hi = np.quantile(np.asarray(values), [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_intervals(pairs: list[tuple[dict[str, Any], dict[str, Any]]], resamples: int = BOOTSTRAP["resamples"],
                        level: float = BOOTSTRAP["level"], seed: int = BOOTSTRAP["seed"]) -> dict[str, Any]:
    """Percentile intervals of the ranking figures and the per-episode agreement over resamples
    of the matched (simulator, world model) pairs, drawn with replacement within each policy
    and task. A resample whose kappa is undefined adds nothing to kappa's interval
    (``kappa_defined`` counts those that did)."""
    cells: dict[tuple[str, str], list[tuple[bool, bool]]] = defaultdict(list)
    for s, w in pairs:
        cells[(s["policy"], s["env_id"])].append((bool(s["success"]), bool(w["success"])))
    keys = sorted(cells)
    arrays = [np.asarray(cells[k], dtype=bool) for k in keys]  # (n_cell, 2): sim, wm
    policies = sorted({p for p, _ in keys})
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"pearson_r": [], "spearman_rho": [], "mmrv": [], "accuracy": [], "cohen_kappa": []}
    for _ in range(resamples):
        drawn = [a[rng.integers(0, len(a), len(a))] for a in arrays]
        totals = {p: np.zeros(3) for p in policies}  # episodes, sim successes, wm successes
        for (policy, _), d in zip(keys, drawn):
            totals[policy] += (len(d), d[:, 0].sum(), d[:, 1].sum())
        both = np.concatenate(drawn)
        out["accuracy"].append(float(np.mean(both[:, 0] == both[:, 1])))
        kappa = ag.cohen_kappa(both[:, 0].tolist(), both[:, 1].tolist())
        if kappa is not None:
            out["cohen_kappa"].append(kappa)
        if len(policies) >= 2:
            sim = [totals[p][1] / totals[p][0] for p in policies]
            wm = [totals[p][2] / totals[p][0] for p in policies]
            out["pearson_r"].append(ag.pearson(sim, wm))
            out["spearman_rho"].append(ag.spearman(sim, wm))
            out["mmrv"].append(ag.mmrv(sim_scores=sim, wm_scores=wm))
    return {**{f"{k}_ci95": _percentile(v, level) for k, v in out.items()},
            "kappa_defined": len(out["cohen_kappa"])}


def paired_tests(records: list[dict[str, Any]], backend: str) -> list[dict[str, Any]]:
    """Exact McNemar tests between every two policies on the episodes both ran in ``backend``
    (same task and init state; an error is a failure)."""
    by_policy: dict[str, dict[tuple[str, int], bool]] = defaultdict(dict)
    for r in records:
        if r["backend"] == backend:
            by_policy[r["policy"]][(r["env_id"], r["init_state"])] = bool(r["success"])
    names = sorted(by_policy)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = sorted(set(by_policy[a]) & set(by_policy[b]))
            if common:
                out.append({"a": a, "b": b, **mcnemar_exact([by_policy[a][k] for k in common],
                                                               [by_policy[b][k] for k in common])})
    return out


def _divergence(curves: list[list[float]]) -> dict[str, list]:
    longest = max((len(c) for c in curves), default=0)
    divergence: dict[str, list] = {"mean": [], "episodes": []}
    for k in range(longest):
        vals = [c[k] for c in curves if len(c) > k]
        divergence["mean"].append(float(np.mean(vals)))
        divergence["episodes"].append(len(vals))
    return divergence


def compare_backends(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"wm:<name>": {...}} for every world-model backend in ``records``; {} for a simulator-only run."""
    by_key = {(r["policy"], r["backend"], r["env_id"], r["init_state"]): r for r in records}
    out: dict[str, Any] = {}
    for backend in sorted({r["backend"] for r in records if r["backend"] != SIM}):
        pairs = []  # (sim record, wm record); an error record has success False: a failure
        errors = 0
        for r in records:
            if r["backend"] != backend:
                continue
            s = by_key.get((r["policy"], SIM, r["env_id"], r["init_state"]))
            if s is None:
                continue
            errors += r["outcome"] == "error" or s["outcome"] == "error"
            pairs.append((s, r))
        sim_ok = [bool(s["success"]) for s, _ in pairs]
        wm_ok = [bool(w["success"]) for _, w in pairs]
        judged = [(bool(s["success"]), bool(s["judge_success"])) for s, _ in pairs if "judge_success" in s]

        per_policy: dict[str, Any] = {}
        sim_rates, wm_rates = {}, {}
        grouped: dict[str, list] = defaultdict(list)
        for s, w in pairs:
            grouped[s["policy"]].append((s, w))
        for policy, ps in sorted(grouped.items()):
            tasks: dict[str, Any] = {}
            by_task: dict[str, list] = defaultdict(list)
            for s, w in ps:
                by_task[s["env_id"]].append((s, w))
            for env_id, ts in sorted(by_task.items()):
                tasks[env_id] = {"sim": _rate_block([s["success"] for s, _ in ts]),
                                 "wm": _rate_block([w["success"] for _, w in ts])}
            sim_b, wm_b = _rate_block([s["success"] for s, _ in ps]), _rate_block([w["success"] for _, w in ps])
            sim_rates[policy], wm_rates[policy] = sim_b["success_rate"], wm_b["success_rate"]
            modes = sorted({w.get("mode", "?") for _, w in ps})
            per_policy[policy] = {"sim": sim_b, "wm": wm_b, "mode": modes[0] if len(modes) == 1 else modes,
                                  "agreement": _episode_agreement([s["success"] for s, _ in ps],
                                                                  [w["success"] for _, w in ps]),
                                  "mcnemar_sim_vs_wm": mcnemar_exact([s["success"] for s, _ in ps],
                                                                     [w["success"] for _, w in ps]),
                                  "tasks": tasks}

        intervals = bootstrap_intervals(pairs) if pairs else {}
        episodes = _episode_agreement(sim_ok, wm_ok)
        if pairs:
            episodes.update(accuracy_ci95=intervals["accuracy_ci95"], cohen_kappa_ci95=intervals["cohen_kappa_ci95"])
        ranking = _ranking(sim_rates, wm_rates)
        if "pearson_r" in ranking:
            ranking.update({f"{k}_ci95": intervals[f"{k}_ci95"] for k in ("pearson_r", "spearman_rho", "mmrv")})

        modes: dict[str, int] = defaultdict(int)
        for _, w in pairs:
            modes[w.get("mode", "?")] += 1
        out[backend] = {
            "judge": next((w.get("judge") for _, w in pairs if w.get("judge")), None),
            "episodes": episodes,
            "errors": errors,
            "judge_on_sim": _episode_agreement([a for a, _ in judged], [b for _, b in judged]),
            "policies": per_policy,
            "ranking": ranking,
            "paired_tests": {SIM: paired_tests(records, SIM), "wm": paired_tests(records, backend)},
            "bootstrap": {**BOOTSTRAP, "kappa_defined": intervals.get("kappa_defined", 0)},
            "latent_divergence": _divergence([w.get("latent_divergence") or [] for _, w in pairs
                                              if w.get("mode") == OPEN_LOOP]),
            "latent_divergence_closed_loop": _divergence([w.get("latent_divergence") or [] for _, w in pairs
                                                          if w.get("mode") != OPEN_LOOP]),
            "modes": dict(modes),
        }
    return out
