"""Uniformly random actions, reproducible per episode seed."""

from __future__ import annotations

import numpy as np

from policies.base import EnvInfo, episode_rng


class RandomPolicy:
    """Uniform random actions in the action space."""

    _SALT = 0x52414E44

    observes: frozenset[str] = frozenset()  # blind: actions depend on the seed only

    def __init__(self, env_info: EnvInfo):
        self.space = env_info.action_space
        self._rng = episode_rng(None, self._SALT)

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self._rng = episode_rng(seed, self._SALT)

    def act(self, observation) -> np.ndarray:
        return self._rng.uniform(self.space.low, self.space.high).astype(np.float32)
