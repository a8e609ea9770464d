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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.judges.base import verdict
from harness.run.episodes import Episode
from harness.stats import agreement

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


def validate_judge(spec: str, encoder_spec: dict[str, Any] | None = None,
                   load_encoder: Callable[[], Any] | None = None) -> None:
    """Fail before anything runs when the judge spec cannot judge a world-model rollout: an unknown
    name or parameter, the oracle, missing weights, a consensus without two raters, or a latent
    classifier trained on another encoder than ``encoder_spec`` (the world model's; with
    ``load_encoder``, which gives that encoder, its very weights)."""
    import inspect

    from harness.judges import JUDGES, parse_judge_spec

    parsed = parse_judge_spec(spec)  # unknown names and parameters fail here
    if parsed.name == "oracle":
        raise HarnessError("--judge oracle reads the simulator's own success flags and cannot judge a world-model "
                           "rollout: choose latent_classifier:path=DIR, vlm:path=DIR or consensus:... "
                           "(see `harness list judges`)")
    judge = JUDGES.get(parsed.name)
    check = getattr(judge, "check", None)
    if check is not None:  # options, weights found, cheap ones loaded: a broken judge fails before anything runs
        accepted = inspect.signature(check).parameters
        context = {k: v for k, v in (("encoder_spec", encoder_spec), ("load_encoder", load_encoder)) if k in accepted}
        check(**parsed.params, **context)
    for rater in getattr(judge, "rater_specs", lambda **_: [])(**parsed.params):
        validate_judge(rater, encoder_spec, load_encoder)


@dataclass
class WorldModelTask:
    """One world-model episode of a batch: the simulator episode it mirrors (T+1 observations,
    T actions; ``sim_latents``: their encodings when the caller has them) and who acts in it."""

    episode: Episode
    policy: str  # the spec; episodes of one spec and env share a batch-capable policy instance
    sim_observations: list[dict[str, Any]]
    sim_actions: list[np.ndarray]
    closed_loop: bool
    sim_latents: np.ndarray | None = None


@dataclass(eq=False)
class _Row:
    index: int  # the task's place in the batch
    task: WorldModelTask
    policy: Any
    budget: int
    frames: list[np.ndarray] = field(default_factory=list)
    latents: list[np.ndarray] = field(default_factory=list)
    success_step: int | None = None
    error: BaseException | None = None
    done: bool = False


def run_world_model_episodes(world_model, tasks: list[WorldModelTask], policy_for, *, camera: str, judge=None,
                             stop_on_success: bool = True,
                             precision: str = "float32",
                             decoder: str = "full") -> list[WorldModelResult | BaseException]:
    """The results of ``stream_world_model_episodes``, in the order of ``tasks``."""
    out: list[WorldModelResult | BaseException | None] = [None] * len(tasks)
    for i, result in stream_world_model_episodes(world_model, tasks, policy_for, camera=camera, judge=judge,
                                                 stop_on_success=stop_on_success, precision=precision,
                                                 decoder=decoder):
        out[i] = result
    return out


def stream_world_model_episodes(world_model, tasks: list[WorldModelTask], policy_for, *, camera: str, judge=None,
                                stop_on_success: bool = True, precision: str = "float32",
                                decoder: str = "full") -> Iterator[tuple[int, WorldModelResult | BaseException]]:
    """Run the world-model episodes of ``tasks`` together: one batched world-model call per
    control step for all the episodes still running, and one ``act_batch`` call per batch-capable
    policy (``policies.base.acts_in_batch``). Yields ``(index into tasks, result)`` the moment
    each episode ends, while the others go on, so a caller can save it at once.

    Each episode starts from its simulator episode's reset frame, with its own seed and its own
    noise stream, so its outcome does not depend on the batch it runs in. Closed-loop episodes
    run up to ``episode.max_steps`` steps and stop when an online judge (``online = True``) says
    success; open-loop episodes replay the simulator's actions. ``policy_for(spec, env_id, slot)``
    gives the policy instance for slot ``slot`` of a batch. A policy exception, a bad or
    non-finite action, or a non-finite prediction ends that episode only: its result is the
    exception; the others are ``WorldModelResult``s. ``precision`` bfloat16 runs the transition
    network and the pixel decoder in bf16 (``--wm-precision``); ``decoder`` "distilled" shows the
    predictions through the distilled decoder (``--wm-decoder``)."""
    from policies.base import acts_in_batch
    from world_models.env import LatentRollout
    from world_models.precision import torch_dtype

    start = time.perf_counter()
    if not tasks:
        return
    size = tasks[0].sim_observations[0]["pixels"][camera].shape[0]
    dtype = torch_dtype(precision)
    rollout = LatentRollout(world_model, size, decode_dtype=dtype, predict_dtype=dtype, decoder=decoder)
    every = max(1, world_model.frameskip)
    online = judge is not None and getattr(judge, "online", False) and stop_on_success
    shape = (world_model.env_action_dim,)

    def ended(rows: list[_Row]) -> Iterator[tuple[int, WorldModelResult | BaseException]]:
        for r in rows:
            if r.error is not None:
                yield r.index, r.error
            else:  # the batch's wall time so far, shared out: the episodes ran together
                yield r.index, _result(world_model, r, judge, camera, every, (time.perf_counter() - start) / len(tasks))

    rows: list[_Row] = []
    groups: dict[tuple[str, str], list[_Row]] = {}  # rows acted for by one batch-capable instance
    for slot, task in enumerate(tasks):
        ep = task.episode
        policy = policy_for(task.policy, ep.env_id, 0) if task.closed_loop else None
        if policy is not None and acts_in_batch(policy):
            groups.setdefault((task.policy, ep.env_id), []).append(_Row(slot, task, policy, ep.max_steps))
            rows.append(groups[(task.policy, ep.env_id)][-1])
            continue
        if policy is not None:
            policy = policy_for(task.policy, ep.env_id, slot)
        rows.append(_Row(slot, task, policy, ep.max_steps if task.closed_loop else len(task.sim_actions)))

    context = np.stack([t.sim_observations[0]["pixels"][camera] for t in tasks])[:, None]  # (B, 1, S, S, 3)
    pixels, z = rollout.reset(context, [t.episode.seed for t in tasks])
    for i, row in enumerate(rows):
        row.frames.append(pixels[i])
        row.latents.append(z[i].numpy())
        ep = row.task.episode
        try:
            if row.policy is not None and not acts_in_batch(row.policy):
                row.policy.reset(ep.instruction, seed=ep.seed, init_state=ep.init_state)
        except Exception as exc:
            row.error = exc
    for group in groups.values():
        try:
            group[0].policy.reset_batch([r.task.episode.instruction for r in group],
                                        seeds=[r.task.episode.seed for r in group],
                                        init_states=[r.task.episode.init_state for r in group])
        except Exception as exc:
            for r in group:
                r.error = exc

    active, done = _drop(rollout, groups, rows, lambda r: r.error is not None or r.budget <= 0)
    yield from ended(done)
    t = 0
    while active:
        actions: dict[int, np.ndarray] = {}
        for group in groups.values():
            members = [r for r in group if not r.done]
            if not members:
                continue
            try:
                batch = np.asarray(members[0].policy.act_batch([_obs(r, camera) for r in members]))
                if batch.ndim != 2 or batch.shape[0] != len(members):
                    raise ValueError(f"policy returned actions of shape {batch.shape} for {len(members)} episodes")
            except Exception as exc:
                for r in members:
                    r.error = exc
                continue
            for r, a in zip(members, batch):
                actions[id(r)] = a
        for r in active:
            if r.error is not None or id(r) in actions:
                continue
            try:
                actions[id(r)] = np.asarray(r.policy.act(_obs(r, camera))) if r.task.closed_loop else r.task.sim_actions[t]
            except Exception as exc:
                r.error = exc
        for r in active:
            if r.error is None:
                r.error = _check_action(actions[id(r)], shape, t)
        active, done = _drop(rollout, groups, active, lambda r: r.error is not None)
        yield from ended(done)
        if not active:
            break
        pixels, z = rollout.step(np.stack([actions[id(r)] for r in active]))
        t += 1
        for i, r in enumerate(active):
            latent = z[i].numpy()
            if not np.all(np.isfinite(latent)):
                r.error = FloatingPointError(f"the world model predicted a non-finite latent at step {t}")
                continue
            r.frames.append(pixels[i])
            r.latents.append(latent)
            if online and t % every == 0:
                _, ok = verdict(judge, np.stack(r.frames), r.task.episode.instruction, np.stack(r.latents))
                if ok:
                    r.success_step = t
                    r.done = True
            if t >= r.budget:
                r.done = True
        active, done = _drop(rollout, groups, active, lambda r: r.error is not None or r.done)
        yield from ended(done)


def _obs(row: _Row, camera: str) -> dict[str, Any]:
    return {"pixels": {camera: row.frames[-1]}}


def _check_action(action: np.ndarray, shape: tuple[int, ...], t: int) -> BaseException | None:
    from harness.run.episodes import check_action

    try:
        check_action(np.asarray(action), shape, t, "the world model")
    except (ValueError, TypeError, FloatingPointError) as exc:
        return exc
    return None


def _select(groups: dict[tuple[str, str], list[_Row]], going: list[_Row]) -> None:
    """Tell each batch-capable policy which of its episodes go on (its rows stay in the order
    of its internal streams)."""
    alive = {id(r) for r in going}
    for key, group in list(groups.items()):
        keep = [i for i, r in enumerate(group) if id(r) in alive]
        if len(keep) < len(group):
            if keep:
                group[0].policy.select_batch(keep)
            groups[key] = [group[i] for i in keep]


def _drop(rollout, groups, active: list[_Row], ends) -> tuple[list[_Row], list[_Row]]:
    """The rows of ``active`` that go on, and those that end now; the rollout and the batch
    policies follow."""
    for r in active:
        if ends(r):
            r.done = True
    going = [r for r in active if not r.done]
    if len(going) < len(active):
        if going:
            rollout.keep([i for i, r in enumerate(active) if not r.done])
        _select(groups, going)
    return going, [r for r in active if r.done]


def _result(world_model, row: _Row, judge, camera: str, every: int, rollout_s: float) -> WorldModelResult:
    task = row.task
    frames_arr, latents_arr = np.stack(row.frames), np.stack(row.latents)
    score, ok = None, False
    if judge is not None:
        score, ok = verdict(judge, frames_arr, task.episode.instruction, latents_arr)
    success_step = (row.success_step or len(row.frames) - 1) if ok else None
    result = WorldModelResult(success=ok, success_step=success_step, length=len(row.frames) - 1,
                              mode="closed_loop" if task.closed_loop else "open_loop_replay", judge_score=score,
                              frames=row.frames, latents=row.latents, rollout_s=rollout_s)
    result.latent_divergence = latent_divergence(world_model, latents_arr, task.sim_observations, camera, every,
                                                 task.sim_latents)
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
