"""LIBERO as a harness env, reproducing OpenVLA's LIBERO evaluation (run_libero_eval.py).

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

Rendering: robosuite renders the camera observations itself, through its own offscreen
context, at the instants robosuite samples observations (one physics substep before the end of
a control step; the state vector comes from the same instant). ``render="faithful"`` (the
default) keeps the scene's own visual settings: shadows, reflections and MSAA as LIBERO's XML
sets them, the frames OpenVLA's evaluation gets. ``render="fast"`` turns shadows, reflections
and MSAA off in that same context: the same geometry, camera poses, colours and textures,
flatter shading, cheaper frames.

``reset(options={"init_state": k})``: LIBERO's reset, then the task's k-th fixed init state
(the only exact branch point), then ``num_steps_wait`` no-op steps (gripper open) while
objects settle. LIBERO's reset also draws the poses of fixtures (cabinets, stoves) from
numpy's global generator; they are not part of the init states. ``fixtures="openvla"`` (the
default) gives init state k the fixture poses OpenVLA's evaluation draws for its episode k:
``env.seed(0)`` once, then k hard resets before it. The env soft-resets one MuJoCo model and
makes each reset draw exactly what OpenVLA's hard reset draws (see ``_libero_reset``); the
generator state before each episode's reset is computed once per task and process, so
episodes run in any order, in any worker, and resume to the same scenes.
``fixtures="per_init_state"`` seeds the draw with k instead. Either way the caller's numpy
generator state is restored afterwards. LIBERO's physics is deterministic: ``seed`` changes
nothing in it.
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

# BDDL file -> for OpenVLA's episodes 0, 1, ...: (numpy generator state, models loaded so far)
# just before that episode's reset. Shared by the envs of one process; grown on demand.
_OPENVLA_RESETS: dict[str, list[tuple[tuple, int]]] = {}


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
        render: str = "faithful",
        fixtures: str = "openvla",
        num_steps_wait: int = lt.NUM_STEPS_WAIT,
    ):
        if render not in lt.RENDER_MODES:
            raise ValueError(f"unknown LIBERO render mode {render!r}; choose one of: {', '.join(lt.RENDER_MODES)}")
        if fixtures not in lt.FIXTURE_MODES:
            raise ValueError(f"unknown LIBERO fixtures mode {fixtures!r}; choose one of: {', '.join(lt.FIXTURE_MODES)}")
        if suite not in lt.TASKS:
            raise ValueError(f"unknown LIBERO suite {suite!r}; available: {', '.join(lt.SUITES)}")
        if not 0 <= int(task_id) < len(lt.TASKS[suite]):
            raise ValueError(f"{suite} has tasks 0..{len(lt.TASKS[suite]) - 1}, got {task_id}")
        for cam in cameras:
            if cam not in lt.MUJOCO_CAMERAS:
                raise ValueError(f"camera {cam!r} does not exist in LIBERO; available: {', '.join(lt.CAMERAS)}")
        libero = import_libero()
        import mujoco
        from robosuite import macros
        from robosuite.utils.mjcf_utils import IMAGE_CONVENTION_MAPPING

        self.suite, self.task_id = suite, int(task_id)
        self.task, self.instruction = lt.task(suite, self.task_id)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps or lt.MAX_EPISODE_STEPS[suite])
        self.num_steps_wait = int(num_steps_wait)
        self.render_mode = render_mode
        self.rendering, self.fixtures = render, fixtures
        self._mujoco = mujoco
        self._row_order = IMAGE_CONVENTION_MAPPING[macros.IMAGE_CONVENTION]

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
        self._bddl = str(Path(libero.get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file)
        self._mj_cameras = [lt.MUJOCO_CAMERAS[c] for c in self.cameras]
        try:
            # robosuite renders the camera observations (its own offscreen context); the harness
            # ends episodes. A soft reset keeps one MuJoCo model (see _libero_reset).
            self._env = libero.ControlEnv(
                bddl_file_name=self._bddl, use_camera_obs=bool(self.cameras), has_renderer=False,
                has_offscreen_renderer=bool(self.cameras), camera_names=list(self._mj_cameras),
                camera_heights=self.image_size, camera_widths=self.image_size,
                hard_reset=False, ignore_done=True, horizon=10**9,
            )
        except Exception as exc:
            if not self.cameras:
                raise
            raise RuntimeError(
                f"LIBERO cannot render offscreen ({exc}); MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}. "
                "Install the EGL libraries (apt install libegl1 libegl-mesa0 libgl1-mesa-dri) and set "
                "MUJOCO_GL=egl (or osmesa) before mujoco is first imported, or pass cameras=() for state only"
            ) from exc
        self._model = self._env.sim.model._model
        self._data = self._env.sim.data._data
        for cam in self._mj_cameras:
            if mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                self._env.close()
                raise ValueError(f"camera {cam!r} is not in the scene of {suite}/{self.task_id}")
        lenv = self._env.env
        # What a freshly loaded model holds, which LIBERO's reset changes (see _libero_reset).
        self._fixture_bodies = np.array([self._env.sim.model.body_name2id(f.root_body)
                                         for f in lenv.fixtures_dict.values()], dtype=int)
        self._fixture_pos_loaded, self._fixture_quat_loaded = _loaded_poses(lenv, lenv.fixtures_dict.values())
        self._property_samplers = list(lenv.object_property_initializers)  # one model load's worth
        if self.cameras and render == "fast":
            self._shading_off()

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
        raw = self._reset_to(self.init_states[k], episode=k)
        noop = np.asarray(lt.NOOP_ACTION)
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self._env.step(noop)
        self._init_state, self._steps = k, 0
        return self._observation(raw), self._info(bool(self._env.check_success()))

    def reset_to_state(self, state: np.ndarray, episode: int = 0):
        """Start from any flattened MuJoCo state (e.g. a demonstration's first ``states`` row),
        without the no-op wait, with the fixture poses this env's ``fixtures`` mode gives
        episode ``episode`` (with "openvla", those OpenVLA's scripts draw for the reset of their
        episode or demo number ``episode``, counted from 0). Returns (observation, info)."""
        raw = self._reset_to(np.asarray(state, dtype=np.float64), episode=int(episode))
        self._init_state, self._steps = -1, 0
        return self._observation(raw), self._info(bool(self._env.check_success()))

    def get_sim_state(self) -> np.ndarray:
        """LIBERO's flattened MuJoCo state (time, qpos, qvel), the layout of its init states."""
        return np.asarray(self._env.get_sim_state(), dtype=np.float64)

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
        self._make_current()
        # LIBERO's step returns done = _check_success(), its goal predicates after the action.
        raw, reward, success, _ = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        return self._observation(raw), float(reward), False, truncated, self._info(bool(success))

    def render(self):
        """The first camera's image of the current simulator state."""
        if not self.cameras:
            return None
        self._make_current()
        img = self._env.sim.render(camera_name=self._mj_cameras[0], width=self.image_size, height=self.image_size)
        return self._upright(img)

    def close(self):
        if self._closed:
            return
        self._closed = True
        ctx = self._env.sim._render_context_offscreen if self.cameras else None
        if ctx is not None:
            # Free the GL objects in this env's own context: robosuite frees them in whichever
            # context is current, which may be another env's.
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx.gl_ctx.free()
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
        self._make_current()
        self._env.env._update_observables(force=True)
        return self._observation(self._env.env._get_observations())

    def check_success(self) -> bool:
        return bool(self._env.check_success())

    def fixture_poses(self) -> dict[str, np.ndarray]:
        """Each fixture's root body pose in the model now: name -> [x, y, z, qw, qx, qy, qz]."""
        model = self._env.sim.model
        return {name: np.concatenate([model.body_pos[i], model.body_quat[i]])
                for name, i in zip(self._env.env.fixtures_dict, self._fixture_bodies)}

    # ------------------------------------------------------------------ resets
    def _reset_to(self, state: np.ndarray, episode: int) -> dict[str, np.ndarray]:
        """LIBERO's reset with this env's fixture draw for ``episode``, then ``state``."""
        caller_rng = np.random.get_state()
        try:
            if self.fixtures == "openvla":
                rng_state, loads = self._openvla_reset_state(episode)
                np.random.set_state(rng_state)
                loads = self._libero_reset(loads, emulate_hard_reset=True)
                self._remember_openvla_reset(episode + 1, np.random.get_state(), loads)
            else:
                np.random.seed(episode)
                self._libero_reset(1, emulate_hard_reset=False)
        finally:
            np.random.set_state(caller_rng)
        for robot in self._env.env.robots:  # a soft reset keeps the last gripper command; a hard one zeroes it
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._make_current()
        return self._env.set_init_state(state)

    def _libero_reset(self, loads: int, emulate_hard_reset: bool) -> int:
        """One LIBERO reset of the one MuJoCo model; returns how many models a hard-resetting
        env would have loaded by its end.

        OpenVLA's env resets hard: every attempt (LIBERO retries when placement fails) rebuilds
        the model from XML. What its draws depend on, this reset recreates: (1) fixtures stand at
        their as-loaded pose when LIBERO samples objects placed relative to fixture sites;
        (2) each model load appends the task's open/close and on/off samplers to LIBERO's list
        once more without clearing it, so the reset after n loads draws n times from each. All
        else a hard reset rebuilds is overwritten by the reset itself or by set_init_state."""
        from robosuite.utils.errors import RandomizationError

        lenv, model = self._env.env, self._env.sim.model
        while True:
            if emulate_hard_reset:
                loads += 1
            model.body_pos[self._fixture_bodies] = self._fixture_pos_loaded
            model.body_quat[self._fixture_bodies] = self._fixture_quat_loaded
            lenv.object_property_initializers = self._property_samplers * loads
            self._make_current()
            try:
                lenv.reset()
                return loads
            except RandomizationError:
                continue

    def _openvla_reset_state(self, episode: int) -> tuple[tuple, int]:
        """Numpy's generator state and the models loaded before OpenVLA's reset of ``episode``,
        replaying the resets before it (without rendering) the first time they are needed."""
        if episode < 0:
            raise ValueError(f"episode must be >= 0, got {episode}")
        history = _OPENVLA_RESETS.setdefault(self._bddl, [])
        if not history:
            np.random.seed(lt.OPENVLA_ENV_SEED)
            history.append((np.random.get_state(), 1))  # built (one load), then env.seed(0)
        if len(history) <= episode:
            cams = [self._env.env._observables[f"{c}_image"] for c in self._mj_cameras]
            for obs in cams:
                obs.set_enabled(False)
            try:
                while len(history) <= episode:
                    np.random.set_state(history[-1][0])
                    loads = self._libero_reset(history[-1][1], emulate_hard_reset=True)
                    history.append((np.random.get_state(), loads))
            finally:
                for obs in cams:
                    obs.set_enabled(True)
        return history[episode]

    def _remember_openvla_reset(self, episode: int, rng_state: tuple, loads: int) -> None:
        history = _OPENVLA_RESETS[self._bddl]
        if len(history) == episode:
            history.append((rng_state, loads))

    # ------------------------------------------------------------------ rendering
    def _make_current(self) -> None:
        # robosuite renders in whichever GL context is current and never switches to its own.
        if self.cameras:
            self._env.sim._render_context_offscreen.gl_ctx.make_current()

    def _shading_off(self) -> None:
        """Shadows, reflections and MSAA off in robosuite's render context."""
        mujoco, ctx = self._mujoco, self._env.sim._render_context_offscreen
        ctx.gl_ctx.make_current()
        self._model.vis.quality.offsamples = 0  # MSAA is fixed when the MjrContext is made: make it again
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    @staticmethod
    def _upright(img: np.ndarray) -> np.ndarray:
        """robosuite's raw (bottom-up) render rotated by 180 degrees: OpenVLA's `img[::-1, ::-1]`."""
        return np.ascontiguousarray(img[::-1, ::-1])

    def _observation(self, raw: dict[str, np.ndarray]) -> dict[str, Any]:
        # robosuite's camera observations are its raw renders, flipped when its macros say "opencv"
        pixels = {cam: self._upright(raw[f"{mj}_image"][:: self._row_order])
                  for cam, mj in zip(self.cameras, self._mj_cameras)}
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
            "render": self.rendering,
            "fixtures": self.fixtures,
        }


def _loaded_poses(lenv, fixtures) -> tuple[np.ndarray, np.ndarray]:
    """Each fixture root body's pose as LIBERO's XML states it (what a freshly loaded model holds)."""
    pos, quat = [], []
    for fixture in fixtures:
        node = lenv.model.worldbody.find(f".//body[@name='{fixture.root_body}']")
        other = {"euler", "axisangle", "xyaxes", "zaxis"} & set(node.attrib)
        if other:
            raise RuntimeError(f"LIBERO's scene orients fixture {fixture.root_body!r} with {sorted(other)}; "
                               "the env reads only pos and quat")
        pos.append(np.array(node.get("pos", "0 0 0").split(), dtype=np.float64))
        q = np.array(node.get("quat", "1 0 0 0").split(), dtype=np.float64)
        quat.append(q / np.linalg.norm(q))
    return np.array(pos).reshape(-1, 3), np.array(quat).reshape(-1, 4)
