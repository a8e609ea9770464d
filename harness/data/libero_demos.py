"""LIBERO's own demonstration files: import into the harness's dataset, and a replay check.

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
8-D state, so demos and rollouts can be mixed for world-model training.

``replay_demos`` plays each demo's actions from its first recorded state in the simulator and
reports whether the task still succeeds, and how far the replayed joint positions drift from
the recorded ones. This is how OpenVLA's dataset regeneration filters LIBERO demos. LIBERO's
states hold neither fixture poses (cabinets, stoves: a replay may place them up to ~1 cm
differently) nor the gripper's accumulated command (fingers may differ by millimetres at first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
@dataclass
class ReplayResult:
    demo: str
    steps: int
    recorded_success: bool
    replay_success: bool
    success_step: int | None
    max_state_error: float | None  # max |replayed - recorded| over qpos, None without states

    @property
    def still_succeeds(self) -> bool:
        return self.replay_success or not self.recorded_success


def replay_demos(src: str | os.PathLike, env: str | None = None, max_demos: int | None = None,
                 on_result: Callable[[ReplayResult, int, int], None] | None = None) -> dict[str, Any]:
    """Play every demo's actions from its first recorded state; report success and state drift."""
    from envs import env_meta, make_env

    env_id = identify_env(src, env)
    results: list[ReplayResult] = []
    with _open(src) as f:
        data = f["data"]
        names = _demo_names(data)[:max_demos]
        for name in names:
            if "states" not in data[name]:
                raise HarnessError(f"{src}: {name} has no 'states' dataset, so it cannot be replayed from its start")
        sim = make_env(env_id, cameras=(), max_episode_steps=max(len(data[n]["actions"]) for n in names) or 1)
        try:
            nq = sim.unwrapped._model.nq
            for i, name in enumerate(names, 1):
                g = data[name]
                states, actions = g["states"][()], g["actions"][()]
                rewards = g["rewards"][()] if "rewards" in g else None
                dones = g["dones"][()] if "dones" in g else None
                recorded = bool((rewards[-1] > 0) if rewards is not None else (dones is not None and dones[-1]))
                if states.shape[1] != sim.unwrapped.get_sim_state().shape[0]:
                    raise HarnessError(f"{src}: {name}'s states have {states.shape[1]} numbers, {env_id}'s simulator "
                                       f"{sim.unwrapped.get_sim_state().shape[0]}: the demo belongs to another task (--env)")
                sim.unwrapped.reset_to_state(states[0])
                err, success_step = 0.0, None
                for t, action in enumerate(actions):
                    if t < len(states):
                        now = sim.unwrapped.get_sim_state()
                        err = max(err, float(np.abs(now[1:1 + nq] - states[t][1:1 + nq]).max()))
                    info = sim.step(np.asarray(action, dtype=np.float64))[4]
                    if info["success"] and success_step is None:
                        success_step = t + 1
                result = ReplayResult(name, len(actions), recorded, success_step is not None, success_step, err)
                results.append(result)
                if on_result:
                    on_result(result, i, len(names))
        finally:
            sim.close()
    replayed = sum(r.replay_success for r in results)
    return {"env_id": env_id, "instruction": env_meta(env_id)["instruction"], "demos": len(results),
            "recorded_successes": sum(r.recorded_success for r in results), "replay_successes": replayed,
            "still_succeed": all(r.still_succeeds for r in results),
            "results": [asdict(r) for r in results]}


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(report, indent=2))
