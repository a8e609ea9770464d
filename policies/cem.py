"""The cross-entropy method over a world model: goal-conditioned MPC in latent space.

``cem_plan`` is the algorithm and nothing else (sample action sequences from a Gaussian, score
all of them in ONE batched world-model call per iteration, keep the elites, refit). It returns
the plan and a diagnostics dict; it does not log, evaluate or own an environment.

Units: a world model with ``frameskip`` f predicts one frame per f control steps from the f
actions between, so a plan is ``horizon`` world-model steps of ``f * A`` numbers each, and
executing ``execute`` of them means ``execute * f`` control steps.

Presets (``CEM_PRESETS``); docs/cem.md tables each one against the upstream lines it follows:
- ``dino_wm``: DINO-WM's MPC-CEM planner, gaoyuezhou/dino_wm at commit 0a9492fa12044b852ae9e001cc74604b79c8bb0c,
  ``planning/cem.py`` (``CEMPlanner.plan``), ``planning/mpc.py``, ``planning/objectives.py``
  (``create_objective_fn``) with ``conf/planner/mpc_cem.yaml`` and ``conf/plan.yaml``: 300
  samples, top 30, 30 iterations, horizon 5, execute all 5 (then the rest of the plan, none
  here, warm-starts the next), std 1; samples are not clipped, candidate 0 is the mean, the
  elites' mean and std (ddof 1) replace the Gaussian with no momentum and no floor; L2 on the last
  frame plus the proprio term with weight 1 (``alpha``); ``goal_frames=all`` weights frame i of
  the start frame and the K predicted ones by 2**i (``base``).
- ``vjepa2_ac``: V-JEPA 2-AC's planner, facebookresearch/vjepa2 at commit
  c2963a47433ecca0ad4f06ec28bcfa8cb5b5cefb, ``notebooks/utils/world_model_wrapper.py``
  (``WorldModel.mpc_args``) and ``notebooks/utils/mpc_utils.py`` (``cem``): rollout 2, 400
  samples, top 10, 10 iterations, momentum 0.15 on mean and std, std ddof 1, no floor, L1 on the
  last frame, replanning every step from a zero mean; ``layout="droid"``: xyz sampled with std
  ``maxnorm`` (0.05) and clipped to it, rotation fixed at 0, gripper sampled with std 1 and
  clipped to +-0.75, the returned gripper zeroed below 0.25. DROID's action is 7-D (xyz,
  rotation 3, gripper); a 4-D env action (Meta-World) is read as xyz + gripper; other sizes are
  refused (``check_layout``).
- ``cpu``: a small budget that keeps closed-loop evaluation interactive on a 2-core CPU with the
  embedded tiny world models — 64 samples, top 8, 4 iterations, horizon 2, execute 1, and
  ``hold``: one action per world-model step held for its frameskip control steps, so the search
  is over horizon x A numbers instead of horizon x frameskip x A. With the embedded frameskip-4
  model, independent per-control-step samples average to a timid motion per world-model step
  (std 0.5 for init_std 1), and the model under-predicts motion besides (docs/cem.md);
  on Meta-World reach this took CEM from 2/20 to 11/20 successes (random 0/20).

``pick="best"`` returns the lowest-cost candidate seen instead of the final elite mean.

``proprio=W`` (> 0) adds the proprio term of DINO-WM's objective: W times the distance between
the robot's proprioception read from each predicted latent (``world_models.proprio``, fitted by
``harness fit-proprio``) and the goal's, in units of its spread over the data, weighted over
frames as the latent term is. The goal's proprioception is the true state where the goal source
has it (the expert's goal state, a dataset episode's final state), else read from the goal latent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from world_models.precision import check_precision, torch_dtype

PICKS = ("mean", "best")
LAYOUTS = ("free", "droid")
# layout "droid": the env action sizes it can read, and the groups of one action's dimensions
DROID_GROUPS = {7: {"xyz": slice(0, 3), "rotation": slice(3, 6), "gripper": 6},  # DROID, LIBERO, CALVIN
                4: {"xyz": slice(0, 3), "rotation": slice(0, 0), "gripper": 3}}  # Meta-World: no rotation


@dataclass(frozen=True)
class CEMConfig:
    samples: int = 300
    elites: int = 30
    iterations: int = 30
    horizon: int = 5  # world-model steps planned
    execute: int = 5  # world-model steps executed before replanning
    init_std: float = 1.0  # (layout droid: the gripper's; xyz start at maxnorm)
    min_std: float = 0.05  # floor of the refitted std
    std_ddof: int = 0  # the elites' std: 0 divides by elites, 1 by elites - 1 (torch.std)
    momentum: float = 0.0  # mean <- momentum * old mean + (1 - momentum) * elite mean
    momentum_std: float = 0.0  # std <- momentum_std * old std + (1 - momentum_std) * elite std
    keep_mean: bool = True  # candidate 0 of every iteration is the current mean
    clip: bool = True  # clip the candidates to the action space before scoring them (the plan always is)
    objective: str = "l2"  # l1 | l2 distance between predicted and goal latents (normalised)
    goal_frames: str = "last"  # last | all (all predicted frames, later ones weighted more)
    frame_base: float | None = None  # goal_frames=all: None weighs frame k by k; b: DINO-WM's b**k (goal_cost)
    layout: str = "free"  # free | droid: V-JEPA 2's xyz max-norm, rotation fixed at 0, gripper clip
    maxnorm: float = 0.05  # layout droid: the xyz bound and initial std
    gripper_clip: float = 0.75  # layout droid: the bound of the sampled gripper
    gripper_deadband: float = 0.25  # layout droid: the planned gripper is 0 where |g| is below this
    warm_start: bool = True  # CEMPolicy starts a plan from the unexecuted rest of the previous one
    sampler_steps: int | None = 2  # flow-matching steps while planning (None: the world model's own)
    temperature: float = 0.0  # noise scale of the sampler while planning (one draw shared by all candidates)
    max_batch: int = 4096  # candidates per world-model call, only to bound memory
    precision: str = "float32"  # float32 | bfloat16: the world model's network while planning
    hold: bool = False  # one action per world-model step, held for its frameskip control steps
    pick: str = "mean"  # mean | best: return the final elite mean or the best candidate seen
    proprio: float = 0.0  # weight of the proprioception term (0: latent cost only)
    seed: int = 0

    def __post_init__(self):
        for name in ("samples", "elites", "iterations", "horizon", "execute", "max_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HarnessError(f"CEM {name}={v!r} must be an integer >= 1")
        if self.elites > self.samples:
            raise HarnessError(f"CEM elites={self.elites} must not exceed samples={self.samples}")
        if self.execute > self.horizon:
            raise HarnessError(f"CEM execute={self.execute} must not exceed horizon={self.horizon}")
        if self.objective not in ("l1", "l2"):
            raise HarnessError(f"CEM objective={self.objective!r}: use l1 or l2")
        if self.goal_frames not in ("last", "all"):
            raise HarnessError(f"CEM goal_frames={self.goal_frames!r}: use last or all")
        if self.layout not in LAYOUTS:
            raise HarnessError(f"CEM layout={self.layout!r}: use {' or '.join(LAYOUTS)}")
        if self.std_ddof not in (0, 1) or isinstance(self.std_ddof, bool):
            raise HarnessError(f"CEM std_ddof={self.std_ddof!r} must be 0 or 1")
        if self.elites <= self.std_ddof:
            raise HarnessError(f"CEM elites={self.elites} must exceed std_ddof={self.std_ddof} (the elites' std)")
        _check_number("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_number("momentum_std", self.momentum_std, 0.0, 1.0, high_open=True)
        check_precision(self.precision, "CEM precision")
        if self.pick not in PICKS:
            raise HarnessError(f"CEM pick={self.pick!r}: use {' or '.join(PICKS)}")
        for name in ("hold", "keep_mean", "clip", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise HarnessError(f"CEM {name}={getattr(self, name)!r} must be true or false")
        _check_number("temperature", self.temperature, 0.0, 10.0)
        _check_number("init_std", self.init_std, 0.0, math.inf, low_open=True)
        _check_number("min_std", self.min_std, 0.0, math.inf)
        _check_number("maxnorm", self.maxnorm, 0.0, math.inf, low_open=True)
        _check_number("gripper_clip", self.gripper_clip, 0.0, math.inf, low_open=True)
        _check_number("gripper_deadband", self.gripper_deadband, 0.0, math.inf)
        if self.frame_base is not None:
            _check_number("frame_base", self.frame_base, 0.0, 100.0, low_open=True, note=" (or left out: weights 1..K)")
        _check_number("proprio", self.proprio, 0.0, 100.0, note=" (0: no proprio term)")
        s = self.sampler_steps
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 1000):
            raise HarnessError(f"CEM sampler_steps={s!r} must be an integer in [1, 1000] (or left out: the world "
                               "model's own)")


def _check_number(name: str, v: Any, lo: float, hi: float, low_open: bool = False, high_open: bool = False,
                  note: str = "") -> None:
    ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
          and (lo < v if low_open else lo <= v) and (v < hi if high_open else v <= hi))
    if not ok:
        if hi == math.inf:
            where = f"> {lo:g}" if low_open else f">= {lo:g}"
        else:
            where = f"in {'(' if low_open else '['}{lo:g}, {hi:g}{')' if high_open else ']'}"
        raise HarnessError(f"CEM {name}={v!r} must be a number {where}{note}")


def check_layout(config: CEMConfig, action_dim: int, where: str) -> None:
    """One line refusing an env action size that ``config.layout`` cannot read."""
    if config.layout == "droid" and action_dim not in DROID_GROUPS:
        raise HarnessError(f"CEM layout=droid (V-JEPA 2's planner, preset vjepa2_ac) reads 7-D actions (xyz, "
                           f"rotation 3, gripper) or 4-D (xyz, gripper); {where} has {action_dim}-D actions: use "
                           f"layout=free, or preset=cpu or preset=dino_wm")


CEM_PRESETS: dict[str, CEMConfig] = {
    # gaoyuezhou/dino_wm@0a9492fa12044b852ae9e001cc74604b79c8bb0c: conf/planner/mpc_cem.yaml (n_taken_actions 5,
    # horizon 5, topk 30, num_samples 300, var_scale 1, opt_steps 30), planning/cem.py (unclipped samples,
    # action[0] = mu, mu and sigma = the top-k's mean and torch.std), conf/plan.yaml (alpha 1, base 2, mode last)
    "dino_wm": CEMConfig(samples=300, elites=30, iterations=30, horizon=5, execute=5, init_std=1.0, min_std=0.0,
                         std_ddof=1, clip=False, objective="l2", goal_frames="last", frame_base=2.0, proprio=1.0),
    # facebookresearch/vjepa2@c2963a47433ecca0ad4f06ec28bcfa8cb5b5cefb: notebooks/utils/world_model_wrapper.py
    # (mpc_args: rollout 2, samples 400, topk 10, cem_steps 10, momentum_mean 0.15, momentum_std 0.15,
    # maxnorm 0.05) and notebooks/utils/mpc_utils.py (cem: the gripper momenta default to 0.15 too)
    "vjepa2_ac": CEMConfig(samples=400, elites=10, iterations=10, horizon=2, execute=1, init_std=1.0, min_std=0.0,
                           std_ddof=1, momentum=0.15, momentum_std=0.15, keep_mean=False, objective="l1",
                           goal_frames="last", layout="droid", maxnorm=0.05, gripper_clip=0.75,
                           gripper_deadband=0.25, warm_start=False),
    "cpu": CEMConfig(samples=64, elites=8, iterations=4, horizon=2, execute=1, hold=True),
}


def frame_costs(z_pred, z_goal, objective: str, proprio_diff=None, proprio_weight: float = 0.0):
    """Cost per candidate and frame: z_pred (S, K, N, D) normalised, z_goal (N, D) normalised ->
    (S, K). ``proprio_diff`` (S, K, P): predicted minus goal proprioception in units of its
    spread, added to each frame's cost with ``proprio_weight``."""
    diff = z_pred - z_goal[None, None]
    per_frame = diff.abs().mean(dim=(2, 3)) if objective == "l1" else diff.pow(2).mean(dim=(2, 3))  # (S, K)
    if proprio_diff is not None and proprio_weight > 0:
        p = proprio_diff.abs().mean(dim=2) if objective == "l1" else proprio_diff.pow(2).mean(dim=2)
        per_frame = per_frame + proprio_weight * p
    return per_frame


def goal_cost(z_pred, z_goal, objective: str, goal_frames: str, proprio_diff=None, proprio_weight: float = 0.0,
              frame_base: float | None = None, start_cost=None):
    """Cost per candidate: z_pred (S, K, N, D) normalised, z_goal (N, D) normalised -> (S,);
    ``proprio_diff`` and ``proprio_weight`` as in ``frame_costs``.

    ``goal_frames="last"``: the last frame's cost. ``"all"`` with ``frame_base=None``: the mean
    over the K predicted frames weighted 1..K. With ``frame_base=b``, DINO-WM's
    ``objective_fn_all`` (planning/objectives.py): its rollout holds the start frame and the K
    predicted ones, frame i (0: the start) weighs b**i / sum_j b**j, and the weighted costs are
    averaged over the K + 1 frames. ``start_cost`` (1,) is the start frame's cost, the same for
    every candidate (0 if left out: the ranking does not depend on it).
    """
    import torch

    per_frame = frame_costs(z_pred, z_goal, objective, proprio_diff, proprio_weight)  # (S, K)
    if goal_frames == "last":
        return per_frame[:, -1]
    S, K = per_frame.shape
    if frame_base is None:
        w = per_frame.new_tensor(np.arange(1, K + 1, dtype=np.float32))
        return (per_frame * w).sum(dim=1) / w.sum()
    coeffs = np.array([frame_base ** i for i in range(K + 1)], dtype=np.float32)
    w = per_frame.new_tensor(coeffs / np.sum(coeffs))
    start = per_frame.new_zeros(S, 1) if start_cost is None else start_cost.reshape(1, 1).expand(S, 1)
    return (torch.cat([start, per_frame], dim=1) * w).mean(dim=1)


def _initial_std(config: CEMConfig, K: int, Ad: int, E: int) -> np.ndarray:
    """(K, Ad): ``init_std`` everywhere, or with layout droid per env action of E dimensions:
    xyz ``maxnorm``, rotation 0 (it is never sampled), gripper ``init_std``."""
    std = np.full((K, Ad), float(config.init_std), np.float32)
    if config.layout == "droid":
        g, per_action = DROID_GROUPS[E], std.reshape(K, Ad // E, E)
        per_action[..., g["xyz"]] = config.maxnorm
        per_action[..., g["rotation"]] = 0.0
    return std


def _constrain(a: np.ndarray, config: CEMConfig, E: int, low: float, high: float) -> np.ndarray:
    """Candidates (..., Ad) as they are scored: clipped to the action space (``clip``), and with
    layout droid per env action (mpc_utils.py ``sample_action_traj``): xyz clipped to
    +-``maxnorm``, rotation 0, gripper clipped to +-``gripper_clip``."""
    if config.clip:
        a = np.clip(a, low, high)
    if config.layout == "droid":
        a = np.array(a)  # a copy: the caller's array stays as it was
        g, per_action = DROID_GROUPS[E], a.reshape(*a.shape[:-1], -1, E)  # a view: edits reach a
        per_action[..., g["xyz"]] = np.clip(per_action[..., g["xyz"]], -config.maxnorm, config.maxnorm)
        per_action[..., g["rotation"]] = 0.0
        per_action[..., g["gripper"]] = np.clip(per_action[..., g["gripper"]], -config.gripper_clip,
                                                config.gripper_clip)
    return a


def _finish(plan: np.ndarray, config: CEMConfig, E: int, low: float, high: float) -> np.ndarray:
    """The returned plan (K, f*A): in the action space, and with layout droid constrained as the
    candidates are, its gripper zeroed where |g| < ``gripper_deadband`` (mpc_utils.py
    ``round_small_elements``)."""
    plan = np.clip(plan, low, high)
    if config.layout == "droid":
        plan = _constrain(plan, config, E, low, high)
        grip = plan.reshape(plan.shape[0], -1, E)[..., DROID_GROUPS[E]["gripper"]]
        grip[np.abs(grip) < config.gripper_deadband] = 0.0
    return plan


def cem_plan(world_model, context, goal, config: CEMConfig, init_mean: np.ndarray | None = None,
             low: float = -1.0, high: float = 1.0, predict=None,
             goal_proprio=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Plan ``config.horizon`` world-model steps from ``context`` toward ``goal``.

    context: raw latents (1, T, N, D) (the last ``history`` frames are used); goal: raw latent
    (N, D). ``goal_proprio``: (P,) the goal's proprioception for ``config.proprio`` (default: read
    from the goal latent). ``init_mean``: (horizon, f*A) warm start (the previous plan shifted). ``predict``:
    the batched call, ``world_model.predict`` by default (tests count its calls). Returns the
    mean of the final distribution clipped to [low, high] (or, with ``pick="best"``, the
    lowest-cost candidate seen), shape (horizon, f*A) (with ``hold``, each step's env action
    repeated f times), and diagnostics: cost of the best candidate and elite mean per
    iteration, elite spread, calls, and the final ``mean`` and ``std``.

    Per iteration: candidates = mean + std * N(0, 1), constrained (``clip``, ``layout``), the
    first replaced by the mean (``keep_mean``); the ``elites`` cheapest refit the Gaussian:
    mean <- momentum * mean + (1 - momentum) * their mean, std <- max(momentum_std * std +
    (1 - momentum_std) * their std (ddof ``std_ddof``), min_std).
    """
    import torch

    predict = predict or world_model.predict
    S, E, K = config.samples, config.elites, config.horizon
    A, f = world_model.action_dim, world_model.frameskip
    Ea = world_model.env_action_dim
    name = getattr(world_model, "info", {}).get("name")
    check_layout(config, Ea, f"world model {name}" if name else "the world model")
    # the sampled dimensions per world-model step: all f*A, or one env action held for f steps
    Ad = A // f if config.hold else A
    ctx = context[:, -world_model.history:]
    goal_n = world_model.normalize(torch.as_tensor(goal, dtype=torch.float32))
    readout = None
    if config.proprio > 0:
        try:
            readout = world_model.proprio_readout()
        except HarnessError as e:
            raise HarnessError(f"{e} Or plan without the proprio term: proprio=0.") from None
    if readout is not None:
        if goal_proprio is not None and np.asarray(goal_proprio).size < readout.dims:
            raise HarnessError(f"cem proprio: the goal state has {np.asarray(goal_proprio).size} numbers; the "
                               f"readout needs its first {readout.dims} (the robot's proprioception)")
        goal_p = (readout(torch.as_tensor(goal, dtype=torch.float32)) if goal_proprio is None
                  else torch.as_tensor(np.asarray(goal_proprio, np.float32).reshape(-1)[:readout.dims]))
    start_cost = None
    if config.goal_frames == "all" and config.frame_base is not None:  # DINO-WM weighs the start frame too
        z0 = ctx[:, -1:].float()  # (1, 1, N, D)
        p0 = None if readout is None else (readout(z0) - goal_p) / readout.target_std
        start_cost = frame_costs(world_model.normalize(z0), goal_n, config.objective, p0, float(config.proprio))[0]
    if init_mean is None:
        mean = np.zeros((K, Ad), np.float32)
    else:
        mean = np.asarray(init_mean, np.float32).reshape(K, A)
        if config.hold:  # a warm start of f*A per step: its average env action
            mean = mean.reshape(K, f, Ad).mean(axis=1)
    std = _initial_std(config, K, Ad, Ea)
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator()
    dtype = torch_dtype(config.precision)
    low_precision = {} if dtype is None else {"dtype": dtype}
    diag: dict[str, Any] = {"best_cost": [], "elite_cost": [], "elite_std": [], "calls": 0}
    best, best_cost = None, np.inf
    for it in range(config.iterations):
        cand = _constrain(mean[None] + std[None] * rng.standard_normal((S, K, Ad)).astype(np.float32), config, Ea,
                          low, high)
        if config.keep_mean:
            cand[0] = _constrain(mean, config, Ea, low, high)  # keep the current mean in the pool
        full = np.tile(cand, (1, 1, f)) if config.hold else cand  # (S, K, f*A): held f times
        costs = []
        for s0 in range(0, S, config.max_batch):  # chunked only to bound memory
            part = torch.as_tensor(full[s0:s0 + config.max_batch])
            gen.manual_seed(config.seed * 1000 + it)  # common random numbers: candidates differ only by actions
            z = predict(ctx, part, generator=gen,  # one context (batch 1) shared by all candidates
                        steps=config.sampler_steps, temperature=float(config.temperature), **low_precision)
            diag["calls"] += 1
            p_diff = None if readout is None else (readout(z) - goal_p) / readout.target_std  # (s, K, P)
            costs.append(goal_cost(world_model.normalize(z), goal_n, config.objective, config.goal_frames,
                                   p_diff, float(config.proprio), config.frame_base, start_cost))
        cost = torch.cat(costs).numpy()
        elite_idx = np.argsort(cost, kind="stable")[:E]
        elites = cand[elite_idx]
        if cost[elite_idx[0]] < best_cost:
            best, best_cost = full[elite_idx[0]].copy(), float(cost[elite_idx[0]])
        new_mean = elites.mean(axis=0)
        mean = config.momentum * mean + (1 - config.momentum) * new_mean
        new_std = elites.std(axis=0, ddof=config.std_ddof)
        std = np.maximum(config.momentum_std * std + (1 - config.momentum_std) * new_std, config.min_std)
        diag["best_cost"].append(float(cost[elite_idx[0]]))
        diag["elite_cost"].append(float(cost[elite_idx].mean()))
        diag["elite_std"].append(float(std.mean()))
    diag["mean"], diag["std"] = mean.copy(), std.copy()  # the final Gaussian (K, sampled dims)
    if config.pick == "best":
        return _finish(best, config, Ea, low, high), diag
    return _finish(np.tile(mean, (1, f)) if config.hold else mean, config, Ea, low, high), diag


class CEMPolicy:
    """MPC with ``cem_plan`` over a world model, from pixels: in the simulator (plan in the world
    model, act in the simulator) and inside a WorldModelEnv alike.

    Spec: ``cem:wm=NAME[,checkpoint=DIR][,preset=cpu|dino_wm|vjepa2_ac][,goal=expert|data]
    [,goal_data=D.h5][,samples=..,elites=..,iterations=..,horizon=..,execute=..,objective=..]
    [,precision=float32|bfloat16][,hold=true|false][,pick=mean|best][,temperature=T][,proprio=W]
    [,layout=free|droid][,maxnorm=M][,frame_base=B]``.

    The goal image: ``goal=expert`` runs the task's scripted expert in a private simulator from
    the same init state until success and takes that frame (a goal state reached in the
    simulator; Meta-World only); ``goal=data`` takes the final frame of the dataset episode with
    the same env and init state from ``goal_data``. Both also give the goal's true state, whose
    proprioceptive part the ``proprio=W`` term aims for.
    """

    observes = frozenset({"pixels"})

    def __init__(self, env_info, wm: str = "", checkpoint: str | None = None, preset: str = "cpu",
                 goal: str = "expert", goal_data: str | None = None, samples: int | None = None,
                 elites: int | None = None, iterations: int | None = None, horizon: int | None = None,
                 execute: int | None = None, objective: str | None = None, init_std: float | None = None,
                 momentum: float | None = None, goal_frames: str | None = None, sampler_steps: int | None = None,
                 precision: str | None = None, hold: bool | None = None, pick: str | None = None,
                 temperature: float | None = None, proprio: float | None = None, layout: str | None = None,
                 maxnorm: float | None = None, frame_base: float | None = None):
        goal_data = None if goal_data is None else str(goal_data)  # YAML may read a bare name as a number
        if not wm:
            raise HarnessError("the cem policy needs a world model: cem:wm=NAME (see `harness list world-models`)")
        if preset not in CEM_PRESETS:
            raise HarnessError(f"cem preset {preset!r} is unknown; available: {', '.join(CEM_PRESETS)}")
        if goal not in ("expert", "data"):
            raise HarnessError(f"cem goal={goal!r}: use goal=expert (scripted expert in the simulator) or goal=data")
        if goal == "data" and not goal_data:
            raise HarnessError("cem goal=data needs goal_data=PATH.h5 (a dataset from `harness collect`)")
        if goal == "expert" and env_info.family != "metaworld":
            raise HarnessError(f"cem goal=expert needs a scripted expert (Meta-World); {env_info.env_id} has none: "
                               f"use goal=data,goal_data=PATH.h5")
        overrides = {k: v for k, v in dict(samples=samples, elites=elites, iterations=iterations, horizon=horizon,
                                           execute=execute, objective=objective, init_std=init_std,
                                           momentum=momentum, goal_frames=goal_frames,
                                           sampler_steps=sampler_steps, precision=precision, hold=hold,
                                           pick=pick, temperature=temperature, proprio=proprio, layout=layout,
                                           maxnorm=maxnorm, frame_base=frame_base).items()
                     if v is not None}
        self.config = replace(CEM_PRESETS[preset], **overrides)
        check_layout(self.config, env_info.action_space.shape[0], env_info.env_id)
        from world_models.named import check_world_model

        folder, wm_config = check_world_model(wm, checkpoint, flag="cem:...,checkpoint=DIR")  # before any simulator starts
        camera = wm_config["info"]["camera"]
        if camera not in env_info.cameras:
            raise HarnessError(f"cem: world model {wm!r} sees camera {camera!r}, which this run does not render "
                               f"({', '.join(env_info.cameras) or 'none'}): add --camera {camera}")
        if goal_data is not None and not Path(goal_data).is_file():
            raise HarnessError(f"cem goal_data={goal_data}: no such file; pass a dataset from `harness collect`")
        if self.config.proprio > 0:
            from world_models.proprio import check_readout

            try:
                check_readout(folder, wm, env_info.family)
            except HarnessError as e:
                if proprio is not None:
                    raise
                raise HarnessError(f"{e} Or plan without it: cem:...,proprio=0 (preset {preset} weighs it "
                                   f"{self.config.proprio:g}).") from None
        self.env_info, self.wm_name, self.checkpoint = env_info, wm, checkpoint
        self.goal, self.goal_data = goal, goal_data
        self._wm = None
        self._goals: dict[int, Any] = {}
        self._goal_proprio: dict[int, np.ndarray | None] = {}
        self.last_diagnostics: dict[str, Any] = {}

    # lazily: a policy is built once at validation time, where nothing heavy may load
    @property
    def world_model(self):
        if self._wm is None:
            from world_models import load_world_model

            self._wm = load_world_model(self.wm_name, self.checkpoint)
            self._wm.eval()  # its camera was checked at construction, from the same config
            if self._wm.env_action_dim != self.env_info.action_space.shape[0]:
                raise HarnessError(f"cem: world model {self.wm_name!r} takes {self._wm.env_action_dim}-D actions; "
                                   f"{self.env_info.env_id} has {self.env_info.action_space.shape[0]}-D")
            if self.config.proprio > 0:
                self._wm.proprio_readout()  # checked at construction; its fingerprint is checked here
        return self._wm

    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        import torch

        wm = self.world_model
        self._init_state = init_state
        self._seed = 0 if seed is None else int(seed)
        if init_state not in self._goals:
            frame, state = self._goal(init_state)
            with torch.no_grad():
                self._goals[init_state] = wm.encode(frame[None, None])[0, 0]
            self._goal_proprio[init_state] = state
        self._frames: list[np.ndarray] = []  # one observed frame per world-model step
        self._queue: list[np.ndarray] = []
        self._plan: np.ndarray | None = None
        self._t = 0
        self._replans = 0

    def _goal(self, init_state: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The goal frame and, when the source has it, the goal's true state."""
        camera = self.world_model.info["camera"]
        if self.goal == "data":
            from harness.data.dataset import list_demos, read_demo

            for name, attrs in list_demos(self.goal_data):
                if attrs.get("env_id") == self.env_info.env_id and attrs.get("init_state") == init_state:
                    demo = read_demo(self.goal_data, name)
                    states = [demo.obs.get("state"), demo.final_obs.get("state")]
                    state = next((s[-1] for s in reversed(states) if s is not None and len(s)), None)
                    return demo.frames(camera)[-1], state
            raise HarnessError(f"cem goal_data {self.goal_data!r} has no episode of {self.env_info.env_id} with "
                               f"init_state {init_state}: collect one with `harness collect`")
        return expert_goal(self.env_info, camera, self.env_info.image_size, init_state)

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        import torch

        wm = self.world_model
        f, A = wm.frameskip, wm.env_action_dim
        if self._t % f == 0:
            self._frames.append(observation["pixels"][wm.info["camera"]])
            self._frames = self._frames[-wm.history:]
        if not self._queue:
            cfg = self.config
            with torch.no_grad():
                ctx = wm.encode(np.stack(self._frames)[None])
            warm = None
            if self._plan is not None and cfg.warm_start:  # shift the previous plan: warm start
                warm = np.concatenate([self._plan[cfg.execute:], np.zeros((cfg.execute, f * A), np.float32)])
            plan, diag = cem_plan(wm, ctx, self._goals[self._init_state],
                                  replace(cfg, seed=(self._seed + self._replans) % (1 << 31)), init_mean=warm,
                                  goal_proprio=self._goal_proprio.get(self._init_state))
            self._plan, self.last_diagnostics = plan, diag
            self._replans += 1
            self._queue = list(plan[:cfg.execute].reshape(cfg.execute * f, A))
        self._t += 1
        return np.asarray(self._queue.pop(0), np.float32)


_EXPERT_GOALS: dict[tuple[str, str, int, int | None], tuple[np.ndarray, np.ndarray]] = {}


def expert_goal(env_info, camera: str, image_size: int, init_state: int | None,
                max_steps: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """The camera frame and the state at which the task's scripted expert first succeeds from
    ``init_state`` (cached per process), rendered as the run renders (``env_info.render``). Raises
    when the expert does not succeed within ``max_steps``."""
    render = getattr(env_info, "render", "faithful")
    key = (env_info.env_id, camera, image_size, init_state, render)
    if key in _EXPERT_GOALS:
        return _EXPERT_GOALS[key]
    from envs import make_env
    from policies.scripted import ScriptedPolicy

    env = make_env(env_info.env_id, cameras=(camera,), image_size=image_size, render=render)
    try:
        expert = ScriptedPolicy(env_info)
        obs, _ = env.reset(options={"init_state": init_state})
        for _ in range(max_steps):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if info.get("success"):
                _EXPERT_GOALS[key] = (obs["pixels"][camera].copy(), np.asarray(obs["state"], np.float32).copy())
                return _EXPERT_GOALS[key]
            if terminated or truncated:
                break
    finally:
        env.close()
    raise HarnessError(f"cem goal=expert: the scripted expert did not reach the goal of {env_info.env_id} from "
                       f"init state {init_state}; use goal=data,goal_data=PATH.h5")
