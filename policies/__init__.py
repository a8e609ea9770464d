"""Policies behind one registry. ``make_policy("noisy:scale=0.5", env_info)``."""

from __future__ import annotations

from policies.base import POLICIES, EnvInfo, Policy, PolicySpec, make_policy, parse_policy_spec

POLICIES.register("scripted", "policies.scripted:ScriptedPolicy",
                  description="Meta-World's scripted expert for the task (all 50 v3 tasks)")
POLICIES.register("random", "policies.random:RandomPolicy",
                  description="uniform random actions, seeded per episode")
POLICIES.register("replay", "policies.replay:ReplayPolicy",
                  description="replays actions from a .npy array or an HDF5 dataset (path=..., demo=...)")
POLICIES.register("noisy", "policies.noisy:NoisyPolicy",
                  description="a base policy plus Gaussian action noise (base=scripted, scale=0.1)")

__all__ = ["POLICIES", "EnvInfo", "Policy", "PolicySpec", "make_policy", "parse_policy_spec"]
