"""`harness collect`: roll a policy out in the simulator and save the episodes as a dataset
(HDF5, robomimic layout; see harness/data/dataset.py) for world-model training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.dataset import DatasetWriter, EpisodeData, flatten_observation
from harness.errors import HarnessError
from harness.run.config import check_episode_args
from harness.run.episodes import Episode, build_episodes
from harness.run.store import check_writable


@dataclass(frozen=True)
class CollectConfig:
    env: str
    policies: tuple[str, ...]
    out: str
    episodes: int = 10
    seed: int = 0
    first_init_state: int = 0
    max_steps: int | None = None
    cameras: tuple[str, ...] | None = None
    image_size: int | None = None
    render: str | None = None  # envs.registry.RENDER_MODES (None: the default); recorded with the env options
    stop_on_success: bool = True
    only_success: bool = False
    overwrite: bool = False

    def __post_init__(self):
        from envs.registry import check_render, default_render

        check_episode_args(self.episodes, self.seed, self.max_steps)
        object.__setattr__(self, "render", default_render() if self.render is None else check_render(self.render))
        if isinstance(self.policies, str) or not self.policies:
            raise HarnessError(f"policies must be a non-empty tuple of policy specs, got {self.policies!r}")
        if not isinstance(self.first_init_state, int) or self.first_init_state < 0:
            raise HarnessError(f"--first-init-state {self.first_init_state!r} must be an integer >= 0")


def plan_collect(cfg: CollectConfig) -> tuple[list[Episode], dict[str, Any]]:
    from harness.run.evaluate import resolve_targets

    out = Path(cfg.out)
    if out.suffix not in (".h5", ".hdf5"):
        raise HarnessError(f"--out {cfg.out!r} must end in .h5 or .hdf5 (the dataset is one HDF5 file)")
    if out.exists() and not cfg.overwrite:
        raise HarnessError(f"{cfg.out} exists: choose another --out or pass --overwrite")
    check_writable(out.parent)
    env_ids, options = resolve_targets(cfg.env, list(cfg.policies), cfg.cameras, cfg.image_size, cfg.max_steps,
                                       cfg.render)
    episodes = build_episodes(env_ids, cfg.episodes, cfg.seed, {e: o.max_episode_steps for e, o in options.items()},
                              cfg.first_init_state)
    env_args = {"env_ids": env_ids, "policies": list(cfg.policies), "seed": cfg.seed, "first_init_state": cfg.first_init_state,
                "options": {e: {**o.as_kwargs(), "cameras": list(o.cameras)} for e, o in options.items()}}
    return episodes, env_args


def run_collect(cfg: CollectConfig, on_episode: Callable[[dict[str, Any], int, int], None] | None = None) -> dict[str, Any]:
    from harness.run.runner import EpisodeWorker, RunSettings

    episodes, env_args = plan_collect(cfg)
    worker = EpisodeWorker(RunSettings(cfg.cameras, cfg.image_size, cfg.stop_on_success, render=cfg.render))
    kept = successes = 0
    try:
        with DatasetWriter(cfg.out, env_args) as writer:
            jobs = [(policy, ep) for policy in cfg.policies for ep in episodes]
            for i, (policy, ep) in enumerate(jobs, 1):
                result = worker.run_one(ep, policy, keep_trajectory=True)
                successes += result.success
                if result.success or not cfg.only_success:
                    obs = [flatten_observation(o) for o in result.observations]
                    writer.add(EpisodeData(
                        actions=np.stack(result.actions) if result.actions else np.zeros((0, 0), np.float32),
                        obs={k: np.stack([o[k] for o in obs[:-1]]) for k in obs[0]},
                        final_obs={k: obs[-1][k][None] for k in obs[0]},
                        rewards=np.asarray(result.rewards, np.float32),
                        success=np.asarray(result.successes, bool),
                        attrs={**ep.to_dict(), "policy": policy, "success": result.success,
                               "success_step": -1 if result.success_step is None else result.success_step},
                    ))
                    kept += 1
                if on_episode:
                    on_episode({"env_id": ep.env_id, "init_state": ep.init_state, "policy": policy,
                                "success": result.success}, i, len(jobs))
    finally:
        worker.close()
    return {"out": cfg.out, "episodes": len(jobs), "kept": kept, "successes": successes, "env_args": env_args}
