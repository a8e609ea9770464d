"""Policies behind one registry. ``make_policy("noisy:scale=0.5", env_info)``."""

from __future__ import annotations

from policies.base import POLICIES, EnvInfo, Policy, PolicySpec, make_policy, parse_policy_spec

POLICIES.register("scripted", "policies.scripted:ScriptedPolicy",
                  description="Meta-World's scripted expert for the task (all 50 v3 tasks)")
POLICIES.register("random", "policies.random:RandomPolicy",
                  description="uniform random actions, seeded per episode")
POLICIES.register("replay", "policies.replay:ReplayPolicy",
                  description="replays actions from a .npy array or an HDF5 dataset (path=..., demo=...)")
POLICIES.register("cem", "policies.cem:CEMPolicy",
                  description="CEM planner over a world model toward a goal image (wm=NAME, preset=cpu|dino_wm|vjepa2_ac)")
POLICIES.register("noisy", "policies.noisy:NoisyPolicy",
                  description="a base policy plus Gaussian action noise (base=scripted, scale=0.1)")
POLICIES.register("bc", "policies.bc:BCPolicy",
                  description="image-based behaviour cloning from `harness train-policy` (path=DIR/step_NNNNNN)")
POLICIES.register("openvla", "policies.openvla:OpenVLAPolicy",
                  description="OpenVLA via transformers from a folder or the HF cache (path=, unnorm_key=, family=libero|bridge, device=)")
POLICIES.register("openvla_server", "policies.openvla_server:OpenVLAServerPolicy",
                  description="client of OpenVLA's deploy server, POST /act (url=http://host:8000/act, unnorm_key=, family=)")

__all__ = ["POLICIES", "EnvInfo", "Policy", "PolicySpec", "make_policy", "parse_policy_spec"]
