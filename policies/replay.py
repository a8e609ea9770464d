"""Replay a recorded action sequence open-loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import HarnessError
from policies.base import EnvInfo, clip_to


class ReplayPolicy:
    """Plays recorded actions: a .npy (T, A) array for every episode, or the matching episode
    (same env id and init state) of a harness/robomimic HDF5 dataset. Past the end of the
    sequence it returns zero actions."""

    observes: frozenset[str] = frozenset()  # blind: recorded actions

    def __init__(self, env_info: EnvInfo, path: str = "", demo: str | None = None):
        if not path:
            raise HarnessError("policy 'replay' needs a file: write e.g. 'replay:path=actions.npy' or 'replay:path=demos.h5'")
        self.path = Path(str(path))
        if not self.path.is_file():
            raise HarnessError(f"replay file {str(self.path)!r} does not exist: give a .npy (T, A) array or an HDF5 dataset from `harness collect`")
        self.env_info = env_info
        self.space = env_info.action_space
        self.demo = demo
        self._fixed: np.ndarray | None = None
        self._by_init: dict[int, str] = {}
        if self.path.suffix == ".npy":
            self._fixed = self._check(np.load(self.path, allow_pickle=False), str(self.path))
        elif self.path.suffix in (".h5", ".hdf5"):
            self._index_dataset()
        else:
            raise HarnessError(f"replay file {str(self.path)!r} has suffix {self.path.suffix!r}; allowed: .npy, .h5, .hdf5")
        self._actions = np.zeros((0, self.space.shape[0]), np.float32)
        self._t = 0

    def _check(self, actions: np.ndarray, what: str) -> np.ndarray:
        dim = self.space.shape[0]
        if actions.ndim != 2 or actions.shape[1] != dim or not np.issubdtype(actions.dtype, np.number):
            raise HarnessError(f"replay actions in {what} have shape {actions.shape} and dtype {actions.dtype}; {self.env_info.env_id} needs numeric (T, {dim})")
        return actions.astype(np.float32)

    def _index_dataset(self) -> None:
        from harness.data.dataset import list_demos

        try:
            demos = list_demos(self.path)
        except (OSError, KeyError) as exc:
            raise HarnessError(f"cannot read replay dataset {str(self.path)!r}: {exc}") from None
        if self.demo is not None:
            if self.demo not in dict(demos):
                raise HarnessError(f"replay dataset {str(self.path)!r} has no episode {self.demo!r}; it has {', '.join(n for n, _ in demos[:10])}")
            return
        for name, attrs in demos:
            if attrs.get("env_id") == self.env_info.env_id and isinstance(attrs.get("init_state"), int):
                self._by_init.setdefault(attrs["init_state"], name)
        if not self._by_init:
            raise HarnessError(f"replay dataset {str(self.path)!r} has no episode of {self.env_info.env_id}")

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self._t = 0
        if self._fixed is not None:
            self._actions = self._fixed
            return
        from harness.data.dataset import read_demo

        name = self.demo if self.demo is not None else self._by_init.get(init_state)  # type: ignore[arg-type]
        if name is None:
            raise HarnessError(f"replay dataset {str(self.path)!r} has no episode of {self.env_info.env_id} with init_state {init_state}")
        self._actions = self._check(read_demo(self.path, name, keys=[]).actions, f"{self.path}:{name}")

    def act(self, observation) -> np.ndarray:
        if self._t < len(self._actions):
            action = self._actions[self._t]
        else:
            action = np.zeros(self.space.shape, np.float32)
        self._t += 1
        return clip_to(self.space, action)
