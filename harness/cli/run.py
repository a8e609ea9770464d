"""Commands that run and show evaluations: `list`, `eval`, `collect`, `report`."""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError

from .app import _progress, app

LISTABLE = {
    "envs": "envs:ENVS",
    "sets": "envs:ENV_SETS",
    "policies": "policies:POLICIES",
    "world-models": "world_models:WORLD_MODELS",
    "judges": "harness.judges:JUDGES",
    "executors": "harness.run.executors:EXECUTORS",
}
LIST_KINDS = tuple(LISTABLE)
RENDER_HELP = ("faithful (default): the simulator's own renderer and settings, as its benchmark renders; "
               "fast: the same scene without shadows, reflections and MSAA")


def _registry(kind: str):
    import importlib

    module, attr = LISTABLE[kind].split(":")
    return getattr(importlib.import_module(module), attr)


@app.command("list")
def list_cmd(kind: Annotated[str | None, typer.Argument(help=f"one of {', '.join(LIST_KINDS)}; all when left out")] = None):
    """List registered envs (with their instructions), env sets, policies, world models."""
    kinds = LIST_KINDS if kind is None else (kind,)
    for k in kinds:
        if k not in LIST_KINDS:
            raise HarnessError(f"cannot list {k!r}: choose one of {', '.join(LIST_KINDS)}")
        reg = _registry(k)
        typer.echo(f"{k} ({len(reg)}):")
        for name in reg.names():
            entry = reg.entry(name)
            desc = entry.description
            if k == "sets":
                desc = f"{desc} [{len(entry.target)} envs]"
            typer.echo(f"  {name:<42} {desc}")
        if not len(reg):
            typer.echo("  (none yet)")


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM: a run stops as on Ctrl-C; the exit status is 128 + the signal's number
    (130, 143), as a shell reports a process ended by it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


@contextmanager
def _stop_on_signals():
    """Within: SIGINT and SIGTERM raise ``Stopped`` in the main thread, once; a second signal
    while the run stops is ignored, so that writing the summary is not cut short (stopping takes
    seconds). Yields the list that receives the signal's number. A signal this process was
    started with ignored (a background job's SIGINT) stays ignored."""
    stopped_by: list[int] = []

    def stop(signum, frame):
        if not stopped_by:
            stopped_by.append(signum)
            raise Stopped(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, stop)
    try:
        yield stopped_by
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.command("eval")
def eval_cmd(
    env: Annotated[str | None, typer.Option("--env", "-e", help="env id, set, or comma list (see `harness list`)")] = None,
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p", help="policy spec; repeat for several")] = None,
    episodes: Annotated[int | None, typer.Option("--episodes", "-n", help="episodes per env (init states 0..n-1; default: the env's own, LIBERO 50, else 10)")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="run folder (default: runs/<env>-<hash>)")] = None,
    seed: Annotated[int | None, typer.Option(help="base seed for per-episode seeds")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="episode cap (default: the benchmark's)")] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera", help="camera to render; repeat for several")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="square image side in pixels")] = None,
    render: Annotated[str | None, typer.Option("--render", help=RENDER_HELP)] = None,
    workers: Annotated[int | None, typer.Option("--workers", "-j", help="worker processes")] = None,
    video: Annotated[str | None, typer.Option(help="all|failures|none|first:N")] = None,
    video_fps: Annotated[int | None, typer.Option("--video-fps")] = None,
    stop_on_success: Annotated[bool | None, typer.Option("--stop-on-success/--no-stop-on-success", help="end an episode at its first success")] = None,
    executor: Annotated[str | None, typer.Option(help="where episodes run (see `harness list executors`)")] = None,
    wm: Annotated[str | None, typer.Option("--wm", help="world model to run every episode in as well (see `harness list world-models`); 'none': simulator only")] = None,
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="checkpoint folder of --wm (default: its standard location)")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="judge of world-model success (default: the world model's own classifier)")] = None,
    wm_batch: Annotated[int | None, typer.Option("--wm-batch", help="world-model episodes stepped together in one batched call (default 1)")] = None,
    wm_precision: Annotated[str | None, typer.Option("--wm-precision", help="the world model's networks: float32 (default) or bfloat16 (faster on CPUs with native bf16)")] = None,
    wm_decoder: Annotated[str | None, typer.Option("--wm-decoder", help="the world model's pixels: full (its own decoder, default) or distilled (the cheap one from `harness distill-decoder`)")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="with --executor ray: auto, HOST:PORT, or unset for a local cluster")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads per worker (default: the CPUs shared out over the workers)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML eval config; flags override it")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Evaluate policies in the simulator, and with --wm in a world model from the same initial
    states; results go to a resumable run folder."""
    from harness.report.markdown import markdown
    from harness.run.config import EvalConfig
    from harness.run.evaluate import plan_eval, run_eval

    flags = dict(env=env, policies=tuple(policy) if policy else None, episodes=episodes, out=out, seed=seed,
                 max_steps=max_steps, cameras=tuple(camera) if camera else None, image_size=image_size,
                 render=render, workers=workers, video=video, video_fps=video_fps, stop_on_success=stop_on_success,
                 executor=executor, wm=wm, wm_checkpoint=wm_checkpoint, judge=judge,
                 wm_batch=wm_batch, wm_precision=wm_precision, wm_decoder=wm_decoder, ray_address=ray_address,
                 threads=threads)
    if config is not None:
        cfg = EvalConfig.from_yaml(config, **flags)
    else:
        if env is None:
            raise HarnessError("--env is required (or --config FILE): e.g. --env metaworld/reach-v3")
        cfg = EvalConfig(**{k: v for k, v in flags.items() if v is not None})
    plan = plan_eval(cfg)
    total = plan.total
    typer.echo(f"run folder: {plan.out}  ({len(plan.env_ids)} env(s), {len(plan.episodes)} episodes x {len(cfg.policies)} "
               f"policies x backends {', '.join(plan.backends)})", err=True)
    bar, task = _progress(progress and sys.stderr.isatty(), total, "eval")
    counts = {"success": 0, "failure": 0, "error": 0}

    def on_record(record, finished, total):
        counts[record["outcome"]] += 1
        if bar is not None:
            bar.update(task, completed=finished, info=f"ok {counts['success']} fail {counts['failure']} err {counts['error']}")
        elif progress:
            typer.echo(f"[{finished}/{total}] {record['policy']} {record['backend']} {record['env_id']}#{record['init_state']}: {record['outcome']}", err=True)

    if bar is not None:
        bar.start()
    resume = "interrupted: finished episodes are saved; re-run the same command to resume"
    try:
        with _stop_on_signals() as stopped_by:
            summary = run_eval(plan, on_record, notify=lambda line: typer.echo(line, err=True))
    except Stopped as exc:  # outside the episode loop (starting, or writing the summary)
        typer.echo(resume, err=True)
        raise typer.Exit(exc.exit_code) from None
    finally:
        if bar is not None:
            bar.stop()
    typer.echo(markdown(summary))
    typer.echo(f"\nresults: {plan.out / 'results.json'}")
    if summary["interrupted"]:
        typer.echo(resume, err=True)
        raise typer.Exit(128 + (stopped_by[0] if stopped_by else signal.SIGINT))



@app.command("collect")
def collect_cmd(
    env: Annotated[str, typer.Option("--env", "-e", help="env id, set, or comma list")],
    out: Annotated[str, typer.Option("--out", "-o", help="dataset file (.h5)")],
    policy: Annotated[list[str] | None, typer.Option("--policy", "-p", help="policy spec; repeat for several (default: scripted)")] = None,
    episodes: Annotated[int, typer.Option("--episodes", "-n", help="episodes per env and policy")] = 10,
    seed: int = 0,
    first_init_state: Annotated[int, typer.Option("--first-init-state", help="collect init states from here on (keep 0..n-1 for evaluation)")] = 0,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    camera: Annotated[list[str] | None, typer.Option("--camera")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size")] = None,
    render: Annotated[str | None, typer.Option("--render", help=RENDER_HELP)] = None,
    stop_on_success: Annotated[bool, typer.Option("--stop-on-success/--no-stop-on-success")] = True,
    only_success: Annotated[bool, typer.Option("--only-success", help="keep successful episodes only")] = False,
    overwrite: bool = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Roll a policy out and save frames, states, actions, success, instruction (HDF5)."""
    from harness.data.collect import CollectConfig, run_collect

    cfg = CollectConfig(env=env, policies=tuple(policy or ["scripted"]), out=out, episodes=episodes, seed=seed, first_init_state=first_init_state,
                        max_steps=max_steps, cameras=tuple(camera) if camera else None, image_size=image_size,
                        render=render, stop_on_success=stop_on_success, only_success=only_success,
                        overwrite=overwrite)

    def on_episode(info, i, n):
        if progress:
            typer.echo(f"[{i}/{n}] {info['policy']} {info['env_id']}#{info['init_state']}: {'success' if info['success'] else 'failure'}", err=True)

    result = run_collect(cfg, on_episode)
    typer.echo(f"wrote {result['kept']} episodes ({result['successes']} successful of {result['episodes']}) to {result['out']}")


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders of evals (and probe folders with probe.json)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="folder for report.md/html (default: the first run)")] = None,
):
    """Print the results as Markdown; write report.md and a self-contained report.html with plots and videos."""
    from harness.report.html import write_report
    from harness.report.markdown import load_results, markdown

    for run in runs:
        if not (run / "probe.json").exists() or (run / "episodes.jsonl").exists():
            typer.echo(markdown(load_results(run)))
    md, page = write_report(runs, out)
    typer.echo(f"wrote {md} and {page}")
