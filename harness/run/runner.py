"""Running one episode, and the per-process worker that owns a simulator and policies.

The same ``EpisodeWorker`` runs in the main process (``--workers 1``) and in each worker
process, so both executors produce identical records.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.run.episodes import Episode, WorkItem, check_action

log = logging.getLogger(__name__)

# Record fields that vary between identical runs (timing, where files went, what each process
# measured as its faster inference path).
NONDETERMINISTIC_FIELDS = ("wall_s", "rollout_s", "steps_per_s", "video", "worker", "wm_inference")


@dataclass(frozen=True)
class RunSettings:
    """Everything a worker needs to rebuild envs and policies (picklable)."""

    cameras: tuple[str, ...] | None
    image_size: int | None
    stop_on_success: bool = True
    render: str = "faithful"  # envs.registry.RENDER_MODES
    video_fps: int = 30
    wm: str | None = None  # world-model name for "wm:<name>" backends
    wm_checkpoint: str | None = None
    judge: str | None = None  # judge spec scoring world-model (and simulator) rollouts
    wm_batch: int = 1  # world-model episodes of a batch of items advanced together
    wm_precision: str = "float32"  # the world model's networks: float32 | bfloat16
    wm_decoder: str = "full"  # the world model's pixels: "full" decoder or the "distilled" one
    threads: int | None = None  # torch CPU threads per worker (None: CPUs // workers; torch's own in-process)


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
    metrics: dict[str, Any] | None = None  # the env's last info["episode_metrics"] (e.g. CALVIN chains)

    @property
    def frames(self) -> list[dict[str, np.ndarray]]:
        return [o["pixels"] for o in self.observations]


@dataclass
class _Mirror:
    """A matched item's world-model episode to come: the simulator episode it mirrors, and its
    task (None when preparing it failed with ``error``)."""

    item: WorkItem
    sim: EpisodeResult
    task: Any  # harness.run.matched.WorldModelTask
    error: BaseException | None = None


def run_episode(env, policy, episode: Episode, *, stop_on_success: bool, keep_trajectory: bool) -> EpisodeResult:
    """Reset env and policy to the episode's init state and seed, act until success (if
    stopping on it), the env ends the episode, or max_steps."""
    start = time.perf_counter()
    obs, info = env.reset(seed=episode.seed, options={"init_state": episode.init_state})
    # an env may start with another instruction than its registry entry (a CALVIN chain's first subtask)
    instruction = info.get("instruction") or episode.instruction
    policy.reset(instruction, seed=episode.seed, init_state=episode.init_state)
    switches = 0
    result = EpisodeResult(False, None, 0, 0.0)
    if keep_trajectory:
        result.observations.append(obs)
    shape = env.action_space.shape
    while result.length < episode.max_steps:
        action = np.asarray(policy.act(obs))
        check_action(action, shape, result.length, "the env")
        obs, reward, terminated, truncated, info = env.step(action)
        result.length += 1
        result.ret += float(reward)
        success = bool(info.get("success"))
        if "episode_metrics" in info:
            result.metrics = dict(info["episode_metrics"])
        if info.get("instruction") and info["instruction"] != instruction:
            # a multi-step task (a CALVIN chain) moved on to its next subtask
            instruction = info["instruction"]
            switches += 1  # a fresh seed per subtask, still a function of the episode only
            policy.reset(instruction, seed=(episode.seed + switches) & 0x7FFFFFFF, init_state=episode.init_state)
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
    """Owns one simulator at a time (rebuilt when the env changes), a policy per (policy, env),
    and, for matched runs, the world model and judge. Never raises for an episode: failures
    become 'error' records."""

    def __init__(self, settings: RunSettings):
        self.settings = settings
        self._env_id: str | None = None
        self._env = None
        self._policies: dict[tuple[str, str], Any] = {}
        self._wm = None
        self._judge = None

    def _env_for(self, episode: Episode):
        from envs import make_env

        if self._env_id != episode.env_id or self._env.max_episode_steps != episode.max_steps:
            self.close()
            self._env = make_env(episode.env_id, cameras=self.settings.cameras, image_size=self.settings.image_size,
                                 max_episode_steps=episode.max_steps, render=self.settings.render)
            self._env_id = episode.env_id
        return self._env

    def _policy_for(self, spec: str, env_id: str, slot: int = 0):
        """The policy instance for ``spec`` in ``env_id``; ``slot`` > 0: another instance, for
        the other episodes of a world-model batch (a policy keeps per-episode state)."""
        from policies import EnvInfo, make_policy

        key = (spec, env_id, slot)
        if key not in self._policies:
            info = EnvInfo.from_env_id(env_id, self.settings.cameras, self.settings.image_size, self.settings.render)
            self._policies[key] = make_policy(spec, info)
        return self._policies[key]

    def world_model(self):
        """The run's world model and judge, loaded once per process."""
        if self._wm is None:
            from harness.judges import make_judge
            from world_models import load_world_model

            wm = load_world_model(self.settings.wm, self.settings.wm_checkpoint)
            wm.eval()
            judge = make_judge(self.settings.judge, encoder=wm.encoder) if self.settings.judge else None
            # kept only when both loaded: a judge that fails must fail every episode, never let
            # later ones run unjudged and count as judged failures
            self._wm, self._judge = wm, judge
        return self._wm, self._judge

    def run_one(self, episode: Episode, policy: str, *, keep_trajectory: bool) -> EpisodeResult:
        """Run one episode in the simulator (raises on failure; ``run`` records it instead)."""
        env = self._env_for(episode)
        return run_episode(env, self._policy_for(policy, episode.env_id), episode,
                           stop_on_success=self.settings.stop_on_success, keep_trajectory=keep_trajectory)

    def run(self, item: WorkItem) -> list[dict[str, Any]]:
        """The records of ``item``: one per backend in ``item.backends``."""
        return list(self.run_batch([item]))

    def run_batch(self, items: list[WorkItem]) -> Iterator[dict[str, Any]]:
        """The records of ``items``, one per backend of each, each yielded the moment its episode
        ends, so that a worker that dies loses only the episodes in flight. Each simulator episode
        runs in turn; then the world-model episodes of all of them run together, one batched
        world-model call per step (executors hand a worker up to ``settings.wm_batch`` items at
        once). A matched item's video shows both rollouts: it is written when its world-model
        episode ends, and the world-model record names it."""
        mirrors: list[_Mirror] = []
        for item in items:
            ep = item.episode
            start = time.perf_counter()
            matched = item.world_model is not None
            try:
                sim = self.run_one(ep, item.policy, keep_trajectory=item.video_path is not None or matched)
            except Exception as exc:  # one bad episode must not end the run
                log.warning("episode %s failed: %s", item.keys, exc)
                self.close()  # the simulator may be in a bad state: rebuild it for the next episode
                yield from failed_records([item], exc, start)
                continue
            record = {"policy": item.policy, **ep.to_dict(), "backend": "sim",
                      **_outcome(sim, time.perf_counter() - start), **self._planner_inference(item.policy, ep.env_id)}
            if matched:
                mirrors.append(self._mirror(item, sim, record))
            elif item.video_path and (not sim.success or not item.video_only_on_failure):
                record["video"] = self._write_video(item, sim)
            if "sim" in item.backends:
                yield record
        if mirrors:
            yield from self._run_in_world_model(mirrors)

    def _planner_inference(self, spec: str, env_id: str) -> dict[str, Any]:
        """For a policy that plans in a world model (CEM): what that model ran on."""
        return _inference(getattr(self._policy_for(spec, env_id), "world_model", None))

    def _mirror(self, item: WorkItem, sim: EpisodeResult, sim_record: dict[str, Any]) -> _Mirror:
        """The world-model episode that mirrors ``sim``. The judge's verdict on the simulator
        rollout goes into ``sim_record``: the same judge on the real rollout, so that its own
        error can be told apart from the world model's."""
        from harness.judges.base import verdict
        from harness.run.matched import WorldModelTask
        from policies.base import observes

        ep = item.episode
        try:
            wm, judge = self.world_model()
            frames = np.stack([o["pixels"][wm.info["camera"]] for o in sim.observations])
            sim_latents = None
            if getattr(judge, "needs_latents", False):  # encoded once: for the judge and the divergence
                import torch

                with torch.no_grad():
                    sim_latents = wm.encode(frames[None])[0].numpy()
            closed_loop = "state" not in observes(self._policy_for(item.policy, ep.env_id))
            if judge is not None and "sim" in item.backends:
                score, ok = verdict(judge, frames, ep.instruction, sim_latents)
                sim_record.update(judge_score=round(score, 6), judge_success=ok)
        except Exception as exc:  # e.g. a checkpoint that went bad after planning
            return _Mirror(item, sim, None, exc)
        return _Mirror(item, sim, WorldModelTask(ep, item.policy, sim.observations, sim.actions, closed_loop,
                                                 sim_latents))

    def _run_in_world_model(self, mirrors: list[_Mirror]) -> Iterator[dict[str, Any]]:
        """The world-model record of each of ``mirrors``, yielded as its episode ends (the
        episodes run together)."""
        from harness.run.matched import stream_world_model_episodes

        for m in mirrors:
            if m.task is None:
                yield self._wm_record(m, m.error)
        ready = [m for m in mirrors if m.task is not None]
        if not ready:
            return
        wm, judge = self.world_model()  # loaded by _mirror
        episodes = stream_world_model_episodes(wm, [m.task for m in ready], self._policy_for, camera=wm.info["camera"],
                                               judge=judge, stop_on_success=self.settings.stop_on_success,
                                               precision=self.settings.wm_precision, decoder=self.settings.wm_decoder)
        running = set(range(len(ready)))
        while True:
            try:
                i, result = next(episodes)
            except StopIteration:
                return
            except Exception as exc:  # the batch itself failed (e.g. the model raised): the episodes still in it
                for i in sorted(running):
                    yield self._wm_record(ready[i], exc)
                return
            running.discard(i)
            yield self._wm_record(ready[i], result)

    def _wm_record(self, mirror: _Mirror, result) -> dict[str, Any]:
        """The world-model record of ``mirror`` from its WorldModelResult, or from the exception
        that ended it; with the video of both rollouts when the item has one."""
        item, sim = mirror.item, mirror.sim
        backend = f"wm:{item.world_model}"
        base = {"policy": item.policy, **item.episode.to_dict()}
        failed = isinstance(result, BaseException)
        if failed:
            log.warning("world-model episode %s failed: %s", item.keys, result)
            record = _error_record(base, backend, result, time.perf_counter())
        else:
            record = {**base, "backend": backend, **_outcome(result, result.rollout_s),
                      "mode": result.mode, "judge": self.settings.judge,
                      "judge_score": None if result.judge_score is None else round(result.judge_score, 6),
                      "sim_success": sim.success, "latent_divergence": result.latent_divergence,
                      **_inference(self._wm)}
        both_succeeded = sim.success and not failed and result.success
        if item.video_path and (not both_succeeded or not item.video_only_on_failure):
            record["video"] = self._write_video(item, sim, None if failed else result)
        return record

    def _write_video(self, item: WorkItem, sim: EpisodeResult, wm_result=None) -> str | None:
        from harness.report.video import annotate, compose_frame, side_by_side, write_video

        try:
            ep = item.episode
            cams = list(sim.frames[0]) if sim.frames else []
            verdict = f"SUCCESS at step {sim.success_step}" if sim.success else "FAILURE"
            if wm_result is None:
                frames = [compose_frame([f[c] for c in cams]) for f in sim.frames]
                frames = annotate(frames, ep.instruction, verdict, sim.success, item.policy)
            else:
                cam = self._wm.info["camera"]
                wm_verdict = (f"judged SUCCESS at step {wm_result.success_step}" if wm_result.success
                              else "judged FAILURE") if wm_result.judge_score is not None else "no judge"
                frames = side_by_side([f[cam] for f in sim.frames], wm_result.frames, ep.instruction,
                                      (f"simulator: {verdict}", sim.success),
                                      (f"world model ({wm_result.mode}): {wm_verdict}", wm_result.success),
                                      item.policy)
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


def _inference(world_model) -> dict[str, Any]:
    """The record field saying what ``world_model`` ran on (``WorldModel.inference``, decided where
    it was loaded), or none."""
    record = getattr(world_model, "inference", None)
    return {"wm_inference": record} if isinstance(record, dict) else {}


def _outcome(result, wall: float) -> dict[str, Any]:
    """The outcome fields of a record, from an EpisodeResult or a WorldModelResult."""
    out = {
        "outcome": "success" if result.success else "failure",
        "success": result.success,
        "success_step": result.success_step,
        "length": result.length,
        "wall_s": round(wall, 4),
        "rollout_s": round(result.rollout_s, 4),
        "steps_per_s": round(result.length / result.rollout_s, 2) if result.rollout_s > 0 else 0.0,
        "video": None,
    }
    if hasattr(result, "ret"):
        out["ret"] = round(result.ret, 6)
    if getattr(result, "metrics", None) is not None:
        out["metrics"] = result.metrics
    return out


def failed_records(items: list[WorkItem], exc: BaseException, start: float) -> list[dict[str, Any]]:
    """'error' records for every backend of each of ``items`` (an episode, or the worker running
    a chunk of them, failed)."""
    return [_error_record({"policy": item.policy, **item.episode.to_dict()}, b, exc, start)
            for item in items for b in item.backends]


def _error_record(base: dict[str, Any], backend: str, exc: BaseException, start: float) -> dict[str, Any]:
    return {**base, "backend": backend, "outcome": "error", "success": False, "success_step": None, "length": 0,
            "ret": 0.0, "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "wall_s": round(time.perf_counter() - start, 4), "steps_per_s": 0.0, "video": None}
