"""The world-model-vs-simulator block of results.json: does the world model agree with reality?

Built from the episode records of a matched run (``harness eval --wm NAME``). For each
world-model backend:

- ``episodes``: per-episode agreement of world-model-judged success with simulator success
  (accuracy, Cohen's kappa, confusion counts, precision/recall) over episodes where neither
  side errored;
- ``judge_on_sim``: the same judge scored on the simulator's own rollouts against the oracle, so
  a judge error is not mistaken for a world-model error;
- ``policies``: each policy's success rate in both backends with bootstrap 95% intervals, and
  the same per task;
- ``ranking``: across policies, Pearson r, Spearman rho and MMRV (rank violations weighted by
  the simulator's success-rate gaps) of world-model vs simulator success rates;
- ``latent_divergence``: mean normalised latent MSE per world-model step between the world
  model's rollout and the encoded simulator rollout, with the number of episodes at each step;
- ``modes``: how many episodes acted closed-loop in the world model and how many replayed
  simulator actions open-loop (policies that read the simulator's state).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from harness.stats import agreement as ag

SIM = "sim"


def _rate_block(successes: list[bool], seed: int = 0) -> dict[str, Any]:
    if not successes:
        return {"n": 0, "success_rate": None, "ci95": [None, None]}
    lo, hi = ag.bootstrap_ci([float(s) for s in successes], seed=seed)
    return {"n": len(successes), "success_rate": float(np.mean(successes)), "ci95": [lo, hi]}


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


def compare_backends(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{"wm:<name>": {...}} for every world-model backend in ``records``; {} for a simulator-only run."""
    by_key = {(r["policy"], r["backend"], r["env_id"], r["init_state"]): r for r in records}
    out: dict[str, Any] = {}
    for backend in sorted({r["backend"] for r in records if r["backend"] != SIM}):
        pairs = []  # (sim record, wm record) where neither errored
        errors = 0
        for r in records:
            if r["backend"] != backend:
                continue
            s = by_key.get((r["policy"], SIM, r["env_id"], r["init_state"]))
            if s is None:
                continue
            if r["outcome"] == "error" or s["outcome"] == "error":
                errors += 1
                continue
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
                                  "tasks": tasks}

        curves = [w.get("latent_divergence") or [] for _, w in pairs]
        longest = max((len(c) for c in curves), default=0)
        divergence = {"mean": [], "episodes": []}
        for k in range(longest):
            vals = [c[k] for c in curves if len(c) > k]
            divergence["mean"].append(float(np.mean(vals)))
            divergence["episodes"].append(len(vals))

        modes: dict[str, int] = defaultdict(int)
        for _, w in pairs:
            modes[w.get("mode", "?")] += 1
        out[backend] = {
            "judge": next((w.get("judge") for _, w in pairs if w.get("judge")), None),
            "episodes": _episode_agreement(sim_ok, wm_ok),
            "errors": errors,
            "judge_on_sim": _episode_agreement([a for a, _ in judged], [b for _, b in judged]),
            "policies": per_policy,
            "ranking": _ranking(sim_rates, wm_rates),
            "latent_divergence": divergence,
            "modes": dict(modes),
        }
    return out
