"""World-model episodes per second against the batch size of ``harness eval --wm-batch``.

The matched evaluation runs each chunk's simulator episodes one by one, then advances their
world-model episodes together: one batched ``predict`` per world-model step and one ``act_batch``
per batch-capable policy (BC). This measures that second half alone, on the embedded world model
``minivae_dit_tiny`` (frameskip 4, 64 px) with the embedded BC policy and the random policy
(one instance per episode), from real Meta-World reset frames. Ratios are against batch 1 in the
same run.

    .venv/bin/python benchmarks/bench_wm_batch.py [--episodes 32] [--steps 40] [--batch 1 --batch 8 ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

BC = ROOT / "checkpoints/policies/bc_metaworld/step_000250"


def reset_frames(n: int, size: int = 64) -> list:
    """The corner2 reset frame of reach-v3 init states 0..n-1 (one Meta-World env)."""
    from envs import make_env

    env = make_env("metaworld/reach-v3", cameras=("corner2",), image_size=size, render="fast")  # as the embedded models saw
    try:
        return [env.reset(seed=i, options={"init_state": i})[0]["pixels"]["corner2"] for i in range(n)]
    finally:
        env.close()


def tasks_for(frames: list, policies: list[str], steps: int) -> list:
    import numpy as np

    from harness.run.episodes import build_episodes
    from harness.run.matched import WorldModelTask

    eps = build_episodes(["metaworld/reach-v3"], len(frames), 0, {"metaworld/reach-v3": steps})
    return [WorldModelTask(ep, policies[i % len(policies)], [{"pixels": {"corner2": f}}], [np.zeros(4, np.float32)],
                           closed_loop=True) for i, (ep, f) in enumerate(zip(eps, frames))]


def episodes_per_s(world_model, judge, tasks: list, batch: int) -> float:
    from harness.run.matched import run_world_model_episodes
    from policies import EnvInfo, make_policy

    cache: dict = {}

    def policy_for(spec, env_id, slot):
        if (spec, env_id, slot) not in cache:
            cache[spec, env_id, slot] = make_policy(spec, EnvInfo.from_env_id(env_id, ("corner2",), 64))
        return cache[spec, env_id, slot]

    start = time.perf_counter()
    for i in range(0, len(tasks), batch):
        out = run_world_model_episodes(world_model, tasks[i:i + batch], policy_for, camera="corner2", judge=judge,
                                       stop_on_success=False)
        bad = [r for r in out if isinstance(r, BaseException)]
        if bad:
            raise bad[0]
    return len(tasks) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> list[tuple[int, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 1 4 16 32)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from harness.judges import make_judge
    from world_models import load_world_model

    torch.set_num_threads(args.threads)
    batches = args.batch or [1, 4, 16, 32]
    wm = load_world_model("minivae_dit_tiny")
    judge = make_judge(f"latent_classifier:path={ROOT / 'checkpoints/minivae_dit_tiny/judge'}", encoder=wm.encoder)
    frames = reset_frames(args.episodes)
    tasks = tasks_for(frames, [f"bc:path={BC}", "random"], args.steps)
    episodes_per_s(wm, judge, tasks[:2], 2)  # warm-up
    rows = [(b, episodes_per_s(wm, judge, tasks, b)) for b in batches]
    base = rows[0][1]
    print(f"world-model episodes ({args.episodes} x {args.steps} steps, minivae_dit_tiny, bc + random, "
          f"torch threads {args.threads})")
    print("| --wm-batch | episodes/s | env-steps/s | vs batch 1 |")
    print("|---:|---:|---:|---:|")
    for b, eps in rows:
        print(f"| {b} | {eps:.2f} | {eps * args.steps:.0f} | {eps / base:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
