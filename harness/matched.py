"""One episode inside a world model, mirrored from the same episode in the simulator.

The matched evaluation runs every episode twice: in the simulator (ground truth, its own success
oracle), then in a ``WorldModelEnv`` started from the simulator's own reset frame, with the same
policy, seed and step budget. How the policy acts in the world model depends on what it reads:

- a policy that reads only pixels (BC, OpenVLA, CEM) or nothing (random, replay) acts
  closed-loop on the world model's predicted frames (``mode="closed_loop"``);
- a policy that reads the simulator's ``state`` (the scripted experts) cannot act inside a pixel
  world model, so its simulator actions are replayed open-loop (``mode="open_loop_replay"``).

Success in the world model comes from a judge (a success classifier on latents, a VLM, ...). The
same judge also scores the simulator rollout, so the judge's own error can be told apart from the
world model's. The latent divergence per world-model step is the normalised MSE between the world
model's latent and the encoding of the simulator's frame at the same control step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness import agreement
from harness.episodes import Episode
from harness.errors import HarnessError
from harness.judges.base import verdict

WM_PREFIX = "wm:"


def wm_backend(name: str) -> str:
    return f"{WM_PREFIX}{name}"


def is_wm_backend(backend: str) -> bool:
    return backend.startswith(WM_PREFIX)


@dataclass
class WorldModelResult:
    success: bool
    success_step: int | None
    length: int
    mode: str
    judge_score: float | None
    rollout_s: float = 0.0
    frames: list[np.ndarray] = field(default_factory=list)  # (S, S, 3) per control step, T+1
    latents: list[np.ndarray] = field(default_factory=list)  # (N, D) per control step, T+1
    latent_divergence: list[float] = field(default_factory=list)  # per world-model step


def default_judge(checkpoint: Path) -> str | None:
    """A world model's own judge: the success classifier trained on its latents, shipped in the
    checkpoint's ``judge/`` folder (``harness train-judge --out <checkpoint>/judge``)."""
    folder = Path(checkpoint) / "judge"
    return f"latent_classifier:path={folder}" if (folder / "config.json").exists() else None


def validate_judge(spec: str) -> None:
    """Fail before anything runs when the judge spec names no judge or a parameter it lacks."""
    from harness.judges import parse_judge_spec

    name = parse_judge_spec(spec).name  # unknown names and parameters fail here
    if name == "oracle":
        raise HarnessError("--judge oracle reads the simulator's own success flags and cannot judge a world-model "
                           "rollout: choose latent_classifier:path=DIR, vlm:path=DIR or consensus:... "
                           "(see `harness list judges`)")


def run_world_model_episode(wm_env, policy, episode: Episode, sim_observations: list[dict[str, Any]],
                            sim_actions: list[np.ndarray], *, closed_loop: bool, judge=None,
                            stop_on_success: bool = True, sim_latents: np.ndarray | None = None) -> WorldModelResult:
    """Run ``policy`` in ``wm_env`` from the simulator episode's reset frame.

    ``sim_observations``/``sim_actions``: the simulator trajectory of the same episode (T+1
    observations, T actions; ``sim_latents``: their encodings when the caller has them already).
    Closed-loop: up to ``episode.max_steps`` steps, stopping when an
    online judge (one with ``online = True``, cheap per step) says success; open-loop: the
    simulator's actions, in order."""
    start = time.perf_counter()
    camera = wm_env.camera
    context = sim_observations[0]["pixels"][camera]
    obs, info = wm_env.reset(seed=episode.seed, options={"context": context, "instruction": episode.instruction})
    policy.reset(episode.instruction, seed=episode.seed, init_state=episode.init_state)
    frames, latents = [obs["pixels"][camera]], [info["latent"]]
    online = judge is not None and getattr(judge, "online", False) and stop_on_success
    every = max(1, wm_env.wm.frameskip)
    success_step = None
    budget = episode.max_steps if closed_loop else len(sim_actions)
    shape = wm_env.action_space.shape
    for t in range(budget):
        if closed_loop:
            action = np.asarray(policy.act(obs))
            if action.shape != shape:
                raise ValueError(f"policy returned an action of shape {action.shape}; the world model expects {shape}")
            if not np.all(np.isfinite(action)):
                raise FloatingPointError(f"policy returned a non-finite action at step {t} in the world model: {action}")
        else:
            action = sim_actions[t]
        obs, _, _, _, info = wm_env.step(action)
        if not np.all(np.isfinite(info["latent"])):
            raise FloatingPointError(f"the world model predicted a non-finite latent at step {t + 1}")
        frames.append(obs["pixels"][camera])
        latents.append(info["latent"])
        if online and (t + 1) % every == 0:
            _, ok = verdict(judge, np.stack(frames), episode.instruction, np.stack(latents))
            if ok:
                success_step = t + 1
                break
    frames_arr, latents_arr = np.stack(frames), np.stack(latents)
    score, ok = None, False
    if judge is not None:
        score, ok = verdict(judge, frames_arr, episode.instruction, latents_arr)
        if ok and success_step is None:
            success_step = len(frames) - 1
    result = WorldModelResult(
        success=ok, success_step=success_step if ok else None, length=len(frames) - 1,
        mode="closed_loop" if closed_loop else "open_loop_replay", judge_score=score,
        frames=frames, latents=latents,
    )
    result.latent_divergence = latent_divergence(wm_env.wm, latents_arr, sim_observations, camera, every,
                                                 sim_latents)
    result.rollout_s = time.perf_counter() - start
    return result


def latent_divergence(world_model, wm_latents: np.ndarray, sim_observations: list[dict[str, Any]], camera: str,
                      every: int, sim_latents: np.ndarray | None = None) -> list[float]:
    """Per world-model step k (control step k * every): mean over tokens and channels of
    ((z_wm - z_sim) / latent_std)^2, where z_sim encodes the simulator's frame at that step
    (taken from ``sim_latents`` when given, else encoded here, only at those steps).
    Step 0 is the shared context frame (near 0 up to encoder noise)."""
    import torch

    steps = list(range(0, min(len(wm_latents), len(sim_observations)), every))
    if not steps:
        return []
    if sim_latents is not None:
        z_sim = np.asarray(sim_latents)[steps]
    else:
        sim_frames = np.stack([sim_observations[t]["pixels"][camera] for t in steps])
        with torch.no_grad():
            z_sim = world_model.encode(sim_frames[None])[0].numpy()  # (K, N, D)
    std = world_model.latent_std.reshape(1, 1, -1).numpy()
    mse = agreement.latent_divergence(np.asarray(wm_latents)[steps] / std, z_sim / std)["mse"]
    return [round(v, 6) for v in mse]
