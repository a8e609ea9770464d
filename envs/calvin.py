"""CALVIN as a harness env: single tasks and the long-horizon chain evaluation.

An adapter over the real ``calvin_env`` (mees/calvin_env, not on PyPI: clone it and
``pip install -e`` it, or point ``CALVIN_ENV_ROOT`` at a checkout). The env is built from
calvin_env's own ``conf/`` files -- robot ``panda_longer_finger``, scene ``calvin_scene_<X>``,
cameras ``static`` and ``gripper`` -- without the CALVIN dataset.

Rendering: ``render="faithful"`` (the default) uses pybullet's EGL renderer, as calvin_env's
config does (``use_egl: true``) and so CALVIN's dataset; where EGL cannot start (tried once per
process, in a child process) it falls back to pybullet's CPU TinyRenderer and says so in a
logged warning and in the reset info (``info["render_warning"]``). ``render="fast"`` uses the
TinyRenderer, cheaper on a CPU without a GPU. ``image_size=None`` (the default) renders each
camera at CALVIN's own size (static 200 px, gripper 84 px); an int renders every camera at it.

- observation ``{"pixels": {"static"|"gripper": uint8[S, S, 3]}, "state": float32[15]}``
  (``robot_obs``: tcp xyz, tcp euler xyz, gripper width, 7 arm joints, gripper action);
  ``info["scene_obs"]`` holds the 24-D scene state.
- action ``Box(-1, 1, (7,))``: tcp xyz and euler deltas (calvin_env scales one unit to
  0.02 m and 0.05 rad) and the gripper, snapped to +1 (open) when >= 0, else -1 (close).
- ``info["success"]``: CALVIN's own oracle (``Tasks`` over ``new_playtable_tasks.yaml``),
  comparing the scene at the start of the current subtask with the scene now.

``calvin/chains``: episode ``init_state=i`` is CALVIN's evaluation chain i (0..999). Each
subtask has 360 steps; when one is solved the next begins from the scene as it is (no reset)
and ``info["instruction"]`` becomes the next subtask's; the chain stops (``truncated``) at the
first subtask that runs out of steps; ``info["success"]`` only when all 5 are done.
``calvin/<task>``: the same machinery with the task's start states (see
``calvin_sequences.task_episodes``). Every step's info carries
``info["episode_metrics"] = {"completed_subtasks": n, "subtasks": [...]}``.

One simulator per process: pybullet bodies of a second env land in the first one's client.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import weakref
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from envs import calvin_sequences as cs
from envs import calvin_tasks as ct
from envs.registry import RENDER_MODES
from harness.errors import HarnessError

log = logging.getLogger(__name__)

STATE_DIM = 15  # robot_obs with euler angles
SCENE_DIM = 24
MAX_REL_POS = 0.02  # metres per unit of action (calvin_env's Robot.max_rel_pos)
MAX_REL_ORN = 0.05  # radians per unit of action (Robot.max_rel_orn)

_LIVE: weakref.WeakSet = weakref.WeakSet()  # simulators open in this process (at most one)


# ---------------------------------------------------------------------------- locating calvin_env
def calvin_env_root() -> Path:
    """The calvin_env checkout (the folder holding ``conf/`` and ``data/``), or a HarnessError
    that says how to install it."""
    ct.add_calvin_env_root_to_path()
    try:
        spec = importlib.util.find_spec("calvin_env")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise HarnessError(f"CALVIN is not installed (no module 'calvin_env'; it is not on PyPI): {ct.INSTALL_HINT}")
    if spec.origin is None:  # a namespace package: a folder named calvin_env in the working dir
        where = ", ".join(spec.submodule_search_locations or [])
        raise HarnessError(f"'calvin_env' resolves to the folder {where}, not the installed package: run from "
                           f"another directory, or {ct.INSTALL_HINT}")
    root = Path(spec.origin).resolve().parents[1]
    if not (root / "conf" / "scene").is_dir() or not (root / "data").is_dir():
        raise HarnessError(f"calvin_env at {root} has no conf/ and data/ folders: install it from a git "
                           f"checkout in editable mode ({ct.INSTALL_HINT})")
    return root


@lru_cache(maxsize=1)
def calvin_env_commit() -> str | None:
    """The git commit of the calvin_env checkout (None when it is not a git checkout)."""
    try:
        root = calvin_env_root()
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    except (HarnessError, OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------------------- renderers
# What calvin_env does with use_egl=True, on a 16 px scene; prints EGL OK when a frame came back.
_EGL_PROBE = """
import pkgutil
import pybullet as p
cid = p.connect(p.DIRECT, options="--width=16 --height=16")
egl = pkgutil.get_loader("eglRenderer")
plugin = p.loadPlugin(egl.get_filename(), "_eglRendererPlugin") if egl else p.loadPlugin("eglRendererPlugin")
if plugin < 0:
    raise SystemExit("pybullet's eglRendererPlugin does not load")
view = p.computeViewMatrix([1, 1, 1], [0, 0, 0], [0, 0, 1])
width, height, rgb = p.getCameraImage(16, 16, view, p.computeProjectionMatrixFOV(60, 1, 0.01, 10))[:3]
if (width, height) != (16, 16):
    raise SystemExit(f"EGL rendered a {width}x{height} frame instead of 16x16")
print("EGL OK")
"""


@lru_cache(maxsize=1)
def egl_problem() -> str | None:
    """Why pybullet's EGL renderer cannot start here, or None when it can. Tried in a child
    process: a misconfigured EGL may crash the process that loads it, and calvin_env calls
    ``sys.exit()`` when the plugin does not load."""
    try:
        out = subprocess.run([sys.executable, "-c", _EGL_PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"the EGL check did not run: {exc}"
    if out.returncode == 0 and "EGL OK" in out.stdout:
        return None
    said = [line.strip() for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    return f"exit code {out.returncode}" + (f": {said[-1]}" if said else "")


@contextmanager
def _c_stdout_to_stderr():
    """Send what C code prints to stdout (pybullet its arguments, its EGL plugin the GL driver)
    to stderr, so that a command's own stdout stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def choose_renderer(render: str, rendering: bool) -> tuple[str, str | None]:
    """(pybullet renderer, warning or None) for a render mode: "egl", "tiny" (TinyRenderer) or
    "none" when no camera renders."""
    if render not in RENDER_MODES:
        raise ValueError(f"render {render!r} is not a render mode: use {' or '.join(RENDER_MODES)}")
    if not rendering:
        return "none", None
    if render == "fast":
        return "tiny", None
    problem = egl_problem()
    if problem is None:
        return "egl", None
    warning = (f"render 'faithful' wants pybullet's EGL renderer, which cannot start here ({problem}); "
               "rendering with the CPU TinyRenderer instead, so frames differ from CALVIN's")
    log.warning(warning)
    return "tiny", warning


# ---------------------------------------------------------------------------- the simulator
class CalvinBackend(Protocol):
    """What the adapter needs from the simulator. ``reset``/``step`` return a frame:
    ``{"images": {camera: uint8[H, W, 3]}, "robot_obs": [15], "scene_obs": [24], "info": get_info()}``."""

    commit: str | None

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, Any]: ...

    def step(self, action: np.ndarray) -> dict[str, Any]: ...

    def solved(self, task: str, start_info: dict[str, Any], info: dict[str, Any]) -> bool: ...

    def close(self) -> None: ...


class CalvinSimBackend:
    """calvin_env's ``PlayTableSimEnv`` and task oracle, built from its ``conf/`` files."""

    def __init__(self, cameras: tuple[str, ...], image_size: int | None = None, scene: str = ct.DEFAULT_SCENE,
                 render: str = "faithful"):
        self.renderer, self.render_warning = choose_renderer(render, bool(cameras))
        root = calvin_env_root()
        try:
            import hydra
            from omegaconf import OmegaConf
        except ImportError as exc:
            raise HarnessError(f"calvin_env's dependencies are missing ({exc}): pip install -e \".[calvin]\"") from None
        conf = root / "conf"
        robot = OmegaConf.merge(OmegaConf.load(conf / "robot" / "panda.yaml"),
                                OmegaConf.load(conf / "robot" / "panda_longer_finger.yaml"))
        robot.pop("defaults", None)  # the hydra defaults list that names panda.yaml
        camera_cfgs = {}
        for cam in cameras:
            cfg = OmegaConf.load(conf / "cameras" / "cameras" / f"{cam}.yaml")
            if image_size is not None:  # else the camera's own size
                cfg.width = cfg.height = int(image_size)
            camera_cfgs[cam] = cfg
        env_cfg = OmegaConf.load(conf / "env" / "play_table_env.yaml")
        env_cfg.use_egl = self.renderer == "egl"
        cfg = OmegaConf.create({
            "data_path": str(root / "data"),
            "use_vr": False,
            "scene": OmegaConf.load(conf / "scene" / f"calvin_scene_{scene}.yaml"),
            "robot": robot,
            "cameras": camera_cfgs,
            "env": env_cfg,
        })
        try:
            with _c_stdout_to_stderr():
                self._env = hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True)
        except ImportError as exc:
            raise HarnessError(f"calvin_env cannot be imported ({exc}): install its requirements "
                               f"(pip install -e \".[calvin]\" and pip install -e <calvin_env checkout>)") from None
        except SystemExit:  # calvin_env's answer to an EGL plugin that does not load
            raise HarnessError("pybullet's EGL renderer did not load in calvin_env: use render 'fast' "
                               "(--render fast) for the CPU TinyRenderer") from None
        self._oracle = hydra.utils.instantiate(OmegaConf.load(conf / "tasks" / "new_playtable_tasks.yaml"))
        self.cameras = tuple(cameras)
        self.image_sizes = {cam: int(c.width) for cam, c in camera_cfgs.items()}
        self.commit = calvin_env_commit()
        self.root = root

    def _frame(self, obs: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
        rgb = obs["rgb_obs"]
        return {
            "images": {cam: np.ascontiguousarray(rgb[f"rgb_{cam}"], dtype=np.uint8) for cam in self.cameras},
            "robot_obs": np.asarray(obs["robot_obs"], dtype=np.float64),
            "scene_obs": np.asarray(obs["scene_obs"], dtype=np.float64),
            "info": info,
        }

    def reset(self, robot_obs: np.ndarray, scene_obs: np.ndarray) -> dict[str, Any]:
        with _c_stdout_to_stderr():  # EGL's first frames print the GL vendor
            obs = self._env.reset(robot_obs=np.asarray(robot_obs, dtype=np.float64),
                                  scene_obs=np.asarray(scene_obs, dtype=np.float64))
        return self._frame(obs, self._env.get_info())

    def step(self, action: np.ndarray) -> dict[str, Any]:
        obs, _, _, info = self._env.step(np.asarray(action, dtype=np.float64))
        return self._frame(obs, info)

    def solved(self, task: str, start_info: dict[str, Any], info: dict[str, Any]) -> bool:
        return task in self._oracle.get_task_info_for_set(start_info, info, {task})

    @property
    def robot(self):
        return self._env.robot

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is None:
            return
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), _c_stdout_to_stderr():
            env.close()  # calvin_env prints on disconnect, pybullet's EGL plugin too
        env.close = lambda: None  # its __del__ would disconnect (and print) again


# ---------------------------------------------------------------------------- the harness env
class CalvinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str = "chains",
        cameras: tuple[str, ...] = ct.DEFAULT_CAMERAS,
        image_size: int | None = None,
        max_episode_steps: int | None = None,
        scene: str | None = None,
        steps_per_subtask: int = ct.STEPS_PER_SUBTASK,
        render_mode: str | None = "rgb_array",
        render: str = "faithful",
        backend: CalvinBackend | None = None,
    ):
        # The CLI cannot pass env kwargs: the scene also comes from CALVIN_SCENE.
        scene = scene or os.environ.get("CALVIN_SCENE", ct.DEFAULT_SCENE)
        if render not in RENDER_MODES:
            raise ValueError(f"render {render!r} is not a render mode: use {' or '.join(RENDER_MODES)}")
        if task != "chains" and task not in ct.INSTRUCTIONS:
            raise ValueError(f"unknown CALVIN task {task!r}; tasks: {', '.join(ct.TASKS)} or 'chains'")
        if scene not in ct.SCENES:
            raise ValueError(f"unknown CALVIN scene {scene!r}; scenes: {', '.join(ct.SCENES)}")
        for cam in cameras:
            if cam not in ct.CAMERAS:
                raise ValueError(f"camera {cam!r} is not a CALVIN camera; cameras: {', '.join(ct.CAMERAS)}")
        self.task = task
        self.cameras = tuple(cameras)
        self.image_size = None if image_size is None else int(image_size)
        self.image_sizes = ct.camera_sizes(self.cameras, self.image_size)  # camera -> square side
        self.rendering = render
        self.steps_per_subtask = int(steps_per_subtask)
        self._episodes: list[tuple[dict[str, Any], tuple[str, ...]]] = (
            list(cs.eval_sequences()) if task == "chains"
            else [(cs.start_states()[i], chain) for i, chain in cs.task_episodes(task)]
        )
        self.subtasks_per_episode = len(self._episodes[0][1])
        full = self.subtasks_per_episode * self.steps_per_subtask
        self.max_episode_steps = full if max_episode_steps is None else int(max_episode_steps)
        self.render_mode = render_mode
        self.scene = scene
        self.observation_space = gym.spaces.Dict({
            "pixels": gym.spaces.Dict({
                cam: gym.spaces.Box(0, 255, (size, size, 3), np.uint8) for cam, size in self.image_sizes.items()
            }),
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

        if backend is None:
            if any(not e.closed for e in _LIVE):
                raise RuntimeError("a CALVIN simulator is already open in this process: close it first "
                                   "(pybullet bodies of a second one land in the first one's client)")
            backend = CalvinSimBackend(self.cameras, self.image_size, scene=scene, render=render)
        self._backend = backend
        self.calvin_env_commit = getattr(backend, "commit", None)
        self.renderer = getattr(backend, "renderer", None)  # "egl", "tiny" or "none"
        self.render_warning = getattr(backend, "render_warning", None)
        self.closed = False
        _LIVE.add(self)

        self._init_state: int | None = None
        self._subtasks: tuple[str, ...] = ()
        self._done_subtasks = 0
        self._subtask_steps = 0
        self._steps = 0
        self._start_info: dict[str, Any] | None = None
        self._frame: dict[str, Any] | None = None
        self._over = True

    # ------------------------------------------------------------------ episodes
    @property
    def num_init_states(self) -> int:
        return len(self._episodes)

    def episode_plan(self, init_state: int) -> tuple[dict[str, Any], tuple[str, ...]]:
        """(symbolic start state, subtasks) of an init state."""
        if not 0 <= init_state < len(self._episodes):
            what = "evaluation chains" if self.task == "chains" else f"start states for {self.task}"
            raise ValueError(f"init_state {init_state} is out of range: CALVIN has {len(self._episodes)} {what} "
                             f"(0..{len(self._episodes) - 1})")
        return self._episodes[init_state]

    @property
    def subtask(self) -> str | None:
        return self._subtasks[self._done_subtasks] if self._done_subtasks < len(self._subtasks) else None

    @property
    def instruction(self) -> str:
        sub = self.subtask or (self._subtasks[-1] if self._subtasks else None)
        return ct.INSTRUCTIONS[sub] if sub else ""

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if options.get("init_state") is not None:
            init_state = int(options["init_state"])
        elif seed is not None:
            init_state = int(seed) % len(self._episodes)
        else:
            init_state = int(self.np_random.integers(0, len(self._episodes)))
        state, subtasks = self.episode_plan(init_state)
        robot_obs, scene_obs = cs.concrete_start_state(state)
        self._frame = self._backend.reset(robot_obs, scene_obs)
        self._start_info = self._frame["info"]
        self._init_state, self._subtasks = init_state, tuple(subtasks)
        self._done_subtasks = self._subtask_steps = self._steps = 0
        self._over = False
        info = self._info(False)
        info["calvin_env_commit"] = self.calvin_env_commit
        info["renderer"] = self.renderer
        if self.render_warning:
            info["render_warning"] = self.render_warning
        info["start_state"] = dict(state)
        return self._observation(), info

    def step(self, action):
        if self._over:
            raise RuntimeError("the episode is over (or never began): call reset()")
        action = self.to_calvin_action(action)
        self._frame = self._backend.step(action)
        self._steps += 1
        self._subtask_steps += 1
        success = terminated = truncated = False
        if self._backend.solved(self.subtask, self._start_info, self._frame["info"]):
            self._done_subtasks += 1
            self._subtask_steps = 0
            self._start_info = self._frame["info"]  # the next subtask starts from the scene as it is
            success = terminated = self._done_subtasks == len(self._subtasks)
        if not terminated and (self._subtask_steps >= self.steps_per_subtask or self._steps >= self.max_episode_steps):
            truncated = True  # the chain stops at its first failure
        self._over = terminated or truncated
        return self._observation(), 0.0, terminated, truncated, self._info(success)

    @staticmethod
    def to_calvin_action(action) -> np.ndarray:
        """Clip to [-1, 1] and snap the gripper to +-1, as calvin_env requires."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"CALVIN action must have shape (7,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        action[6] = 1.0 if action[6] >= 0 else -1.0
        return action

    def render(self):
        if not self.cameras or self._frame is None:
            return None
        return self._frame["images"][self.cameras[0]]

    def close(self):
        if self.closed:
            return
        self.closed = True
        self._backend.close()

    # ------------------------------------------------------------------ helpers
    def _observation(self) -> dict[str, Any]:
        frame = self._frame
        return {
            "pixels": {cam: frame["images"][cam] for cam in self.cameras},
            "state": np.asarray(frame["robot_obs"], dtype=np.float32),
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "success": success,
            "instruction": self.instruction,
            "task": self.task,
            "subtask": self.subtask,
            "init_state": self._init_state,
            "render": self.rendering,
            "scene_obs": np.asarray(self._frame["scene_obs"], dtype=np.float32),
            "episode_metrics": {"completed_subtasks": self._done_subtasks, "subtasks": list(self._subtasks)},
        }


def _main(argv: list[str] | None = None) -> None:
    """``python -m envs.calvin``: env steps/s of each render mode (random actions from CALVIN's
    first start state; wall time and this process's CPU time) and how far fast frames are from
    faithful ones."""
    import argparse
    import time

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--cameras", default="static,gripper", help="comma-separated, or none")
    parser.add_argument("--image-size", type=int, default=None, help="every camera at this size (default: CALVIN's)")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    cameras = () if args.cameras == "none" else tuple(args.cameras.split(","))
    robot, scene = cs.concrete_start_state(cs.start_states()[0])
    actions = np.random.default_rng(0).uniform(-1, 1, (args.steps, 7))
    frames = {}
    sizes = ", ".join(f"{c} {s} px" for c, s in ct.camera_sizes(cameras, args.image_size).items()) or "no camera"
    print(f"CALVIN scene {ct.DEFAULT_SCENE}, {sizes}, {args.steps} random steps from start state 0")
    for render in RENDER_MODES:
        start = time.perf_counter()
        backend = CalvinSimBackend(cameras, args.image_size, render=render)
        try:
            built = time.perf_counter() - start
            frames[render] = backend.reset(robot, scene)["images"]
            start, cpu = time.perf_counter(), time.process_time()
            for action in actions:
                backend.step(CalvinEnv.to_calvin_action(action))
            per_step = (time.perf_counter() - start) / args.steps
            cpu_per_step = (time.process_time() - cpu) / args.steps
            print(f"{render:8s} ({backend.renderer}): {1 / per_step:6.1f} steps/s, {1000 * per_step:6.1f} ms/step "
                  f"(CPU {1000 * cpu_per_step:6.1f} ms), built in {built:.1f} s"
                  + (f"; {backend.render_warning}" if backend.render_warning else ""))
        finally:
            backend.close()
    for cam in cameras:
        diff = np.abs(frames["fast"][cam].astype(np.int16) - frames["faithful"][cam]).mean()
        print(f"{cam}: fast vs faithful, mean |difference| {diff:.1f} grey levels")


if __name__ == "__main__":
    _main()
