"""The Policy protocol, what a policy may know about its env, and policy specs.

A policy spec is ``name`` or ``name:key=value,key=value``, e.g. ``scripted``,
``noisy:base=scripted,scale=0.5``, ``replay:path=demos.h5``. The full spec string is the
policy's label in results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

from harness.registry import Registry, parse_spec

POLICIES: Registry = Registry("policy")


@dataclass(frozen=True)
class EnvInfo:
    """What a policy is told about the env it will act in, known before the env is built."""

    env_id: str
    family: str
    task: str
    instruction: str
    action_space: gym.spaces.Box
    cameras: tuple[str, ...]
    image_size: int | None  # None: each camera at the benchmark's own size (CALVIN)
    render: str = "faithful"  # how the env renders (envs.registry.RENDER_MODES): goal frames a policy renders match it

    @classmethod
    def from_env_id(cls, env_id: str, cameras: tuple[str, ...] | None = None, image_size: int | None = None,
                    render: str | None = None) -> EnvInfo:
        from envs import env_meta, resolve_env_options

        meta = env_meta(env_id)
        opts = resolve_env_options(env_id, cameras, image_size, render=render, check_installed=False)
        dim = meta["action_dim"]
        return cls(
            env_id=env_id,
            family=meta["family"],
            task=meta["task"],
            instruction=meta["instruction"],
            action_space=gym.spaces.Box(-1.0, 1.0, (dim,), np.float32),
            cameras=opts.cameras,
            image_size=opts.image_size,
            render=opts.render,
        )


#: What a policy reads from observations. A policy class may declare ``observes``; one that does
#: not is assumed to read everything. A world model predicts pixels only, so only policies that
#: do not read ``state`` can act closed-loop inside one (the others are replayed open-loop).
ALL_OBSERVATIONS = frozenset({"pixels", "state"})


def observes(policy: Any) -> frozenset[str]:
    return frozenset(getattr(policy, "observes", ALL_OBSERVATIONS))


def acts_in_batch(policy: Any) -> bool:
    """Whether one instance of ``policy`` can run several episodes at once (several world-model
    rollouts stepped together): it then has ``reset_batch(instructions, seeds=, init_states=)``,
    ``act_batch(observations) -> (B, A)`` and ``select_batch(rows)`` (go on with these episodes
    only, in this order). Other policies get one instance per episode of a batch."""
    return all(callable(getattr(policy, m, None)) for m in ("reset_batch", "act_batch", "select_batch"))


@runtime_checkable
class Policy(Protocol):
    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        """Start an episode. Stochastic policies reseed from ``seed`` so episodes reproduce."""

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        """One action in the env's action space (float32)."""


@dataclass(frozen=True)
class PolicySpec:
    name: str
    params: dict[str, Any]
    text: str  # as the user wrote it; the label in results

    def __str__(self) -> str:
        return self.text


def parse_policy_spec(text: str) -> PolicySpec:
    name, params = parse_spec(text, POLICIES, example="noisy:base=scripted,scale=0.5", skip=("env_info",))
    return PolicySpec(name, params, text.strip())


def make_policy(spec: str | PolicySpec, env_info: EnvInfo) -> Policy:
    if isinstance(spec, str):
        spec = parse_policy_spec(spec)
    return POLICIES.build(spec.name, env_info=env_info, **spec.params)


def episode_rng(seed: int | None, salt: int) -> np.random.Generator:
    """A per-episode generator: the same (seed, salt) always gives the same stream."""
    return np.random.default_rng(None if seed is None else [int(seed) & 0xFFFFFFFF, salt])


def clip_to(space: gym.spaces.Box, action: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(action, dtype=np.float32), space.low, space.high)
