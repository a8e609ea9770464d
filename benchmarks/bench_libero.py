"""LIBERO env steps/s with zero, one and two cameras at 128 and 256 px: the raw LIBERO env
(OffScreenRenderEnv, robosuite's renderer) against the harness's env with render="faithful"
(the same renderer: the wrapper's cost) and render="fast" (shadows, reflections and MSAA off),
in the same run, and what one camera frame costs in each render mode.

    python benchmarks/bench_libero.py [--steps 60] [--task libero/libero_spatial/0] [--sizes 128 256]

With --openvla-episodes N it instead runs OpenVLA's run_libero_eval.py loop (no policy) for the
task's first N episodes and prints, per episode, how far the harness env's init state k is from
OpenVLA's episode k in each render and fixtures mode: the mean and largest absolute pixel
difference of the 256 px agentview frame, and the largest difference in fixture position; and
how far robosuite's own soft reset (hard_reset=False) after the same env.seed(0) puts the fixtures.

    python benchmarks/bench_libero.py --openvla-episodes 3 [--task libero/libero_spatial/0]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

CAMERAS = {1: ("agentview",), 2: ("agentview", "eye_in_hand")}
RAW_NAMES = {"agentview": "agentview", "eye_in_hand": "robot0_eye_in_hand"}


def rate(step, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--task", default="libero/libero_spatial/0")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--openvla-episodes", type=int, default=0)
    args = ap.parse_args()
    if args.openvla_episodes:
        compare_with_openvla(args.task, args.openvla_episodes)
        return

    from pathlib import Path

    from envs import env_meta, make_env
    from envs.libero import import_libero

    L = import_libero()
    from libero.libero.envs import OffScreenRenderEnv

    meta = env_meta(args.task)
    bddl = Path(L.get_libero_path("bddl_files")) / meta["suite"] / f"{meta['task']}.bddl"
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps, 7)) * 0.3

    def stepper(env, before=None):
        i = [0]

        def step():
            a = actions[i[0] % len(actions)]
            i[0] += 1
            if before is not None:
                before()
            env.step(a)
        return step

    # fixtures="openvla": the first reset to init state k in a process replays the k resets before it
    import envs.libero as el

    env = make_env(args.task, cameras=())
    last = env.unwrapped.num_init_states - 1
    el._OPENVLA_RESETS.clear()
    t = time.perf_counter()
    env.reset(options={"init_state": last})
    first = time.perf_counter() - t
    t = time.perf_counter()
    env.reset(options={"init_state": last})
    print(f"reset to init state {last} (state only): {first:.1f} s the first time in a process (replays {last} "
          f"resets), {time.perf_counter() - t:.2f} s after that", flush=True)
    env.close()

    state_only = 0.0
    frame_ms: dict[int, dict[str, float]] = {}
    for n_cams in (0, 1, 2):
        for size in (args.sizes if n_cams else args.sizes[:1]):
            cams = CAMERAS.get(n_cams, ())
            raw = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_names=[RAW_NAMES[c] for c in cams] or ["agentview"],
                                     camera_heights=size, camera_widths=size, use_camera_obs=bool(cams),
                                     hard_reset=False, ignore_done=True)

            def raw_current(raw=raw):
                # robosuite renders in whatever GL context is current (it never switches to its own)
                raw.env.sim._render_context_offscreen.gl_ctx.make_current()

            raw.reset()
            raw.set_init_state(_init_state(meta))
            ours = {mode: make_env(args.task, cameras=cams, image_size=size, render=mode)
                    for mode in (("faithful", "fast") if cams else ("faithful",))}
            for env in ours.values():
                env.reset(options={"init_state": 0})
            # Interleave so that load on a shared machine hits all alike; best of two. The raw env's
            # context is made current before each of its steps, as the harness env does for its own.
            r_raw, r_ours = 0.0, dict.fromkeys(ours, 0.0)
            for _ in range(2):
                r_raw = max(r_raw, rate(stepper(raw, raw_current), args.steps))
                for mode, env in ours.items():
                    r_ours[mode] = max(r_ours[mode], rate(stepper(env), args.steps))
            line = (f"cameras {n_cams} size {size if n_cams else '-':>4}: raw LIBERO {r_raw:6.1f} steps/s | harness "
                    f"faithful {r_ours['faithful']:6.1f} ({100 * (r_raw / r_ours['faithful'] - 1):+.1f}% time vs raw)")
            if n_cams:
                per = {m: 1000 * (1 / r - 1 / state_only) / n_cams for m, r in r_ours.items()}
                frame_ms.setdefault(size, {m: [] for m in per})
                for m, v in per.items():
                    frame_ms[size][m].append(v)
                line += (f" | harness fast {r_ours['fast']:6.1f} ({r_ours['fast'] / r_ours['faithful']:.2f}x faithful)"
                         f" | per frame: faithful {per['faithful']:.0f} ms, fast {per['fast']:.0f} ms")
            else:
                state_only = r_ours["faithful"]
            print(line, flush=True)
            # robosuite frees GL objects in whichever context is current. (Holding a reference to its
            # render context past close() would free them later, in another env's context.)
            raw_current()
            raw.close()
            for env in ours.values():
                env.close()
    for size, per in frame_ms.items():
        faithful, fast = float(np.mean(per["faithful"])), float(np.mean(per["fast"]))
        print(f"one camera frame at {size} px (mean over 1 and 2 cameras): faithful {faithful:.0f} ms, "
              f"fast {fast:.0f} ms ({faithful / fast:.1f}x)")


def compare_with_openvla(task: str, episodes: int, size: int = 256) -> None:
    import contextlib
    import io

    from envs import env_meta, make_env
    from envs.libero import import_libero

    L = import_libero()
    from libero.libero.envs import OffScreenRenderEnv

    meta = env_meta(task)
    with contextlib.redirect_stdout(io.StringIO()):
        task_suite = L.benchmark.get_benchmark_dict()[meta["suite"]]()
    libero_task = task_suite.get_task(meta["task_id"])
    initial_states = task_suite.get_task_init_states(meta["task_id"])
    np.random.seed(7)  # set_seed_everywhere(cfg.seed), before the env is built
    bddl_file = os.path.join(L.get_libero_path("bddl_files"), libero_task.problem_folder, libero_task.bddl_file)
    env = OffScreenRenderEnv(bddl_file_name=bddl_file, camera_heights=size, camera_widths=size)
    env.seed(0)
    theirs = []
    for k in range(episodes):
        env.reset()
        obs = env.set_init_state(initial_states[k])
        for _ in range(10):
            obs, *_ = env.step([0, 0, 0, 0, 0, 0, -1])
        model, fixtures = env.env.sim.model, env.env.fixtures_dict.values()
        theirs.append((obs["agentview_image"][::-1, ::-1].astype(int),
                       np.array([model.body_pos[model.body_name2id(f.root_body)] for f in fixtures])))
    env.env.sim._render_context_offscreen.gl_ctx.make_current()
    env.close()
    # robosuite's own soft reset (hard_reset=False) after the same seed, for comparison
    plain = L.ControlEnv(bddl_file_name=bddl_file, use_camera_obs=False, has_renderer=False,
                         has_offscreen_renderer=False, hard_reset=False)
    plain.seed(0)
    for k in range(episodes):
        plain.reset()
        model, fixtures = plain.env.sim.model, plain.env.fixtures_dict.values()
        pos = np.array([model.body_pos[model.body_name2id(f.root_body)] for f in fixtures])
        print(f"robosuite soft reset (hard_reset=False)  episode {k}: fixture positions differ by up to "
              f"{1000 * np.abs(pos - theirs[k][1]).max():.2f} mm", flush=True)
    plain.close()
    for render, fixtures in (("faithful", "openvla"), ("fast", "openvla"), ("faithful", "per_init_state")):
        ours = make_env(task, cameras=("agentview",), image_size=size, render=render, fixtures=fixtures)
        for k in reversed(range(episodes)):  # any order gives the same scenes
            obs, _ = ours.reset(options={"init_state": k})
            diff = np.abs(obs["pixels"]["agentview"].astype(int) - theirs[k][0])
            pos = np.array([p[:3] for p in ours.unwrapped.fixture_poses().values()])
            print(f"render={render:8s} fixtures={fixtures:14s} episode {k}: agentview mean |diff| {diff.mean():.3f} "
                  f"grey levels (largest {diff.max()}), fixture positions differ by up to "
                  f"{1000 * np.abs(pos - theirs[k][1]).max():.2f} mm", flush=True)
        ours.close()


def _init_state(meta):
    import contextlib
    import io

    from envs.libero import import_libero

    with contextlib.redirect_stdout(io.StringIO()):
        bench = import_libero().benchmark.get_benchmark(meta["suite"])()
    return bench.get_task_init_states(meta["task_id"])[0]


if __name__ == "__main__":
    main()
