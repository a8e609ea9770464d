"""`harness` with one more policy, ``slow``, registered in every process of a run (the driver,
local worker processes, Ray actors): Meta-World's scripted expert that sleeps before each action
of the episodes from init state ``slow_from`` on. The sleep is ``$SLOW_POLICY_DELAY`` seconds
(0 when unset), outside the run's identity, so a resume of a slowed run can run at full speed.

    python tests/slow_harness.py eval --env metaworld/reach-v3 -p slow:slow_from=2 ...

Used by tests/test_stopping.py to have episodes in flight, for as long as a test needs, when a
run is signalled or killed.
"""

from __future__ import annotations

import os
import sys
import time

from harness.run.ray_executor import EpisodeActor, RayExecutor


class SlowPolicy:
    """The scripted expert, ``$SLOW_POLICY_DELAY`` s per step from init state ``slow_from`` on."""

    def __init__(self, env_info, slow_from: int = 0):
        from policies.scripted import ScriptedPolicy

        self.expert = ScriptedPolicy(env_info)
        self.observes = self.expert.observes
        self.slow_from = int(slow_from)
        self.delay = 0.0

    def reset(self, instruction, *, seed=None, init_state=None):
        slow = init_state is not None and init_state >= self.slow_from
        self.delay = float(os.environ.get("SLOW_POLICY_DELAY", "0")) if slow else 0.0
        self.expert.reset(instruction, seed=seed, init_state=init_state)

    def act(self, observation):
        time.sleep(self.delay)
        return self.expert.act(observation)


def register() -> None:
    from policies import POLICIES

    if "slow" not in POLICIES:
        POLICIES.register("slow", SlowPolicy, description="scripted expert, slowed ($SLOW_POLICY_DELAY s a step)")


class SlowActor(EpisodeActor):
    """A Ray actor that knows the ``slow`` policy (this class travels to it by value)."""

    def __init__(self, settings, name):
        register()
        super().__init__(settings, name)


register()  # here, and in local worker processes, which import this file as their main module
RayExecutor.actor_class = SlowActor

if __name__ == "__main__":
    from harness.cli import main

    sys.exit(main())
