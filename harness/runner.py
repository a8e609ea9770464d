"""Running one episode, and the per-process worker that owns a simulator and policies.

The same ``EpisodeWorker`` runs in the main process (``--workers 1``) and in each worker
process, so both executors produce identical records.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.episodes import Episode, WorkItem

log = logging.getLogger(__name__)

# Record fields that vary between identical runs (timing, where files went).
NONDETERMINISTIC_FIELDS = ("wall_s", "rollout_s", "steps_per_s", "video", "worker")


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker needs to rebuild envs and policies (picklable)."""

    cameras: tuple[str, ...] | None
    image_size: int | None
    stop_on_success: bool = True
    video_fps: int = 30


@dataclass
class EpisodeResult:
    success: bool
    success_step: int | None
    length: int
    ret: float
    rollout_s: float = 0.0  # reset to last step, without building the env
    # Filled only when the trajectory is kept (videos, datasets): T+1 observations, T of the rest.
    observations: list[dict[str, Any]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)

    @property
    def frames(self) -> list[dict[str, np.ndarray]]:
        return [o["pixels"] for o in self.observations]


def run_episode(env, policy, episode: Episode, *, stop_on_success: bool, keep_trajectory: bool) -> EpisodeResult:
    """Reset env and policy to the episode's init state and seed, act until success (if
    stopping on it), the env ends the episode, or max_steps."""
    start = time.perf_counter()
    obs, info = env.reset(seed=episode.seed, options={"init_state": episode.init_state})
    policy.reset(episode.instruction, seed=episode.seed, init_state=episode.init_state)
    result = EpisodeResult(False, None, 0, 0.0)
    if keep_trajectory:
        result.observations.append(obs)
    shape = env.action_space.shape
    while result.length < episode.max_steps:
        action = np.asarray(policy.act(obs))
        if action.shape != shape:
            raise ValueError(f"policy returned an action of shape {action.shape}; the env expects {shape}")
        if not np.all(np.isfinite(action)):
            raise FloatingPointError(f"policy returned a non-finite action at step {result.length}: {action}")
        obs, reward, terminated, truncated, info = env.step(action)
        result.length += 1
        result.ret += float(reward)
        success = bool(info.get("success"))
        if keep_trajectory:
            result.observations.append(obs)
            result.actions.append(action.astype(np.float32))
            result.rewards.append(float(reward))
            result.successes.append(success)
        if success and result.success_step is None:
            result.success, result.success_step = True, result.length
            if stop_on_success:
                break
        if terminated or truncated:
            break
    result.rollout_s = time.perf_counter() - start
    return result


class EpisodeWorker:
    """Owns one simulator at a time (rebuilt when the env changes) and a policy per
    (policy, env). Never raises for an episode: failures become 'error' records."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self._env_id: str | None = None
        self._env = None
        self._policies: dict[tuple[str, str], Any] = {}

    def _env_for(self, episode: Episode):
        from envs import make_env

        if self._env_id != episode.env_id or self._env.max_episode_steps != episode.max_steps:
            self.close()
            self._env = make_env(episode.env_id, cameras=self.settings.cameras,
                                 image_size=self.settings.image_size, max_episode_steps=episode.max_steps)
            self._env_id = episode.env_id
        return self._env

    def _policy_for(self, spec: str, env_id: str):
        from policies import EnvInfo, make_policy

        key = (spec, env_id)
        if key not in self._policies:
            info = EnvInfo.from_env_id(env_id, self.settings.cameras, self.settings.image_size)
            self._policies[key] = make_policy(spec, info)
        return self._policies[key]

    def run_one(self, episode: Episode, policy: str, *, keep_trajectory: bool) -> EpisodeResult:
        """Run one episode in the simulator (raises on failure; ``run`` records it instead)."""
        env = self._env_for(episode)
        return run_episode(env, self._policy_for(policy, episode.env_id), episode,
                           stop_on_success=self.settings.stop_on_success, keep_trajectory=keep_trajectory)

    def run(self, item: WorkItem) -> dict[str, Any]:
        ep = item.episode
        record: dict[str, Any] = {"policy": item.policy, "backend": item.backend, **ep.to_dict()}
        start = time.perf_counter()
        try:
            if item.backend != "sim":
                raise ValueError(f"backend {item.backend!r} is not available yet; only 'sim'")
            result = self.run_one(ep, item.policy, keep_trajectory=item.video_path is not None)
        except Exception as exc:  # one bad episode must not end the run
            log.warning("episode %s failed: %s", item.key, exc)
            self.close()  # the simulator may be in a bad state: rebuild it for the next episode
            record.update(outcome="error", success=False, success_step=None, length=0, ret=0.0,
                          error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                          wall_s=round(time.perf_counter() - start, 4), steps_per_s=0.0, video=None)
            return record
        wall = time.perf_counter() - start
        record.update(
            outcome="success" if result.success else "failure",
            success=result.success,
            success_step=result.success_step,
            length=result.length,
            ret=round(result.ret, 6),
            wall_s=round(wall, 4),
            rollout_s=round(result.rollout_s, 4),
            steps_per_s=round(result.length / result.rollout_s, 2) if result.rollout_s > 0 else 0.0,
            video=None,
        )
        if item.video_path and (result.success is False or not item.video_only_on_failure):
            record["video"] = self._write_video(item, result)
        return record

    def _write_video(self, item: WorkItem, result: EpisodeResult) -> str | None:
        from harness.video import annotate, compose_frame, write_video

        try:
            cams = list(result.frames[0]) if result.frames else []
            frames = [compose_frame([f[c] for c in cams]) for f in result.frames]
            verdict = f"SUCCESS at step {result.success_step}" if result.success else "FAILURE"
            frames = annotate(frames, item.episode.instruction, verdict, result.success, item.policy)
            write_video(item.video_path, frames, fps=self.settings.video_fps)
            return item.video_path
        except Exception as exc:  # a video problem must not lose the episode's outcome
            log.warning("could not write video %s: %s", item.video_path, exc)
            return None

    def close(self) -> None:
        if self._env is not None:
            try:
                self._env.close()
            except Exception:  # a broken simulator may fail to close; it is dropped anyway
                pass
        self._env, self._env_id = None, None
