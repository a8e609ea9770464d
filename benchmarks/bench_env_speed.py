"""Meta-World env steps/s with one 128 px camera: the harness's env with --render faithful (the
same frames as Meta-World's own) and --render fast, vs Meta-World's own gymnasium rendering (the
baseline, measured in the same run), and state only.

    python benchmarks/bench_env_speed.py [--steps 200] [--task pick-place-v3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def rate(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--task", default="pick-place-v3")
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers Meta-World/MT1)

    from envs import make_env

    rng = np.random.default_rng(0)
    # Baseline: Meta-World's gymnasium env rendering one camera per step (shadows, MSAA, reflections).
    base = gym.make("Meta-World/MT1", env_name=args.task, seed=0, render_mode="rgb_array", camera_name="corner2",
                    width=args.size, height=args.size)
    base.reset()

    def base_step():
        base.step(rng.uniform(-1, 1, 4))
        base.render()

    r_base = rate(base_step, args.steps // 4)
    base.close()
    results = {"metaworld gym render (baseline)": r_base}
    for label, cams, render in ((f"harness, 1 camera {args.size} px, render faithful", ("corner2",), "faithful"),
                                (f"harness, 1 camera {args.size} px, render fast", ("corner2",), "fast"),
                                ("harness, state only", (), "fast")):
        env = make_env(f"metaworld/{args.task}", cameras=cams, image_size=args.size, render=render)
        env.reset(options={"init_state": 0})
        results[label] = rate(lambda e=env: e.step(rng.uniform(-1, 1, 4)), min(args.steps, env.max_episode_steps - 1))
        env.close()
    print("| setting | steps/s | ratio vs baseline |\n|---|---:|---:|")
    for label, r in results.items():
        print(f"| {label} | {r:.1f} | {r / r_base:.2f}x |")


if __name__ == "__main__":
    main()
