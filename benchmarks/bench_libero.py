"""LIBERO env steps/s with one and two cameras at 128 and 256 px: the raw LIBERO env
(OffScreenRenderEnv, robosuite's renderer) against the harness's env in the same run.

The wrapper's cost is measured with fast rendering off (the same rendering work as the raw
env); fast rendering (no shadows, reflections, MSAA) is reported beside it.

    python benchmarks/bench_libero.py [--steps 60] [--task libero/libero_spatial/0] [--sizes 128 256]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

CAMERAS = {1: ("agentview",), 2: ("agentview", "eye_in_hand")}
RAW_NAMES = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}


def rate(step, steps: int, rounds: int = 2) -> float:
    """Best of `rounds` timings of `steps` steps (the machine is shared)."""
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = max(best, steps / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--task", default="libero/libero_spatial/0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = ap.parse_args()

    from pathlib import Path

    from envs import env_meta, make_env
    from envs.libero import import_libero

    L = import_libero()
    from libero.libero.envs import OffScreenRenderEnv

    meta = env_meta(args.task)
    bddl = Path(L.get_libero_path("bddl_files")) / meta["suite"] / f"{meta['task']}.bddl"
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps, 7)) * 0.3
    rows = []

    def stepper(env):
        i = [0]

        def step():
            a = actions[i[0] % len(actions)]
            i[0] += 1
            env.step(a)
        return step

    for n_cams in (0, 1, 2):
        for size in (args.sizes if n_cams else args.sizes[:1]):
            cams = CAMERAS.get(n_cams, ())
            raw = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_names=[RAW_NAMES[c] for c in cams] or ["agentview"],
                                     camera_heights=size, camera_widths=size, use_camera_obs=bool(cams),
                                     hard_reset=False, ignore_done=True)
            raw.reset()
            raw.set_init_state(_init_state(meta))
            slow = make_env(args.task, cameras=cams, image_size=size, fast_render=False)
            slow.reset(options={"init_state": 0})
            fast = make_env(args.task, cameras=cams, image_size=size, fast_render=True) if cams else None
            if fast is not None:
                fast.reset(options={"init_state": 0})
            # interleave so that load on the shared machine hits both alike
            r_raw = r_slow = r_fast = 0.0
            for _ in range(2):
                # robosuite renders in whatever GL context is current (it never switches back to
                # its own), so make its context current before timing it; the harness's renderer
                # switches to its own context on every frame.
                raw.env.sim._render_context_offscreen.gl_ctx.make_current()
                r_raw = max(r_raw, rate(stepper(raw), args.steps, 1))
                r_slow = max(r_slow, rate(stepper(slow), args.steps, 1))
                if fast is not None:
                    r_fast = max(r_fast, rate(stepper(fast), args.steps, 1))
            rows.append((n_cams, size if n_cams else "-", r_raw, r_slow, r_fast))
            print(f"cameras {n_cams} size {size if n_cams else '-':>4}: raw LIBERO {r_raw:6.1f} steps/s | harness env "
                  f"{r_slow:6.1f} ({100 * (r_raw / r_slow - 1):+.1f}% time vs raw)"
                  + (f" | harness fast render {r_fast:6.1f} ({r_fast / r_raw:.2f}x raw)" if fast is not None else ""),
                  flush=True)
            raw.close()
            slow.close()
            if fast is not None:
                fast.close()


def _init_state(meta):
    import contextlib
    import io

    from envs.libero import import_libero

    with contextlib.redirect_stdout(io.StringIO()):
        bench = import_libero().benchmark.get_benchmark(meta["suite"])()
    return bench.get_task_init_states(meta["task_id"])[0]


if __name__ == "__main__":
    main()
