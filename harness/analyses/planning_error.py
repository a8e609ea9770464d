"""CEM planning error: can a world model recover the recorded actions by planning?

The metric of "Reconstruction or Semantics?": take a real start (the ``history`` context
frames) and the real frame k world-model steps later as the goal, both encoded by the world
model's encoder; plan k steps with CEM toward the goal latent; compare the planned actions with
the actions that were actually recorded between the two frames. Reported per k: action MSE and
mean absolute error (overall and per action dimension), next to two baselines measured on the
same pairs: the zero action and uniformly random actions in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import numpy as np

from harness.errors import HarnessError


def planning_error(world_model, episodes, ks: tuple[int, ...] = (1, 4), pairs: int = 32, config=None,
                   seed: int = 0, progress=None) -> dict[str, Any]:
    """``episodes``: objects with ``frames`` (T+1, H, W, 3) uint8 and ``actions`` (T, A)."""
    import torch

    from policies.cem import CEM_PRESETS, cem_plan

    base = config or CEM_PRESETS["dino_wm"]
    f, H = world_model.frameskip, world_model.history
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"k": {}, "cem": asdict(base), "frameskip": f, "pairs_requested": pairs}
    for k in ks:
        if k < 1:
            raise HarnessError(f"--k {k} must be >= 1 (world-model steps between start and goal)")
        candidates = []  # (episode index, start WM step)
        for i, ep in enumerate(episodes):
            steps = len(ep.actions) // f
            candidates += [(i, t) for t in range(H - 1, steps - k + 1)]
        if not candidates:
            raise HarnessError(f"no episode is long enough for k={k} world-model steps ({k * f} control steps "
                               f"after {H} context frames): collect longer episodes")
        chosen = [candidates[j] for j in rng.choice(len(candidates), size=min(pairs, len(candidates)), replace=False)]
        errs, abs_errs, zero, rand = [], [], [], []
        cfg = replace(base, horizon=k, execute=k, goal_frames="last")
        for n, (i, t) in enumerate(chosen):
            ep = episodes[i]
            frames = ep.frames[::f]
            acts = ep.actions[:(len(ep.actions) // f) * f].reshape(-1, f * world_model.env_action_dim)
            with torch.no_grad():
                z = world_model.encode(frames[None, t - H + 1:t + k + 1])  # (1, H + k, N, D)
            plan, _ = cem_plan(world_model, z[:, :H], z[0, -1], replace(cfg, seed=seed + n))
            truth = acts[t:t + k]  # (k, f*A)
            errs.append((plan - truth) ** 2)
            abs_errs.append(np.abs(plan - truth))
            zero.append(truth ** 2)
            rand.append((rng.uniform(-1, 1, truth.shape) - truth) ** 2)
            if progress:
                progress(k, n + 1, len(chosen))
        A = world_model.env_action_dim
        sq = np.concatenate([e.reshape(-1, A) for e in errs])
        out["k"][str(k)] = {
            "pairs": len(chosen),
            "action_mse": float(sq.mean()),
            "action_mae": float(np.concatenate([e.reshape(-1, A) for e in abs_errs]).mean()),
            "action_mse_per_dim": sq.mean(axis=0).tolist(),
            "zero_action_mse": float(np.mean([z.mean() for z in zero])),
            "random_action_mse": float(np.mean([r.mean() for r in rand])),
        }
    return out
