"""Rollout datasets on disk: HDF5 in the robomimic layout that LIBERO's demos use.

A leaf module (numpy + h5py only), so envs/, policies/ and world_models/ may read it.

Layout (one file, any number of episodes)::

    data/                        attrs: total, format, env_args (JSON)
      demo_0/                    attrs: num_samples, env_id, task, instruction,
                                        init_state, seed, policy, success, success_step
        actions      (T, A) float32   action t, taken after observing obs[t]
        rewards      (T,)   float32
        dones        (T,)   uint8     1 on the last step
        success      (T,)   bool      the oracle after action t
        obs/<cam>_rgb (T, H, W, 3) uint8   upright image before action t
        obs/state    (T, S) float32
        final_obs/<cam>_rgb, final_obs/state   (1, ...) the observation after the last action

``obs`` + ``final_obs`` give the T+1 frames a world model trains on; readers that know only
robomimic's layout ignore ``final_obs``. LIBERO's own demo files (``obs/agentview_rgb`` etc.)
read with the same functions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FORMAT = "wm-harness-hdf5/1"


@dataclass
class EpisodeData:
    actions: np.ndarray  # (T, A)
    obs: dict[str, np.ndarray]  # key -> (T, ...)
    final_obs: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (1, ...)
    rewards: np.ndarray | None = None
    success: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    def frames(self, camera: str) -> np.ndarray:
        """All T+1 frames of a camera (obs then final_obs when present)."""
        key = f"{camera}_rgb"
        parts = [self.obs[key]] + ([self.final_obs[key]] if key in self.final_obs else [])
        return np.concatenate(parts, axis=0)


def flatten_observation(observation: dict[str, Any]) -> dict[str, np.ndarray]:
    """Env observation -> dataset keys: pixels[cam] -> '<cam>_rgb', state -> 'state'."""
    out = {f"{cam}_rgb": np.asarray(img) for cam, img in observation.get("pixels", {}).items()}
    if "state" in observation:
        out["state"] = np.asarray(observation["state"], dtype=np.float32)
    return out


class DatasetWriter:
    """Writes episodes into ``path`` through ``path.partial``, renamed on close, so a crash
    never leaves a half-written file under the final name."""

    def __init__(self, path: str | os.PathLike, env_args: dict[str, Any] | None = None):
        import h5py

        self.path = os.fspath(path)
        self._tmp = self.path + ".partial"
        self._file = h5py.File(self._tmp, "w")
        self._data = self._file.create_group("data")
        self._data.attrs["format"] = FORMAT
        self._data.attrs["env_args"] = json.dumps(env_args or {})
        self._count = 0
        self._total = 0

    def add(self, episode: EpisodeData) -> str:
        name = f"demo_{self._count}"
        g = self._data.create_group(name)
        T = episode.length
        g.create_dataset("actions", data=np.asarray(episode.actions, dtype=np.float32))
        rewards = episode.rewards if episode.rewards is not None else np.zeros(T, np.float32)
        g.create_dataset("rewards", data=np.asarray(rewards, dtype=np.float32))
        dones = np.zeros(T, np.uint8)
        if T:
            dones[-1] = 1
        g.create_dataset("dones", data=dones)
        if episode.success is not None:
            g.create_dataset("success", data=np.asarray(episode.success, dtype=bool))
        for group_name, arrays in (("obs", episode.obs), ("final_obs", episode.final_obs)):
            grp = g.create_group(group_name)
            for key, arr in arrays.items():
                arr = np.asarray(arr)
                if arr.dtype == np.uint8 and arr.ndim == 4:  # images: one chunk per frame
                    grp.create_dataset(key, data=arr, chunks=(1, *arr.shape[1:]), compression="gzip",
                                       compression_opts=1)
                else:
                    grp.create_dataset(key, data=arr)
        g.attrs["num_samples"] = T
        for k, v in episode.attrs.items():
            g.attrs[k] = v if v is not None else ""
        self._count += 1
        self._total += T
        return name

    def close(self) -> None:
        if self._file is None:
            return
        self._data.attrs["total"] = self._total
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            os.remove(self._tmp)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _demo_names(data) -> list[str]:
    return sorted(data.keys(), key=lambda n: (len(n), n))  # demo_2 before demo_10


def list_demos(path: str | os.PathLike) -> list[tuple[str, dict[str, Any]]]:
    """(demo name, attrs) for every episode in the file, in order; a file in another layout is
    refused here in one line, so no reader meets a malformed episode halfway through."""
    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"]
        if not isinstance(data, h5py.Group):
            raise _layout_error(path, "data is not a group")
        try:
            _attrs(data)  # readers look at the file's attributes too (env_args)
            names = _demo_names(data)
            for name in names:
                _check_demo(path, name, data[name])
            return [(n, _attrs(data[n])) for n in names]
        except (RuntimeError, ValueError, TypeError) as exc:  # h5py on damaged metadata
            raise _damaged(path, "data", exc) from None


def _damaged(path, what: str, exc: Exception):
    from harness.errors import HarnessError

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return HarnessError(f"{os.fspath(path)}: {what} is damaged ({first}); collect it again")


def _layout_error(path, problem: str):
    from harness.errors import HarnessError

    return HarnessError(f"{os.fspath(path)}: {problem}; expected the layout `harness collect` writes: data/demo_i/"
                        f"actions (T, A) finite numbers and obs/<camera>_rgb (T, H, W, 3) uint8")


def _check_demo(path, name: str, g) -> None:
    import h5py

    actions = g.get("actions") if isinstance(g, h5py.Group) else None
    if not isinstance(actions, h5py.Dataset) or actions.ndim != 2 or not np.issubdtype(actions.dtype, np.number):
        raise _layout_error(path, f"{name} has no actions (T, A) of numbers")
    if not np.all(np.isfinite(actions[()])):
        raise _layout_error(path, f"{name} has NaN or infinite actions")
    for group in ("obs", "final_obs"):
        obs = g.get(group)
        if obs is None and group == "final_obs":
            continue
        if not isinstance(obs, h5py.Group):
            raise _layout_error(path, f"{name}/{group} is not a group of observations")
        for key, arr in obs.items():
            if key.endswith("_rgb") and (not isinstance(arr, h5py.Dataset) or arr.dtype != np.uint8 or arr.ndim != 4
                                         or arr.shape[-1] != 3):
                got = f"{arr.dtype} {arr.shape}" if isinstance(arr, h5py.Dataset) else "a group"
                raise _layout_error(path, f"{name}/{group}/{key} is {got}, not images")


def read_demo(path: str | os.PathLike, name: str, keys: list[str] | None = None) -> EpisodeData:
    """One episode; ``keys`` limits which obs keys are loaded (all by default)."""
    import h5py

    with h5py.File(path, "r") as f:
        g = f["data"][name]
        try:
            obs = {k: g["obs"][k][()] for k in g["obs"] if keys is None or k in keys}
            final = {}
            if "final_obs" in g:
                final = {k: g["final_obs"][k][()] for k in g["final_obs"] if keys is None or k in keys}
            return EpisodeData(
                actions=g["actions"][()],
                obs=obs,
                final_obs=final,
                rewards=g["rewards"][()] if "rewards" in g else None,
                success=g["success"][()] if "success" in g else None,
                attrs=_attrs(g),
            )
        except (OSError, RuntimeError, ValueError) as exc:  # damaged chunks fail only when read
            raise _damaged(path, f"episode {name}", exc) from None


def iter_demos(path: str | os.PathLike, keys: list[str] | None = None) -> Iterator[EpisodeData]:
    for name, _ in list_demos(path):
        yield read_demo(path, name, keys)


def _attrs(group) -> dict[str, Any]:
    out = {}
    for k, v in group.attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, bytes):
            v = v.decode()
        out[k] = v
    return out
