"""LIBERO as a harness env, following OpenVLA's LIBERO evaluation protocol.

Observation ``{"pixels": {camera: uint8[H, W, 3]}, "state": float32[8]}`` with cameras
``agentview`` and ``eye_in_hand``; state = end-effector position (3), end-effector
orientation as an axis-angle vector (3), gripper finger positions (2). Action
``Box(-1, 1, (7,))`` = LIBERO's OSC_POSE delta (xyz, axis-angle rotation; scaled by the
controller to at most 5 cm and 0.5 rad per step) + gripper (-1 open, +1 close).
``info["success"]`` is LIBERO's own ``_check_success()`` (the BDDL goal predicates).

Images follow the community convention: ``pixels[cam]`` equals robosuite's camera image
rotated by 180 degrees (``img[::-1, ::-1]``), which is exactly what OpenVLA's LIBERO
evaluation feeds its model before resizing and what its fine-tuning datasets hold. (It is
the camera's view mirrored left to right; policies trained on LIBERO data expect it.)

``reset(options={"init_state": k})``: LIBERO's reset, then the task's k-th fixed init state
(the only exact branch point), then ``num_steps_wait`` no-op steps (gripper open) while
objects settle. Fixture poses (cabinets, stoves) are re-sampled by LIBERO's reset and are not
part of its init states; they are drawn from a generator seeded with k, so the same k always
gives the same scene. LIBERO's physics is deterministic: ``seed`` changes nothing in it.

Rendering uses its own ``mujoco.Renderer``. ``fast_render=True`` (the default) turns off
shadows, reflections and MSAA: ~2-3x faster frames on a CPU; the scene looks flatter (no cast
shadows, no reflection on the floor and table, aliased edges), geometry, colours, textures and
camera poses are unchanged. ``fast_render=False`` renders what robosuite's own renderer does.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import weakref
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs import libero_tasks as lt
from envs.libero_import import import_libero

STATE_DIM = 8
ACTION_DIM = 7

_LIVE: weakref.WeakSet = weakref.WeakSet()


def _close_live_envs() -> None:
    for env in list(_LIVE):
        env.close()


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> axis * angle, angle in [0, 2 pi) (robosuite's order)."""
    x, y, z, w = (float(v) for v in quat)
    w = min(1.0, max(-1.0, w))
    s = math.sqrt(1.0 - w * w)  # sin(angle / 2)
    if math.isclose(s, 0.0):
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * math.acos(w) / s)


def proprio_state(raw: dict[str, np.ndarray]) -> np.ndarray:
    """robosuite observation -> [eef xyz, eef axis-angle, gripper qpos (2)], as OpenVLA-OFT uses."""
    return np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]]).astype(np.float32)


class LiberoEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        task_id: int,
        cameras: tuple[str, ...] = lt.DEFAULT_CAMERAS,
        image_size: int = lt.DEFAULT_IMAGE_SIZE,
        max_episode_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        fast_render: bool = True,
        num_steps_wait: int = lt.NUM_STEPS_WAIT,
    ):
        if suite not in lt.TASKS:
            raise ValueError(f"unknown LIBERO suite {suite!r}; available: {', '.join(lt.SUITES)}")
        if not 0 <= int(task_id) < len(lt.TASKS[suite]):
            raise ValueError(f"{suite} has tasks 0..{len(lt.TASKS[suite]) - 1}, got {task_id}")
        for cam in cameras:
            if cam not in lt.MUJOCO_CAMERAS:
                raise ValueError(f"camera {cam!r} does not exist in LIBERO; available: {', '.join(lt.CAMERAS)}")
        libero = import_libero()
        import mujoco

        self.suite, self.task_id = suite, int(task_id)
        self.task, self.instruction = lt.task(suite, self.task_id)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps or lt.MAX_EPISODE_STEPS[suite])
        self.num_steps_wait = int(num_steps_wait)
        self.render_mode = render_mode
        self._fast_render = fast_render
        self._mujoco = mujoco

        with contextlib.redirect_stdout(io.StringIO()):  # LIBERO prints the task order
            bench = libero.benchmark.get_benchmark(suite)(task_order_index=0)
        task = bench.get_task(self.task_id)
        # task.language (from the task name) is the instruction OpenVLA and LeRobot evaluate with;
        # the BDDL file's own :language sometimes words it differently.
        if task.name != self.task:
            raise RuntimeError(f"the installed LIBERO orders {suite} differently: task {self.task_id} is "
                               f"{task.name!r}, the harness's table says {self.task!r}")
        self.init_states = np.asarray(bench.get_task_init_states(self.task_id))
        self.num_init_states = len(self.init_states)
        bddl = Path(libero.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        # The harness renders (below); robosuite neither renders nor ends episodes. A soft reset
        # keeps one MuJoCo model: set_init_state then fixes every simulated quantity.
        self._env = libero.ControlEnv(
            bddl_file_name=str(bddl), use_camera_obs=False, has_renderer=False, has_offscreen_renderer=False,
            hard_reset=False, ignore_done=True, horizon=10**9,
        )
        self._model = self._env.sim.model._model
        self._data = self._env.sim.data._data
        self._renderer = None
        self._camera_ids = []
        if self.cameras:
            self._renderer, self._scene_option = self._make_renderer()
            for cam in self.cameras:
                cid = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, lt.MUJOCO_CAMERAS[cam])
                if cid < 0:
                    raise ValueError(f"camera {cam!r} is not in the scene of {suite}/{self.task_id}")
                self._camera_ids.append(cid)

        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Dict(
                    {cam: gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8) for cam in self.cameras}
                ),
                "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._init_state: int | None = None
        self._steps = 0
        self._closed = False
        _LIVE.add(self)
        # EGL contexts freed after EGL's own exit hooks (mujoco's, robosuite's) raise noisy errors:
        # (re-)register so that this hook runs before every hook registered so far.
        atexit.unregister(_close_live_envs)
        atexit.register(_close_live_envs)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("init_state") is not None:
            k = int(options["init_state"])
        elif seed is not None:
            k = int(seed) % self.num_init_states
        else:
            k = int(self.np_random.integers(0, self.num_init_states))
        if not 0 <= k < self.num_init_states:
            raise ValueError(f"init_state {k} is out of range: {self.suite}/{self.task_id} has "
                             f"{self.num_init_states} fixed init states (0..{self.num_init_states - 1})")
        raw = self._reset_to(self.init_states[k], fixture_seed=k)
        noop = np.asarray(lt.NOOP_ACTION)
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self._env.step(noop)
        self._init_state, self._steps = k, 0
        return self._observation(raw), self._info(bool(self._env.check_success()))

    def reset_to_state(self, state: np.ndarray, fixture_seed: int = 0):
        """Start an episode from any flattened MuJoCo state (e.g. a demonstration's first
        ``states`` row), without the no-op wait. Returns (observation, info) like reset()."""
        raw = self._reset_to(np.asarray(state, dtype=np.float64), fixture_seed)
        self._init_state, self._steps = -1, 0
        return self._observation(raw), self._info(bool(self._env.check_success()))

    def get_sim_state(self) -> np.ndarray:
        """LIBERO's flattened MuJoCo state (time, qpos, qvel), the layout of its init states."""
        return np.asarray(self._env.get_sim_state(), dtype=np.float64)

    def _reset_to(self, state: np.ndarray, fixture_seed: int) -> dict[str, np.ndarray]:
        # LIBERO's reset draws fixture poses from numpy's global generator: seed it for the
        # duration of the reset and give the caller's generator state back afterwards.
        global_rng = np.random.get_state()
        try:
            np.random.seed(fixture_seed)
            self._env.reset()
        finally:
            np.random.set_state(global_rng)
        for robot in self._env.env.robots:  # a soft reset keeps the last gripper command; a hard one zeroes it
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        return self._env.set_init_state(state)

    def step(self, action):
        if self._init_state is None:
            raise RuntimeError("call reset() before step()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"LIBERO action must have shape (7,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        if self._steps >= self.max_episode_steps:
            raise RuntimeError(f"episode is over after {self.max_episode_steps} steps: call reset()")
        # LIBERO's step returns done = _check_success(), its goal predicates after the action.
        raw, reward, success, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        return self._observation(raw), float(reward), False, truncated, self._info(bool(success))

    def render(self):
        if not self.cameras:
            return None
        return self._render(self._camera_ids[0])

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    # ------------------------------------------------------------------ simulator access
    @property
    def sim(self):
        """robosuite's MjSim of the task (for tests and oracles: object poses, predicates)."""
        return self._env.sim

    @property
    def libero_env(self):
        """LIBERO's own env (``Libero_Tabletop_Manipulation`` etc.)."""
        return self._env.env

    def observe(self) -> dict[str, Any]:
        """The observation of the current simulator state (after editing it directly)."""
        self._env.env._update_observables(force=True)
        return self._observation(self._env.env._get_observations())

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    # ------------------------------------------------------------------ helpers
    def _make_renderer(self):
        mujoco, model = self._mujoco, self._model
        if self._fast_render:
            model.vis.quality.offsamples = 0  # no MSAA; must be set before the GL context exists
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.image_size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.image_size)
        try:
            renderer = mujoco.Renderer(model, self.image_size, self.image_size)
        except Exception as exc:
            raise RuntimeError(
                f"MuJoCo cannot render offscreen ({exc}); MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}. "
                "Install the EGL libraries (apt install libegl1 libegl-mesa0 libgl1-mesa-dri) and set "
                "MUJOCO_GL=egl (or osmesa) before mujoco is first imported, or pass cameras=() for state only"
            ) from None
        option = mujoco.MjvOption()
        option.geomgroup[0] = 0  # collision meshes hidden, visual meshes shown, as robosuite renders
        option.geomgroup[1] = 1
        return renderer, option

    def _render(self, cam_id: int) -> np.ndarray:
        r = self._renderer
        r.update_scene(self._data, camera=cam_id, scene_option=self._scene_option)
        if self._fast_render:
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            r.scene.flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # mujoco.Renderer returns rows top-down; robosuite's raw image is bottom-up, and the
        # community rotates that by 180 degrees: together, a left-right mirror of this image.
        return np.ascontiguousarray(r.render()[:, ::-1])

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        pixels = {cam: self._render(cid) for cid, cam in zip(self._camera_ids, self.cameras)}
        return {"pixels": pixels, "state": proprio_state(raw)}

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "instruction": self.instruction,
            "task": self.task,
            "suite": self.suite,
            "task_id": self.task_id,
            "init_state": self._init_state,
            "max_episode_steps": self.max_episode_steps,
            "num_steps_wait": self.num_steps_wait,
        }
