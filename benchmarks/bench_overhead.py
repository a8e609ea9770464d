"""The harness's own overhead over a bare ``env.reset(); loop: policy.act + env.step`` loop.

1. ``harness.run.runner.run_episode`` vs the bare loop, with the same env object, policy and number
   of steps (no early stop on success, no trajectory kept: ``--video none``). Target: <= 10%.
2. The whole in-process evaluation (``plan_eval`` + ``run_eval``: validation, env and policy
   construction, one JSONL append + fsync per episode, the summary with versions and git hash)
   vs the bare loop over the same episodes including building the env and policy once.

Runs alternate (bare, harness, bare, harness, ...) and the median of each is kept, so load from
other users of the machine hits both alike (on a shared machine the best-of of either side is
decided by one lucky run; the median of many alternating runs is stable to a few percent).

    python benchmarks/bench_overhead.py [--steps 150] [--episodes 4] [--repeats 3] [--profile]

``--profile`` prints where the in-process evaluation's time goes (cProfile, by own time).
``benchmarks/run_all.py`` imports ``runner_vs_bare``, ``run_eval_vs_bare`` and
``profile_run_eval`` from here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

ENV_ID = "metaworld/reach-v3"
POLICY = "scripted"
CAMERAS = ("corner2",)
IMAGE_SIZE = 64  # the embedded eval's camera and size (configs/eval/embedded.yaml)


def bare_episode(env, policy, episode) -> int:
    """The loop a user would write without the harness; returns the steps taken."""
    obs, info = env.reset(seed=episode.seed, options={"init_state": episode.init_state})
    policy.reset(info.get("instruction") or episode.instruction, seed=episode.seed, init_state=episode.init_state)
    steps = 0
    while steps < episode.max_steps:
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        steps += 1
        if terminated or truncated:
            break
    return steps


def _episodes(env_id: str, n: int, steps: int, seed: int = 0):
    from harness.run.episodes import build_episodes

    return build_episodes([env_id], n, seed, {env_id: steps})


def runner_vs_bare(steps: int = 150, repeats: int = 3, env_id: str = ENV_ID, policy: str = POLICY,
                   cameras: tuple[str, ...] = CAMERAS, image_size: int = IMAGE_SIZE) -> dict[str, float]:
    """Seconds per step of ``run_episode`` and of the bare loop on one episode of ``steps`` steps
    (median of ``repeats`` alternating runs), and the overhead ``runner / bare - 1``."""
    from envs import make_env
    from harness.run.runner import run_episode
    from policies import EnvInfo, make_policy

    (episode,) = _episodes(env_id, 1, steps)
    env = make_env(env_id, cameras=cameras, image_size=image_size, max_episode_steps=steps)
    pol = make_policy(policy, EnvInfo.from_env_id(env_id, cameras, image_size))
    bare, runner = [], []
    try:
        bare_episode(env, pol, episode)  # warm-up: renderer, caches
        for _ in range(repeats):
            t = time.perf_counter()
            n_bare = bare_episode(env, pol, episode)
            bare.append((time.perf_counter() - t) / n_bare)
            t = time.perf_counter()
            result = run_episode(env, pol, episode, stop_on_success=False, keep_trajectory=False)
            runner.append((time.perf_counter() - t) / result.length)
            if result.length != n_bare:
                raise RuntimeError(f"run_episode took {result.length} steps, the bare loop {n_bare}")
    finally:
        env.close()
    b, r = float(np.median(bare)), float(np.median(runner))
    return {"bare_step_s": b, "runner_step_s": r, "overhead": r / b - 1, "steps": steps, "repeats": repeats}


def _eval_config(out: Path, episodes: int, steps: int, env_id: str, policy: str, cameras, image_size,
                 wm: str | None = None):
    from harness.run.config import EvalConfig

    return EvalConfig(env=env_id, policies=(policy,), episodes=episodes, max_steps=steps, cameras=cameras,
                      image_size=image_size, stop_on_success=False, video="none", workers=1, out=str(out), wm=wm)


def in_process_eval(out: Path, episodes: int, steps: int, env_id: str = ENV_ID, policy: str = POLICY,
                    cameras: tuple[str, ...] = CAMERAS, image_size: int = IMAGE_SIZE, wm: str | None = None):
    """``harness eval`` in this process (``plan_eval`` + ``run_eval``, one worker, no video);
    returns the summary."""
    from harness.run.evaluate import plan_eval, run_eval

    return run_eval(plan_eval(_eval_config(out, episodes, steps, env_id, policy, cameras, image_size, wm)))


def bare_eval(episodes: int, steps: int, env_id: str = ENV_ID, policy: str = POLICY,
              cameras: tuple[str, ...] = CAMERAS, image_size: int = IMAGE_SIZE) -> int:
    """The same episodes with a bare loop: build the env and the policy once, then loop; steps taken."""
    from envs import make_env
    from policies import EnvInfo, make_policy

    env = make_env(env_id, cameras=cameras, image_size=image_size, max_episode_steps=steps)
    try:
        pol = make_policy(policy, EnvInfo.from_env_id(env_id, cameras, image_size))
        return sum(bare_episode(env, pol, ep) for ep in _episodes(env_id, episodes, steps))
    finally:
        env.close()


def run_eval_vs_bare(episodes: int = 4, steps: int = 150, repeats: int = 2, env_id: str = ENV_ID,
                     policy: str = POLICY, cameras: tuple[str, ...] = CAMERAS,
                     image_size: int = IMAGE_SIZE) -> dict[str, float]:
    """Wall seconds of the whole in-process evaluation (a fresh run folder each time) and of the
    bare loop over the same episodes (env and policy built once in both), median of ``repeats``
    alternating runs, and the overhead ``eval / bare - 1``."""
    bare, full = [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_eval(1, 5, env_id, policy, cameras, image_size)  # warm-up: imports, renderer
        for i in range(repeats):
            t = time.perf_counter()
            n_bare = bare_eval(episodes, steps, env_id, policy, cameras, image_size)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            summary = in_process_eval(Path(tmp) / f"run{i}", episodes, steps, env_id, policy, cameras, image_size)
            full.append(time.perf_counter() - t)
            if summary["steps"] != n_bare:
                raise RuntimeError(f"run_eval took {summary['steps']} steps, the bare loop {n_bare}")
    b, f = float(np.median(bare)), float(np.median(full))
    return {"bare_s": b, "eval_s": f, "overhead": f / b - 1, "episodes": episodes, "steps": steps,
            "repeats": repeats}


def profile_run_eval(episodes: int = 4, steps: int = 150, top: int = 15, env_id: str = ENV_ID,
                     policy: str = POLICY, cameras: tuple[str, ...] = CAMERAS,
                     image_size: int = IMAGE_SIZE) -> str:
    """cProfile of one in-process evaluation: the ``top`` functions by own time and by cumulative
    time, as text."""
    import cProfile
    import io
    import pstats

    with tempfile.TemporaryDirectory() as tmp:
        prof = cProfile.Profile()
        prof.enable()
        in_process_eval(Path(tmp) / "run", episodes, steps, env_id, policy, cameras, image_size)
        prof.disable()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    r = runner_vs_bare(args.steps, args.repeats)
    print(f"{ENV_ID}, policy {POLICY}, camera {CAMERAS[0]} {IMAGE_SIZE} px, {args.steps} steps, median of {args.repeats}")
    print(f"run_episode: {r['runner_step_s'] * 1e3:.2f} ms/step vs bare loop {r['bare_step_s'] * 1e3:.2f} ms/step "
          f"-> overhead {100 * r['overhead']:+.1f}% (target <= 10%)")
    e = run_eval_vs_bare(args.episodes, args.steps, max(1, args.repeats - 1))
    print(f"in-process eval ({args.episodes} episodes): {e['eval_s']:.2f} s vs bare loop {e['bare_s']:.2f} s "
          f"-> overhead {100 * e['overhead']:+.1f}%")
    if args.profile:
        print(profile_run_eval(args.episodes, args.steps))


if __name__ == "__main__":
    main()
