"""CALVIN as a harness env: single tasks and the long-horizon chain evaluation.

An adapter over the real ``calvin_env`` (mees/calvin_env, not on PyPI: clone it and
``pip install -e`` it, or point ``CALVIN_ENV_ROOT`` at a checkout). The env is built from
calvin_env's own ``conf/`` files -- robot ``panda_longer_finger``, scene ``calvin_scene_<X>``,
cameras ``static`` and ``gripper`` -- without the CALVIN dataset; pybullet renders on the CPU
(TinyRenderer) unless EGL is asked for.

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
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from envs import calvin_sequences as cs
from envs import calvin_tasks as ct
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

    def __init__(self, cameras: tuple[str, ...], image_size: int, scene: str = ct.DEFAULT_SCENE,
                 use_egl: bool = False):
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
            cfg.width = cfg.height = int(image_size)
            camera_cfgs[cam] = cfg
        env_cfg = OmegaConf.load(conf / "env" / "play_table_env.yaml")
        env_cfg.use_egl = bool(use_egl)
        cfg = OmegaConf.create({
            "data_path": str(root / "data"),
            "use_vr": False,
            "scene": OmegaConf.load(conf / "scene" / f"calvin_scene_{scene}.yaml"),
            "robot": robot,
            "cameras": camera_cfgs,
            "env": env_cfg,
        })
        try:
            self._env = hydra.utils.instantiate(cfg.env, show_gui=False, use_vr=False, use_scene_info=True)
        except ImportError as exc:
            raise HarnessError(f"calvin_env cannot be imported ({exc}): install its requirements "
                               f"(pip install -e \".[calvin]\" and pip install -e <calvin_env checkout>)") from None
        self._oracle = hydra.utils.instantiate(OmegaConf.load(conf / "tasks" / "new_playtable_tasks.yaml"))
        self.cameras = tuple(cameras)
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

        with contextlib.redirect_stdout(io.StringIO()):  # calvin_env prints on disconnect
            env.close()
        env.close = lambda: None  # its __del__ would disconnect (and print) again


# ---------------------------------------------------------------------------- the harness env
class CalvinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str = "chains",
        cameras: tuple[str, ...] = ct.DEFAULT_CAMERAS,
        image_size: int = ct.DEFAULT_IMAGE_SIZE,
        max_episode_steps: int | None = None,
        scene: str | None = None,
        use_egl: bool | None = None,
        steps_per_subtask: int = ct.STEPS_PER_SUBTASK,
        render_mode: str | None = "rgb_array",
        backend: CalvinBackend | None = None,
    ):
        # The CLI cannot pass env kwargs: scene and EGL also come from CALVIN_SCENE / CALVIN_EGL.
        scene = scene or os.environ.get("CALVIN_SCENE", ct.DEFAULT_SCENE)
        use_egl = os.environ.get("CALVIN_EGL", "0") == "1" if use_egl is None else bool(use_egl)
        if task != "chains" and task not in ct.INSTRUCTIONS:
            raise ValueError(f"unknown CALVIN task {task!r}; tasks: {', '.join(ct.TASKS)} or 'chains'")
        if scene not in ct.SCENES:
            raise ValueError(f"unknown CALVIN scene {scene!r}; scenes: {', '.join(ct.SCENES)}")
        for cam in cameras:
            if cam not in ct.CAMERAS:
                raise ValueError(f"camera {cam!r} is not a CALVIN camera; cameras: {', '.join(ct.CAMERAS)}")
        self.task = task
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
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
                cam: gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8) for cam in self.cameras
            }),
            "state": gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)

        if backend is None:
            if any(not e.closed for e in _LIVE):
                raise RuntimeError("a CALVIN simulator is already open in this process: close it first "
                                   "(pybullet bodies of a second one land in the first one's client)")
            backend = CalvinSimBackend(self.cameras, self.image_size, scene=scene, use_egl=use_egl)
        self._backend = backend
        self.calvin_env_commit = getattr(backend, "commit", None)
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
            "scene_obs": np.asarray(self._frame["scene_obs"], dtype=np.float32),
            "episode_metrics": {"completed_subtasks": self._done_subtasks, "subtasks": list(self._subtasks)},
        }
