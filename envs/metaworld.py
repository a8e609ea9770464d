"""Meta-World v3 as a harness env: upright images, 39-D proprio state, seeded init states.

Observation ``{"pixels": {camera: uint8[H, W, 3]}, "state": float32[39]}``; action
``Box(-1, 1, (4,))`` = end-effector xyz delta + gripper (Meta-World's own convention);
``info["success"]`` is Meta-World's oracle. ``reset(options={"init_state": i})`` takes the
i-th seeded task variation: ``metaworld.MT1(task, seed=i // 50).train_tasks[i % 50]``.

``render="faithful"`` (the default) renders what Meta-World's own ``env.render()`` gives
(``render_mode="rgb_array"``: gymnasium's offscreen viewer with the scene XML's settings, 4x
MSAA, 4096 px shadow maps, reflections), pixel for pixel, at the requested size.
``render="fast"`` turns MSAA, shadows and reflections off: several times cheaper per frame
on a CPU, the same geometry, colours and camera poses, flatter lighting (docs/envs.md has the
costs and differences). Either way a ``mujoco.Renderer`` of the harness's own draws the frames, so
several cameras share one GL context.
"""

from __future__ import annotations

import atexit
import os
import weakref
from typing import Any

import gymnasium as gym
import numpy as np

from envs import metaworld_tasks as mw
from envs.registry import RENDER_MODES

VARIATIONS_PER_SEED = 50  # MT1 makes 50 task variations per benchmark seed

# EGL contexts freed during interpreter teardown raise noisy errors: close live envs at
# exit, from a hook registered after mujoco's own EGL hook so that it runs before it.
_LIVE: weakref.WeakSet = weakref.WeakSet()
_EXIT_HOOK = []


def _close_live_envs() -> None:
    for env in list(_LIVE):
        env.close()


class MetaWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        cameras: tuple[str, ...] = mw.DEFAULT_CAMERAS,
        image_size: int = 128,
        max_episode_steps: int = mw.MAX_EPISODE_STEPS,
        render_mode: str | None = "rgb_array",
        render: str = "faithful",
    ):
        if render not in RENDER_MODES:
            raise ValueError(f"render {render!r} is not a render mode: use {' or '.join(RENDER_MODES)}")
        for cam in cameras:
            if cam not in mw.CAMERAS:
                raise ValueError(f"camera {cam!r} is not a Meta-World camera; cameras: {', '.join(mw.CAMERAS)}")
        os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first mujoco import
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        if task not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World v3 task {task!r}")
        self.task = task
        self.instruction = mw.INSTRUCTIONS[task]
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = render_mode
        self._mujoco = mujoco

        self._env = ALL_V3_ENVIRONMENTS[task]()
        self._env.max_path_length = self.max_episode_steps
        model = self._env.model
        self.rendering = render
        if render == "fast":
            model.vis.quality.offsamples = 0  # no MSAA; must be set before the GL context exists
        # As gymnasium's MujocoEnv does: grow the offscreen buffer to the image, never shrink it.
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
        self._renderer = self._make_renderer(mujoco, model) if self.cameras else None
        self._camera_ids = []
        for cam in self.cameras:
            cid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, mw.CAMERA_ALIASES.get(cam, cam))
            if cid < 0:
                raise ValueError(f"camera {cam!r} not in the Meta-World scene")
            self._camera_ids.append(cid)

        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict(
                    {
                        cam: gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
                        for cam in self.cameras
                    }
                ),
                "state": gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._variations: dict[int, list] = {}  # benchmark seed -> MT1 train tasks
        self._init_state: int | None = None
        self._steps = 0
        self._spec_state = mujoco.mjtState.mjSTATE_INTEGRATION
        self._closed = False
        _LIVE.add(self)
        if not _EXIT_HOOK:
            _EXIT_HOOK.append(atexit.register(_close_live_envs))

    # ------------------------------------------------------------------ init states
    def _variation(self, init_state: int):
        import metaworld

        block, index = divmod(init_state, VARIATIONS_PER_SEED)
        if block not in self._variations:
            self._variations[block] = metaworld.MT1(self.task, seed=block).train_tasks
        return self._variations[block][index]

    def _load_init_state(self, init_state: int) -> np.ndarray:
        # Clear solver warm-starts etc. so a reset does not depend on the previous episode.
        self._mujoco.mj_resetData(self._env.model, self._env.data)
        self._env.set_task(self._variation(init_state))
        raw, _ = self._env.reset()
        self._init_state = init_state
        self._steps = 0
        return raw

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("init_state") is not None:
            init_state = int(options["init_state"])
            if init_state < 0:
                raise ValueError(f"init_state must be >= 0, got {init_state}")
        elif seed is not None:
            init_state = int(seed) % (1 << 31)
        else:
            init_state = int(self.np_random.integers(0, VARIATIONS_PER_SEED))
        raw = self._load_init_state(init_state)
        return self._observation(raw), self._info(False)

    def step(self, action):
        if self._init_state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (4,):
            raise ValueError(f"Meta-World action must have shape (4,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        if self._steps >= self.max_episode_steps:
            raise RuntimeError(f"episode is over after {self.max_episode_steps} steps: call reset()")
        raw, reward, _, _, mw_info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        return self._observation(raw), float(reward), False, truncated, self._info(bool(mw_info["success"]))

    def render(self):
        if not self.cameras:
            return None
        return self._render(self._camera_ids[0], self.cameras[0])

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    # ------------------------------------------------------------------ snapshots
    def get_state(self) -> dict[str, Any]:
        """Exact snapshot: MuJoCo integration state plus Meta-World's episode bookkeeping."""
        m, d = self._env.model, self._env.data
        physics = np.empty(self._mujoco.mj_stateSize(m, self._spec_state))
        self._mujoco.mj_getState(m, d, physics, self._spec_state)
        last = self._env._last_stable_obs
        return {
            "init_state": self._init_state,
            "steps": self._steps,
            "physics": physics,
            "path_length": int(self._env.curr_path_length),
            "prev_obs": np.array(self._env._prev_obs, copy=True),
            "last_stable_obs": None if last is None else np.array(last, copy=True),
        }

    def set_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore a snapshot from get_state(); returns the observation at that state."""
        # Task-level attributes (goal, object start) come from the variation's reset.
        self._load_init_state(int(state["init_state"]))
        m, d = self._env.model, self._env.data
        physics = np.asarray(state["physics"], dtype=np.float64)
        self._mujoco.mj_setState(m, d, physics, self._spec_state)
        self._mujoco.mj_forward(m, d)  # positions for the observation...
        self._mujoco.mj_setState(m, d, physics, self._spec_state)  # ...without its warm-start update
        self._steps = int(state["steps"])
        self._env.curr_path_length = int(state["path_length"])
        self._env._prev_obs = np.array(state["prev_obs"], copy=True)
        last = state["last_stable_obs"]
        self._env._last_stable_obs = None if last is None else np.array(last, copy=True)
        raw = self._env._last_stable_obs if last is not None else self._env._get_obs()
        if last is None:
            self._env._prev_obs = np.array(state["prev_obs"], copy=True)  # _get_obs() advanced it
        return self._observation(np.asarray(raw))

    # ------------------------------------------------------------------ helpers
    def _make_renderer(self, mujoco, model):
        try:
            return mujoco.Renderer(model, self.image_size, self.image_size)
        except Exception as exc:
            raise RuntimeError(
                f"MuJoCo cannot render offscreen ({exc}); MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}. "
                "Install the EGL libraries (apt install libegl1 libegl-mesa0 libgl1-mesa-dri) and set "
                "MUJOCO_GL=egl (or osmesa) before mujoco is first imported, or pass cameras=() for state only"
            ) from None

    def _render(self, cam_id: int, cam: str) -> np.ndarray:
        r = self._renderer
        r.update_scene(self._env.data, camera=cam_id)
        if self.rendering == "fast":
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        img = r.render()
        if cam in mw.FLIPPED_CAMERAS:
            img = img[::-1, ::-1]
        return np.ascontiguousarray(img)

    def _observation(self, raw: np.ndarray) -> dict[str, Any]:
        pixels = {cam: self._render(cid, cam) for cid, cam in zip(self._camera_ids, self.cameras)}
        return {"pixels": pixels, "state": np.asarray(raw, dtype=np.float32)}

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "instruction": self.instruction,
            "task": self.task,
            "init_state": self._init_state,
            "render": self.rendering,
        }


def _main(argv: list[str] | None = None) -> None:
    """``python -m envs.metaworld``: per-frame render cost of each render mode (the same scene
    rendered again and again; wall time and this process's CPU time, which Mesa's llvmpipe
    spreads over its threads, median of repeats) and how far fast frames are from faithful ones."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--task", default="pick-place-v3")
    parser.add_argument("--camera", default="corner2", choices=mw.CAMERAS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224, 480])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"{args.task}, camera {args.camera}, init state 0; ms per frame, wall / CPU (median of {args.repeats} x "
          f"{args.frames} frames); fast vs faithful: mean |difference| in grey levels")
    for size in args.sizes:
        frames, costs = {}, {}
        for render in RENDER_MODES:
            env = MetaWorldEnv(args.task, cameras=(args.camera,), image_size=size, render=render)
            try:
                env.reset(options={"init_state": 0})
                frames[render] = env.render()
                runs = []
                for _ in range(args.repeats):
                    wall, cpu = time.perf_counter(), time.process_time()
                    for _ in range(args.frames):
                        env.render()
                    runs.append(((time.perf_counter() - wall) / args.frames, (time.process_time() - cpu) / args.frames))
                costs[render] = 1000 * np.median(np.array(runs), axis=0)
            finally:
                env.close()
        diff = np.abs(frames["fast"].astype(np.int16) - frames["faithful"]).mean()
        (fw, fc), (qw, qc) = costs["faithful"], costs["fast"]
        print(f"{size:4d} px  faithful {fw:6.1f} / {fc:6.1f} ms  fast {qw:6.1f} / {qc:6.1f} ms  "
              f"(CPU {fc / qc:.1f}x)  difference {diff:.1f}")


if __name__ == "__main__":
    _main()
