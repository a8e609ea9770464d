"""Summaries of episode records: per task and overall success with Wilson intervals.

An episode that raised (``outcome`` "error") counts as a failure in every success rate, as
OpenVLA's LIBERO evaluation counts it; ``errors`` says how many of the failures were errors.
Lengths and speeds are over the episodes that ran (``valid``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from harness.stats.intervals import wilson_interval


def _block(records: list[dict[str, Any]]) -> dict[str, Any]:
    valid = [r for r in records if r["outcome"] != "error"]
    n, k = len(valid), sum(1 for r in valid if r["success"])
    total = len(records)
    lo, hi = wilson_interval(k, total)
    succ_steps = [r["success_step"] for r in valid if r["success"]]
    steps = sum(r["length"] for r in valid)
    wall = sum(r.get("rollout_s", 0.0) for r in valid)
    return {
        "episodes": total,
        "valid": n,
        "errors": total - n,
        "successes": k,
        "success_rate": k / total if total else None,
        "ci95": [lo, hi],
        "mean_length": steps / n if n else None,
        "mean_success_step": sum(succ_steps) / len(succ_steps) if succ_steps else None,
        "steps": steps,
        "steps_per_s": steps / wall if wall > 0 else None,
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """{policy: {backend: {"overall": ..., "macro_success_rate": ..., "tasks": {env_id: ...}}}}"""
    grouped: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        grouped[r["policy"]][r["backend"]][r["env_id"]].append(r)
    out: dict[str, Any] = {}
    for policy, backends in grouped.items():
        out[policy] = {}
        for backend, tasks in backends.items():
            per_task = {env_id: _block(rs) for env_id, rs in sorted(tasks.items())}
            rates = [b["success_rate"] for b in per_task.values() if b["success_rate"] is not None]
            out[policy][backend] = {
                "overall": _block([r for rs in tasks.values() for r in rs]),
                "macro_success_rate": sum(rates) / len(rates) if rates else None,
                "tasks": per_task,
            }
    return out
