"""LIBERO's own demonstration files: import into the harness's dataset, and replay them in the
simulator as OpenVLA regenerates them.

LIBERO ships its demos as one HDF5 file per task in robomimic's layout::

    data/                  attrs: problem_info (JSON with language_instruction), bddl_file_name,
                                  env_args (JSON), macros_image_convention ("opengl" by default)
      demo_i/
        actions  (T, 7)    OSC delta + gripper, as the env takes them
        states   (T, S)    flattened MuJoCo state (time, qpos, qvel) before each action
        rewards, dones (T,)
        obs/agentview_rgb, obs/eye_in_hand_rgb  (T, H, W, 3) uint8, robosuite's raw images
        obs/ee_states (T, 6) = eef position + axis-angle; obs/gripper_states (T, 2); ...

``import_demos`` writes the harness's dataset (harness/data/dataset.py) with images turned the way
the env shows them (180-degree rotation of robosuite's OpenGL-convention images) and the env's
8-D state, so demos and rollouts can be mixed for world-model training. It keeps every step of
the file as recorded and drops nothing.

``replay_demos`` replays each demo in the simulator the way OpenVLA's
``experiments/robot/libero/regenerate_libero_dataset.py`` regenerates LIBERO's datasets, and with
``out=`` writes the replayed demos as a harness dataset. What matches OpenVLA's script:

- the start: LIBERO's reset, then the demo's first recorded state (``set_init_state(states[0])``),
  then 10 wait steps with the dummy action ``[0, 0, 0, 0, 0, 0, -1]`` (zero motion, gripper
  open). The wait steps are not recorded; the first frame is the observation after them.
- no-op actions are dropped (``is_noop``, OpenVLA's rule): an action is a no-op when the L2 norm
  of its first six numbers is below 1e-4 and its gripper number equals that of the previous
  *kept* action. The first action has no previous one and is a no-op on the norm alone. A
  dropped action is not played. ``keep_noops=True`` plays and keeps every action.
- each kept step records the observation before the action and the action itself, as read
  from the demo file.
- success is LIBERO's oracle after the last played action (OpenVLA's ``done``). Only such
  replays are written; failed replays are dropped, as OpenVLA drops them.
- images are 256 px by default, rendered as robosuite renders them (``render="faithful"``, the
  default; ``"fast"`` turns shadows, reflections and MSAA off), from the ``agentview`` and
  ``eye_in_hand`` cameras.

What differs:

- images are stored upright, as the env shows them (robosuite's image rotated by 180 degrees).
  OpenVLA's HDF5 files keep robosuite's raw image; its script's notes say the RLDS conversion
  rotates it by 180 degrees, which gives the image stored here.
- the harness's layout (harness/data/dataset.py) rather than LIBERO's: ``obs/state`` is the env's
  8-D state (eef position, eef axis-angle, gripper qpos), the same numbers as OpenVLA's
  ``ee_states`` + ``gripper_states``; ``final_obs`` holds the observation after the last action.
  ``joint_states``, ``robot_states`` and the flattened MuJoCo ``states`` are not written.
- fixture poses (cabinets, stoves), which LIBERO's states do not hold, are those of OpenVLA's
  script: demo i (in file order) gets the i-th reset's draws after ``env.seed(0)``
  (``LiberoEnv.reset_to_state(state, episode=i)``).
- an empty replay (every action a no-op) is not written; OpenVLA's script would fail on it.
- the env uses a soft reset (one MuJoCo model) that zeroes the gripper's accumulated command as
  robosuite's hard reset (OpenVLA's) does, instead of rebuilding the model from XML.

Each result also reports the largest joint-position drift between the simulator before each
played action and the demo's recorded state before the same action. Waiting and dropping
no-ops shift the replay in time, and LIBERO's states hold neither fixture poses nor the
gripper's accumulated command, so drift of millimetres to centimetres is expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.libero_tasks import NOOP_ACTION, NUM_STEPS_WAIT
from harness.errors import HarnessError

CAMERA_KEYS = {"agentview": "agentview_rgb", "eye_in_hand": "eye_in_hand_rgb"}


# ---------------------------------------------------------------------------- reading
def _open(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"demo file {str(path)!r} does not exist: pass a LIBERO demo .hdf5 file "
                           "(e.g. libero_spatial/<task>_demo.hdf5 from LIBERO's datasets)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise HarnessError(f"{path} is not a readable HDF5 file ({exc})") from None
    if "data" not in f or not any(k.startswith("demo_") for k in f["data"]):
        f.close()
        raise HarnessError(f"{path} has no data/demo_* groups: not a LIBERO/robomimic demo file")
    return f


def _attr_text(attrs, key: str) -> str:
    v = attrs.get(key, "")
    return v.decode() if isinstance(v, bytes) else str(v)


def _demo_names(data) -> list[str]:
    return sorted((k for k in data if k.startswith("demo_")), key=lambda n: int(n.split("_")[1]))


def identify_env(path: str | os.PathLike, env: str | None = None) -> str:
    """The harness env id of a demo file: ``env`` if given, else the task whose name matches the
    file's BDDL file name (or the file name without ``_demo``), preferring the suite in its path."""
    from envs import libero_tasks as lt

    if env is not None:
        from envs import ENVS

        if env not in ENVS or not env.startswith("libero/"):
            raise HarnessError(ENVS.unknown_message(env) if env not in ENVS else
                               f"--env {env!r} is not a LIBERO task: use libero/<suite>/<task id>")
        return env
    with _open(path) as f:
        bddl = _attr_text(f["data"].attrs, "bddl_file_name")
    candidates = [Path(bddl).stem] if bddl else []
    stem = Path(path).stem
    candidates.append(stem[: -len("_demo")] if stem.endswith("_demo") else stem)
    hint = " ".join((bddl, os.fspath(path)))
    for name in candidates:
        matches = [(s, i) for s in lt.SUITES for i, (t, _) in enumerate(lt.TASKS[s]) if t == name]
        if matches:
            suite, task_id = next(((s, i) for s, i in matches if s in hint), matches[0])
            return lt.env_id(suite, task_id)
    raise HarnessError(f"cannot tell which LIBERO task {os.fspath(path)!r} holds (BDDL file {bddl or 'not recorded'}): "
                       "pass --env libero/<suite>/<task id>")


def _to_env_images(images: np.ndarray, convention: str) -> np.ndarray:
    """Demo images (N, H, W, 3) -> the env's orientation (robosuite's OpenGL image rotated 180 deg)."""
    if convention == "opencv":  # robosuite already flipped these vertically
        return np.ascontiguousarray(images[:, :, ::-1])
    return np.ascontiguousarray(images[:, ::-1, ::-1])


def _state(obs, T: int) -> np.ndarray | None:
    """The env's 8-D state (eef xyz, eef axis-angle, gripper qpos) from LIBERO's obs keys."""
    if "ee_states" in obs and "gripper_states" in obs:
        parts = [obs["ee_states"][()], obs["gripper_states"][()]]
    elif all(k in obs for k in ("ee_pos", "ee_ori", "gripper_states")):
        parts = [obs["ee_pos"][()], obs["ee_ori"][()], obs["gripper_states"][()]]
    else:
        return None
    state = np.concatenate(parts, axis=1).astype(np.float32)
    return state if state.shape == (T, 8) else None


# ---------------------------------------------------------------------------- import
def import_demos(src: str | os.PathLike, out: str | os.PathLike, env: str | None = None,
                 overwrite: bool = False, max_demos: int | None = None) -> dict[str, Any]:
    """Convert a LIBERO demo file into the harness's dataset format; returns a summary."""
    from envs import env_meta
    from harness.data.dataset import DatasetWriter, EpisodeData

    env_id = identify_env(src, env)
    meta = env_meta(env_id)
    out = Path(out)
    if out.suffix not in (".h5", ".hdf5"):
        raise HarnessError(f"--out {str(out)!r} must end in .h5 or .hdf5")
    if out.exists() and not overwrite:
        raise HarnessError(f"{out} exists: choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    n = successes = 0
    with _open(src) as f, DatasetWriter(out, {"source": os.fspath(src), "env_ids": [env_id], "policy": "libero_demo",
                                              "format_source": "libero-hdf5"}) as writer:
        data = f["data"]
        convention = _attr_text(data.attrs, "macros_image_convention") or "opengl"
        for name in _demo_names(data)[:max_demos]:
            g = data[name]
            actions = np.asarray(g["actions"][()], dtype=np.float32)
            T = actions.shape[0]
            obs_in = g["obs"] if "obs" in g else {}
            obs: dict[str, np.ndarray] = {}
            for key in CAMERA_KEYS.values():
                if key in obs_in:
                    obs[key] = _to_env_images(obs_in[key][()], convention)
            state = _state(obs_in, T)
            if state is not None:
                obs["state"] = state
            rewards = np.asarray(g["rewards"][()], np.float32) if "rewards" in g else None
            dones = np.asarray(g["dones"][()]).astype(bool) if "dones" in g else None
            success = rewards > 0 if rewards is not None else dones
            ok = bool(success[-1]) if success is not None and T else False
            step = int(np.argmax(success)) + 1 if ok else -1
            writer.add(EpisodeData(
                actions=actions, obs=obs, rewards=rewards, success=success,
                attrs={"env_id": env_id, "task": meta["task"], "instruction": meta["instruction"],
                       "init_state": -1, "seed": -1, "max_steps": T, "policy": "libero_demo",
                       "success": ok, "success_step": step, "source_demo": name},
            ))
            n += 1
            successes += ok
    return {"env_id": env_id, "out": os.fspath(out), "demos": n, "successful": successes}


# ---------------------------------------------------------------------------- replay
NOOP_THRESHOLD = 1e-4  # OpenVLA's is_noop threshold on the L2 norm of the six motion numbers
REPLAY_CAMERAS = ("agentview", "eye_in_hand")


def is_noop(action, prev_action=None, threshold: float = NOOP_THRESHOLD) -> bool:
    """OpenVLA's no-op rule: the first six numbers have an L2 norm below ``threshold`` and the
    gripper number equals ``prev_action``'s (the previous kept action); with no previous action
    (the first one) the norm alone decides. A gripper change with the arm still is kept."""
    action = np.asarray(action, dtype=np.float64)
    still = bool(np.linalg.norm(action[:-1]) < threshold)
    if prev_action is None:
        return still
    return still and bool(action[-1] == np.asarray(prev_action, dtype=np.float64)[-1])


@dataclass
class ReplayResult:
    demo: str
    steps: int  # actions in the demo file
    played_steps: int  # actions played and kept (the no-ops dropped, unless keep_noops)
    noops_dropped: int
    recorded_success: bool
    replay_success: bool  # LIBERO's oracle after the last played action (OpenVLA's `done`)
    success_step: int | None  # first played step (1-based) after which the oracle held
    max_state_error: float | None  # max |replayed - recorded| qpos before the same action
    written: bool  # written to the output dataset (a successful, non-empty replay)

    @property
    def still_succeeds(self) -> bool:
        return self.replay_success or not self.recorded_success


def _recorded_success(g) -> bool:
    if "rewards" in g and len(g["rewards"]):
        return bool(g["rewards"][-1] > 0)
    return bool("dones" in g and len(g["dones"]) and g["dones"][-1])


def replay_demos(src: str | os.PathLike, env: str | None = None, max_demos: int | None = None,
                 out: str | os.PathLike | None = None, keep_noops: bool = False,
                 image_size: int | None = None, render: str | None = None, overwrite: bool = False,
                 on_result: Callable[[ReplayResult, int, int], None] | None = None) -> dict[str, Any]:
    """Replay every demo as OpenVLA's regenerate_libero_dataset.py does (see the module's
    docstring): reset to ``states[0]``, 10 unrecorded wait steps, no-op actions dropped unless
    ``keep_noops``. With ``out`` the successful replays are written as a harness dataset
    (cameras agentview and eye_in_hand, ``image_size`` px, 256 by default); without it nothing
    is rendered. Returns the summary with one result per demo."""
    import contextlib

    from envs import env_meta, make_env
    from envs import libero_tasks as lt
    from harness.data.dataset import DatasetWriter, EpisodeData, flatten_observation

    env_id = identify_env(src, env)
    meta = env_meta(env_id)
    if out is not None:
        out = Path(out)
        if out.suffix not in (".h5", ".hdf5"):
            raise HarnessError(f"--out {str(out)!r} must end in .h5 or .hdf5")
        if out.exists() and not overwrite:
            raise HarnessError(f"{out} exists: choose another --out or pass --overwrite")
    cameras = REPLAY_CAMERAS if out is not None else ()
    size = lt.DEFAULT_IMAGE_SIZE if image_size is None else image_size
    wait = np.asarray(NOOP_ACTION, dtype=np.float64)
    settings = {"recipe": "OpenVLA experiments/robot/libero/regenerate_libero_dataset.py",
                "num_steps_wait": NUM_STEPS_WAIT, "wait_action": wait.tolist(), "wait_steps_recorded": False,
                "drop_noops": not keep_noops, "noop_threshold": NOOP_THRESHOLD,
                "kept": "replays whose last played action ends in success",
                "fixtures": "OpenVLA's: demo i gets the fixtures of the i-th reset after env.seed(0)"}
    results: list[ReplayResult] = []
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(_open(src))
        data = f["data"]
        names = _demo_names(data)[:max_demos]
        for name in names:
            if "states" not in data[name]:
                raise HarnessError(f"{src}: {name} has no 'states' dataset, so it cannot be replayed from its start")
        longest = max(len(data[n]["actions"]) for n in names) if names else 0
        sim = make_env(env_id, cameras=cameras, image_size=size, max_episode_steps=NUM_STEPS_WAIT + longest + 1,
                       render=render)
        stack.callback(sim.close)
        writer = None
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            options = {"cameras": list(cameras), "image_size": size, "render": sim.unwrapped.rendering}
            writer = stack.enter_context(DatasetWriter(out, {
                "source": os.fspath(src), "env_ids": [env_id], "policy": "libero_demo", "format_source": "libero-hdf5",
                "replay": settings, "options": {env_id: options}}))
        base, nq = sim.unwrapped, sim.unwrapped._model.nq
        for i, name in enumerate(names, 1):
            g = data[name]
            states, actions = g["states"][()], np.asarray(g["actions"][()], dtype=np.float64)
            if states.shape[1] != base.get_sim_state().shape[0]:
                raise HarnessError(f"{src}: {name}'s states have {states.shape[1]} numbers, {env_id}'s simulator "
                                   f"{base.get_sim_state().shape[0]}: the demo belongs to another task (--env)")
            obs, _ = base.reset_to_state(states[0], episode=i - 1)  # OpenVLA's i-th reset of the task's env
            for _ in range(NUM_STEPS_WAIT):
                obs = sim.step(wait)[0]
            success = base.check_success()  # OpenVLA's `done` when no action is played
            played: list[np.ndarray] = []
            frames, rewards, successes = [], [], []
            err, success_step, dropped = 0.0, None, 0
            for t, action in enumerate(actions):
                if not keep_noops and is_noop(action, played[-1] if played else None):
                    dropped += 1
                    continue
                if t < len(states):
                    err = max(err, float(np.abs(base.get_sim_state()[1:1 + nq] - states[t][1:1 + nq]).max()))
                if writer is not None:
                    frames.append(flatten_observation(obs))
                obs, reward, _, _, info = sim.step(action)
                played.append(action)
                success = bool(info["success"])
                rewards.append(reward)
                successes.append(success)
                if success and success_step is None:
                    success_step = len(played)
            written = bool(writer is not None and success and played)
            if written:
                final = flatten_observation(obs)
                writer.add(EpisodeData(
                    actions=np.stack(played), obs={k: np.stack([fr[k] for fr in frames]) for k in frames[0]},
                    final_obs={k: v[None] for k, v in final.items()},
                    rewards=np.asarray(rewards, np.float32), success=np.asarray(successes, bool),
                    attrs={"env_id": env_id, "task": meta["task"], "instruction": meta["instruction"],
                           "init_state": -1, "seed": -1, "max_steps": len(played), "policy": "libero_demo",
                           "success": True, "success_step": success_step, "source_demo": name,
                           "source_steps": len(actions), "noops_dropped": dropped},
                ))
            result = ReplayResult(name, len(actions), len(played), dropped, _recorded_success(g), success,
                                  success_step, err, written)
            results.append(result)
            if on_result:
                on_result(result, i, len(names))
    return {"env_id": env_id, "instruction": meta["instruction"], "demos": len(results),
            "recorded_successes": sum(r.recorded_success for r in results),
            "replay_successes": sum(r.replay_success for r in results),
            "still_succeed": all(r.still_succeeds for r in results),
            "noops_dropped": sum(r.noops_dropped for r in results),
            "written": sum(r.written for r in results), "out": None if out is None else os.fspath(out),
            "replay": settings, "results": [asdict(r) for r in results]}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
