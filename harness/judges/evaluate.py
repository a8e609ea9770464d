"""`harness judge-eval`: score a judge against the simulator oracle on simulator rollouts.

Every episode of the datasets (written by ``harness collect``) is judged from its frames and
instruction; the oracle's verdict is the episode's own record (success = any step succeeded).
The result holds accuracy, Cohen's kappa, precision/recall/F1, the confusion counts, the
per-episode scores, and for a consensus judge its raters' pairwise kappa.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.run.store import atomic_write_text, check_output_file
from harness.stats.agreement import accuracy, cohen_kappa, confusion, precision_recall, shown

from . import make_judge, parse_judge_spec, verdict
from .latent_classifier import iter_rollouts


def default_out(judge: str) -> Path:
    return Path("runs") / "judge-eval" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", judge).strip("_")[:80] + ".json")


def run_judge_eval(judge: str, data: Sequence[str], out: str | None = None, wm: str | None = None,
                   wm_checkpoint: str | None = None, camera: str | None = None, episodes: int | None = None,
                   on_episode: Callable[[dict[str, Any], int], None] | None = None) -> dict[str, Any]:
    spec = parse_judge_spec(judge)  # bad specs fail before any model or dataset is opened
    if isinstance(data, str) or not data:
        raise HarnessError("pass at least one --data FILE (a dataset written by `harness collect`)")
    for d in data:
        if not Path(d).is_file():
            raise HarnessError(f"--data {d}: no such file; write one with `harness collect --env ... --out {d}`")
    if episodes is not None and episodes < 1:
        raise HarnessError(f"--episodes must be >= 1, got {episodes}")
    if wm_checkpoint is not None and wm is None:
        raise HarnessError("--wm-checkpoint needs --wm NAME")
    out_path = Path(out) if out else default_out(spec.text)
    check_output_file(out_path)  # before the judging, not after

    world_model = None
    context: dict[str, Any] = {}
    if wm is not None:
        from world_models import load_world_model

        world_model = load_world_model(wm, wm_checkpoint)
        context["encoder"] = world_model.encoder
    j = make_judge(spec, **context)

    records = []
    for i, (source, frames, success, attrs, _) in enumerate(iter_rollouts(data, camera, episodes), 1):
        latents = None
        if j.needs_latents and world_model is not None:
            latents = world_model.encode(frames[None])[0].numpy()
        instruction = str(attrs.get("instruction", ""))
        score, says = verdict(j, frames, instruction, latents, success=success)
        rec = {"episode": source, "env_id": attrs.get("env_id"), "init_state": attrs.get("init_state"),
               "policy": attrs.get("policy"), "sim_success": bool(success.any()), "score": score, "verdict": says}
        records.append(rec)
        if on_episode is not None:
            on_episode(rec, i)
    if not records:
        raise HarnessError(f"no episodes in {', '.join(data)}")
    sim = [r["sim_success"] for r in records]
    judged = [r["verdict"] for r in records]
    result: dict[str, Any] = {
        "judge": spec.text,
        "data": [str(d) for d in data],
        "world_model": wm,
        "threshold": j.threshold,
        "episodes": len(records),
        "sim_successes": int(np.sum(sim)),
        "judged_successes": int(np.sum(judged)),
        "accuracy": accuracy(sim, judged),
        "kappa": cohen_kappa(sim, judged),
        **precision_recall(sim, judged),
        "confusion": confusion(sim, judged),
        "records": records,
    }
    if hasattr(j, "rater_agreement"):
        result["rater_agreement"] = j.rater_agreement()
    atomic_write_text(out_path, json.dumps(result, indent=2))
    result["out"] = str(out_path)
    return result


def format_table(result: dict[str, Any]) -> str:
    c = result["confusion"]
    lines = [
        f"judge {result['judge']} vs the simulator oracle on {result['episodes']} episodes "
        f"({result['sim_successes']} successful)",
        f"{'accuracy':>10} {'kappa':>7} {'precision':>9} {'recall':>7} {'f1':>6}",
        f"{result['accuracy']:>10.3f} {shown(result['kappa'], '.3f'):>7} {result['precision']:>9.3f} {result['recall']:>7.3f} "
        f"{result['f1']:>6.3f}",
        "",
        f"{'':>16} {'judge: success':>15} {'judge: failure':>15}",
        f"{'sim: success':>16} {c['tp']:>15} {c['fn']:>15}",
        f"{'sim: failure':>16} {c['fp']:>15} {c['tn']:>15}",
    ]
    ra = result.get("rater_agreement")
    if ra and ra["pairs"]:
        lines.append("")
        lines.append(f"rater agreement (mean Cohen's kappa {shown(ra['mean_kappa'], '.3f')}):")
        lines += [f"  {p['a']}  vs  {p['b']}: kappa {shown(p['kappa'], '.3f')}, agreement {p['agreement']:.3f}"
                  for p in ra["pairs"]]
    return "\n".join(lines)
