"""Meta-World's own scripted experts (all 50 v3 tasks), acting on the 39-D state."""

from __future__ import annotations

import warnings

import numpy as np

from harness.errors import HarnessError, require_module
from policies.base import EnvInfo, clip_to


class ScriptedPolicy:
    """Meta-World scripted expert for the env's task (needs observation['state'])."""

    observes = frozenset({"state"})

    def __init__(self, env_info: EnvInfo):
        if env_info.family != "metaworld":
            raise HarnessError(
                f"policy 'scripted' has experts for Meta-World envs only; got {env_info.env_id!r}"
            )
        require_module("metaworld", "Meta-World", "metaworld")
        from metaworld.policies import ENV_POLICY_MAP

        self.env_info = env_info
        self._expert = ENV_POLICY_MAP[env_info.task]()

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        pass  # the experts are stateless functions of the state

    def act(self, observation) -> np.ndarray:
        state = np.asarray(observation["state"], dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experts warn when their gains saturate
            action = self._expert.get_action(state)
        return clip_to(self.env_info.action_space, action)
