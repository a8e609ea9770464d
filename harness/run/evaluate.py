"""Evaluation: validate everything up front, then run episodes x policies x backends into a
resumable run folder and summarise."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envs import env_meta
from harness import __version__
from harness.errors import HarnessError
from harness.run.config import DEFAULT_EPISODES, EvalConfig, parse_video_mode
from harness.run.episodes import Episode, WorkItem, build_episodes
from harness.run.executors import EXECUTORS
from harness.run.matched import wm_backend
from harness.run.provenance import run_checkpoints
from harness.run.runner import RunSettings
from harness.run.store import RESULTS, RunStore, atomic_write_json, check_writable, key_of
from harness.run.versions import git_commit, package_versions
from harness.stats.summary import summarize

if TYPE_CHECKING:
    from envs.registry import EnvOptions

log = logging.getLogger(__name__)

SIM = "sim"
SEED_RULE = "seed = int.from_bytes(sha256(f'{base_seed}|{env_id}|{init_state}')[:4], 'little') & 0x7FFFFFFF"


@dataclass
class EvalPlan:
    config: EvalConfig
    env_ids: list[str]
    env_options: dict[str, dict[str, Any]]
    episodes: list[Episode]
    out: Path
    judge: str | None = None  # the resolved judge spec (the world model's own one when not given)
    checkpoints: dict[str, str] = field(default_factory=dict)  # harness.run.provenance.run_checkpoints

    @property
    def backends(self) -> tuple[str, ...]:
        return (SIM,) + ((wm_backend(self.config.wm),) if self.config.wm else ())

    @property
    def identity(self) -> dict[str, Any]:
        """The config's identity and the fingerprints of the weights it loads: a run folder holds
        episodes of one set of weights (the default --out folder is named by the config alone)."""
        identity = self.config.identity(self.env_ids)
        return identity | {"checkpoints": self.checkpoints} if self.checkpoints else identity

    @property
    def total(self) -> int:
        """Records a complete run holds."""
        return len(self.config.policies) * len(self.backends) * len(self.episodes)


def inference_paths(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What the world models of the recorded episodes ran on (``wm_inference``: the path each
    worker process chose where it loaded the model, and why), each distinct record with the number
    of episodes it served; nothing for a run without a world model (``--wm`` or a CEM policy)."""
    seen: dict[str, list] = {}
    for r in records:
        if r.get("wm_inference"):
            seen.setdefault(json.dumps(r["wm_inference"], sort_keys=True), [r["wm_inference"], 0])[1] += 1
    return {"world_model_inference": [{**rec, "episodes": n} for rec, n in seen.values()]} if seen else {}


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_") or "x"


def default_out(config: EvalConfig, env_ids: list[str]) -> Path:
    """Same command -> same folder, so re-running it resumes."""
    digest = hashlib.sha256(json.dumps(config.identity(env_ids), sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / f"{slug(config.env)}-{digest}"


def resolve_targets(env_spec: str, policies: tuple[str, ...] | list[str], cameras: tuple[str, ...] | None,
                    image_size: int | None, max_steps: int | None, render: str | None = None
                    ) -> tuple[list[str], dict[str, EnvOptions]]:
    """Env ids and their validated options; builds every policy once per env so that bad
    parameters, missing extras and unsupported envs fail before any simulator starts."""
    from envs import expand_env_spec, resolve_env_options
    from policies import EnvInfo, make_policy, parse_policy_spec

    env_ids = expand_env_spec(env_spec)
    options = {e: resolve_env_options(e, cameras, image_size, max_steps, render) for e in env_ids}
    for text in policies:
        spec = parse_policy_spec(text)
        for env_id in env_ids:
            make_policy(spec, EnvInfo.from_env_id(env_id, cameras, image_size, render))
    return env_ids, options


def plan_eval(config: EvalConfig) -> EvalPlan:
    """All validation happens here, before any simulator starts."""
    if config.executor not in EXECUTORS:
        raise HarnessError(EXECUTORS.unknown_message(config.executor))
    check = getattr(EXECUTORS.get(config.executor), "check", None)
    if check is not None:  # e.g. more local worker processes than the machine can run
        check(config.workers)
    if len(set(config.policies)) != len(config.policies):
        raise HarnessError(f"--policy lists the same policy twice: {', '.join(config.policies)}")
    config = replace(config, render=run_render(config))
    env_ids, resolved = resolve_targets(config.env, config.policies, config.cameras, config.image_size, config.max_steps,
                                        config.render)
    if parse_video_mode(config.video)[0] != "none" and not any(o.cameras for o in resolved.values()):
        raise HarnessError(f"--video {config.video} needs a camera but --camera none renders nothing: add --video none or a --camera")
    counts = episode_counts(config, env_ids)
    judge = resolve_world_model(config, resolved) if config.wm else None
    out = Path(config.out) if config.out else default_out(config, env_ids)
    check_writable(out)
    episodes = [ep for env_id in env_ids
                for ep in build_episodes([env_id], counts[env_id], config.seed, {env_id: resolved[env_id].max_episode_steps})]
    plan = EvalPlan(config, env_ids, {e: o.as_kwargs() for e, o in resolved.items()}, episodes, out, judge,
                    run_checkpoints(config, judge))
    RunStore(out).check(plan.identity)
    return plan


def episode_counts(config: EvalConfig, env_ids: list[str]) -> dict[str, int]:
    """Episodes per env: --episodes, else the env's own default (LIBERO: its 50 fixed init states),
    else DEFAULT_EPISODES; never more than the env's fixed initial states."""
    counts = {}
    for env_id in env_ids:
        meta = env_meta(env_id)
        n = config.episodes if config.episodes is not None else meta.get("default_episodes", DEFAULT_EPISODES)
        available = meta.get("num_init_states")
        if available is not None and n > available:
            raise HarnessError(f"--episodes {n} is more than the {available} fixed initial states of {env_id}: use "
                               f"--episodes {available} or fewer")
        counts[env_id] = n
    return counts


def run_render(config: EvalConfig) -> str:
    """The run's render mode: --render, else how the --wm world model's training frames were
    rendered (its checkpoint's ``info.render``), else the default (``envs.registry.default_render``:
    faithful unless $WM_HARNESS_RENDER says otherwise)."""
    from envs.registry import default_render

    if config.render is not None:
        return config.render
    if config.wm:
        from world_models.named import check_world_model

        return check_world_model(config.wm, config.wm_checkpoint)[1]["info"].get("render") or default_render()
    return default_render()


def resolve_world_model(config: EvalConfig, resolved: dict[str, EnvOptions]) -> str | None:
    """Check the world model, its camera and the judge before anything runs; the judge spec to use."""
    from harness.run.matched import default_judge, validate_judge
    from world_models.named import check_world_model

    checkpoint, wm_config = check_world_model(config.wm, config.wm_checkpoint)  # the workers load the weights
    camera = wm_config["info"]["camera"]
    trained_on = wm_config["info"].get("render")  # how its training frames were rendered, when its data said
    if trained_on and trained_on != config.render:
        raise HarnessError(f"world model {config.wm!r} learned from frames rendered {trained_on!r}; this run renders "
                           f"{config.render!r}, so it would start every episode from a frame unlike its training "
                           f"data: add --render {trained_on}")
    for env_id, opts in resolved.items():
        if camera not in opts.cameras:
            raise HarnessError(f"world model {config.wm!r} models camera {camera!r}, which {env_id} does not render "
                               f"here (cameras: {', '.join(opts.cameras) or 'none'}): add --camera {camera}")
    if config.wm_decoder == "distilled":
        from world_models.distill import check_distilled

        check_distilled(checkpoint, config.wm)
    judge = config.judge or default_judge(checkpoint)
    if judge is None:
        raise HarnessError(f"world model {config.wm!r} has no success judge of its own ({checkpoint}/judge): pass "
                           f"--judge SPEC (see `harness list judges`), or train one with `harness train-judge`")
    load_encoder = None
    if wm_config.get("encoder_weights") == "embedded":  # trained here, small: compare its weights now
        import functools

        from world_models.named import load_world_model

        @functools.cache
        def load_encoder():  # loaded only if a judge compares weights (a latent classifier), once
            return load_world_model(config.wm, config.wm_checkpoint).encoder
    validate_judge(judge, wm_config.get("encoder"), load_encoder)
    return judge


def work_items(plan: EvalPlan, done: set) -> list[WorkItem]:
    """What is left to run: per (policy, episode), the backends without a record. A world-model
    episode needs its simulator episode, so a matched item always runs the simulator."""
    kind, first_n = parse_video_mode(plan.config.video)
    items = []
    for policy in plan.config.policies:
        for ep in plan.episodes:
            video = None
            if kind == "all" or kind == "failures" or (kind == "first" and ep.init_state < first_n):
                folder = SIM if len(plan.backends) == 1 else f"sim_vs_{slug(plan.config.wm)}"
                video = str(plan.out / "videos" / slug(policy) / folder / ep.env_id / f"init{ep.init_state:04d}.mp4")
            todo = tuple(b for b in plan.backends if (policy, b, ep.env_id, ep.init_state) not in done)
            if todo:
                items.append(WorkItem(policy, todo, ep, video, video_only_on_failure=(kind == "failures")))
    return items


class FirstErrors:
    """Holds back this invocation's first records while every one of them is the same error.

    When the first ``STOP_AFTER`` records (or all of them, in a run of 2) raised the same
    error, the cause is the setup (a broken install, a missing file), not the episodes: the run
    stops with that error instead of recording it for every episode, and saves none of those
    records, so the same command re-runs them once the cause is fixed. Any other record first,
    or a second kind of error, releases what was held and the run goes on."""

    STOP_AFTER = 3

    def __init__(self, expected: int):
        self.limit = min(self.STOP_AFTER, expected)
        # a single episode that raised is that episode's error record: nothing tells setup from episode
        self.held: list[dict[str, Any]] | None = [] if expected >= 2 else None  # None once released

    def admit(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The records to save now (in arrival order); raises HarnessError on a setup error."""
        if self.held is None:
            return [record]
        if record["outcome"] == "error" and all(r["error"] == record["error"] for r in self.held):
            self.held.append(record)
            if len(self.held) >= self.limit:
                where = f"{record['policy']} {record['backend']} {record['env_id']}#{record['init_state']}"
                raise HarnessError(f"the first {len(self.held)} episodes all raised the same error, last {where}: "
                                   f"{record['error'].splitlines()[0] if record['error'] else '?'}; none of them was "
                                   f"saved: fix the cause and re-run the same command")
            return []
        out, self.held = [*self.held, record], None
        return out


def run_eval(plan: EvalPlan, on_record: Callable[[dict[str, Any], int, int], None] | None = None,
             notify: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Run what is not yet in the run folder; returns the summary written to results.json.
    Ctrl-C (KeyboardInterrupt) stops after saving every finished episode and the summary
    (``interrupted``); episodes in flight are dropped and run again on resume. A run with nothing
    left to do says so (``notify``) and keeps what its summary measured when the episodes ran."""
    cfg = plan.config
    settings = RunSettings(cameras=cfg.cameras, image_size=cfg.image_size, stop_on_success=cfg.stop_on_success,
                           render=cfg.render,
                           video_fps=cfg.video_fps, wm=cfg.wm, wm_checkpoint=cfg.wm_checkpoint, judge=plan.judge,
                           wm_batch=cfg.wm_batch, wm_precision=cfg.wm_precision, wm_decoder=cfg.wm_decoder,
                           threads=cfg.threads)
    options = {"address": cfg.ray_address} if cfg.ray_address is not None else {}
    # first: a missing Ray or an unreachable cluster fails before the run folder is written
    executor = EXECUTORS.build(cfg.executor, settings=settings, workers=cfg.workers, **options)
    store = RunStore(plan.out)
    with store.lock():  # one writer per run folder: a second eval into it is refused, not interleaved
        store.claim(plan.identity)
        done = {key_of(r) for r in store.repair()}
        items = work_items(plan, done)
        if not items:
            notify(f"nothing left to do: all {plan.total} episodes are recorded in {plan.out}")
            return write_summary(plan, store, None, False, kept=ran_with(store.previous_summary()))
        start = time.perf_counter()
        finished = len(done)
        interrupted = False
        first_errors = FirstErrors(sum(len(item.backends) for item in items))

        def save(record: dict[str, Any]) -> None:
            nonlocal finished
            store.append(record)
            finished += 1
            if on_record:
                on_record(record, finished, plan.total)

        try:
            with closing(executor.map(items)) as records:  # closed at once on Ctrl-C: workers stop
                for record in records:
                    if record.get("video"):
                        record["video"] = str(Path(record["video"]).relative_to(plan.out))
                    for r in first_errors.admit(record):
                        save(r)
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: %d of %d episodes are saved; re-run the same command to resume", finished,
                        plan.total)
        return write_summary(plan, store, time.perf_counter() - start, interrupted)


# what a summary measured while its episodes ran: a resume that runs nothing keeps them
RAN_WITH = ("harness", "versions", "git", "wall_time_s", "world_model_inference")


def ran_with(previous: dict[str, Any] | None) -> dict[str, Any]:
    """The fields of ``previous`` (the run's last summary) that describe how its episodes ran."""
    return {k: previous[k] for k in RAN_WITH if k in previous} if previous else {}


def calvin_summary(plan: EvalPlan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """CALVIN's own numbers for chain runs (average successful length, 1..5 in a row) per policy
    and backend, and the calvin_env commit the run used. A chain that raised completed none of
    its subtasks (an error is a failure, as in every success rate)."""
    from envs.calvin import calvin_env_commit
    from envs.calvin_sequences import chain_metrics, eval_sequences

    chains: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["env_id"] != "calvin/chains":
            continue
        if r["outcome"] == "error":
            metrics = {"completed_subtasks": 0, "subtasks": list(eval_sequences()[r["init_state"]][1])}
        elif r.get("metrics"):
            metrics = r["metrics"]
        else:
            continue
        chains.setdefault(r["policy"], {}).setdefault(r["backend"], []).append(metrics)
    out: dict[str, Any] = {"calvin_env_commit": calvin_env_commit()}
    if chains:
        out["calvin_chains"] = {
            policy: {backend: chain_metrics([m["completed_subtasks"] for m in ms],
                                            [tuple(m["subtasks"]) for m in ms] if all("subtasks" in m for m in ms) else None)
                     for backend, ms in backends.items()}
            for policy, backends in chains.items()}
    return out


def write_summary(plan: EvalPlan, store: RunStore, wall: float | None, interrupted: bool,
                  kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summarise the run folder's records into results.json. ``wall``: this invocation's time, None
    when unknown; ``kept``: fields of an earlier summary that stand for this one (``ran_with``)."""
    records = store.load()
    steps = sum(r["length"] for r in records)
    episode_time = sum(r.get("wall_s", 0.0) for r in records)
    rollout_time = sum(r.get("rollout_s", 0.0) for r in records)
    summary = {
        "harness": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": len(records) >= plan.total,
        "interrupted": interrupted,
        "episodes_expected": plan.total,
        "episodes_recorded": len(records),
        "config": plan.config.to_dict() | {"out": str(plan.out)},
        "env_ids": plan.env_ids,
        "env_options": {k: {**v, "cameras": list(v["cameras"])} for k, v in plan.env_options.items()},
        "seeds": {"base_seed": plan.config.seed, "rule": SEED_RULE,
                  "init_states": {e: f"0..{n - 1}" for e, n in Counter(ep.env_id for ep in plan.episodes).items()}},
        "versions": package_versions(),
        "git": git_commit(),
        "checkpoints": plan.checkpoints,
        **inference_paths(records),
        "wall_time_s": None if wall is None else round(wall, 3),
        "episode_time_s": round(episode_time, 3),
        "steps": steps,
        "steps_per_s": round(steps / rollout_time, 2) if rollout_time > 0 else None,  # as in each block
        "results": summarize(records),
    }
    summary.update(kept or {})
    families = {env_meta(e)["family"] for e in plan.env_ids}
    if "calvin" in families:
        summary.update(calvin_summary(plan, records))
    if plan.config.wm:
        from harness.stats.comparison import compare_backends

        summary["judge"] = plan.judge
        summary["comparison"] = compare_backends(records)
    atomic_write_json(plan.out / RESULTS, summary)
    return summary
