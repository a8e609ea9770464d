"""Any policy plus Gaussian action noise: policies of graded quality from one expert."""

from __future__ import annotations

import math

import numpy as np

from harness.errors import HarnessError
from policies.base import EnvInfo, clip_to, episode_rng, observes


class NoisyPolicy:
    """Base policy + N(0, scale^2) noise per action dimension, clipped to the action space."""

    _SALT = 0x4E4F4953

    def __init__(self, env_info: EnvInfo, base: str = "scripted", scale: float = 0.1):
        from policies.base import make_policy, parse_policy_spec

        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise HarnessError(f"noisy policy scale {scale!r} is not a number: use e.g. scale=0.5") from None
        if not math.isfinite(scale) or scale < 0:
            raise HarnessError(f"noisy policy scale must be a finite number >= 0, got {scale}")
        spec = parse_policy_spec(str(base))
        if spec.name == "noisy":
            raise HarnessError("noisy policy base cannot itself be 'noisy': raise the scale instead")
        self.scale = scale
        self.space = env_info.action_space
        self.base = make_policy(spec, env_info)
        self._rng = episode_rng(None, self._SALT)

    @property
    def observes(self) -> frozenset[str]:
        return observes(self.base)

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self.base.reset(instruction, seed=seed, init_state=init_state)
        self._rng = episode_rng(seed, self._SALT)

    def act(self, observation) -> np.ndarray:
        action = np.asarray(self.base.act(observation), dtype=np.float32)
        noise = self._rng.normal(0.0, self.scale, size=action.shape)
        return clip_to(self.space, action + noise)
