"""The `harness` command line. Expected errors are one line on stderr and exit code 2."""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from harness.allocator import keep_freed_memory
from harness.errors import HarnessError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Closed-loop evaluation harness for robot world models.")

# what `harness list KIND` shows: the registry behind each kind, imported only when listed
LISTABLE = {
    "envs": "envs:ENVS",
    "sets": "envs:ENV_SETS",
    "policies": "policies:POLICIES",
    "world-models": "world_models:WORLD_MODELS",
    "judges": "harness.judges:JUDGES",
    "executors": "harness.executors:EXECUTORS",
}
LIST_KINDS = tuple(LISTABLE)


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


def _progress(enabled: bool, total: int, label: str):
    """A rich progress bar callback, or a no-op."""
    if not enabled or total == 0:
        return None, None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task(label, total=total, info="")
    return bar, task


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
    from harness.config import EvalConfig
    from harness.evaluate import plan_eval, run_eval
    from harness.report import markdown

    flags = dict(env=env, policies=tuple(policy) if policy else None, episodes=episodes, out=out, seed=seed,
                 max_steps=max_steps, cameras=tuple(camera) if camera else None, image_size=image_size,
                 workers=workers, video=video, video_fps=video_fps, stop_on_success=stop_on_success,
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
    stop_on_success: Annotated[bool, typer.Option("--stop-on-success/--no-stop-on-success")] = True,
    only_success: Annotated[bool, typer.Option("--only-success", help="keep successful episodes only")] = False,
    overwrite: bool = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Roll a policy out and save frames, states, actions, success, instruction (HDF5)."""
    from harness.collect import CollectConfig, run_collect

    cfg = CollectConfig(env=env, policies=tuple(policy or ["scripted"]), out=out, episodes=episodes, seed=seed, first_init_state=first_init_state,
                        max_steps=max_steps, cameras=tuple(camera) if camera else None, image_size=image_size,
                        stop_on_success=stop_on_success, only_success=only_success, overwrite=overwrite)

    def on_episode(info, i, n):
        if progress:
            typer.echo(f"[{i}/{n}] {info['policy']} {info['env_id']}#{info['init_state']}: {'success' if info['success'] else 'failure'}", err=True)

    result = run_collect(cfg, on_episode)
    typer.echo(f"wrote {result['kept']} episodes ({result['successes']} successful of {result['episodes']}) to {result['out']}")


def _train_progress(enabled: bool):
    """Progress line per phase: step, loss, throughput (stderr, overwritten in place)."""
    if not enabled:
        return None
    last = {"t": 0.0}

    def show(phase: str, step: int, total: int, numbers: dict) -> None:
        import time

        now = time.monotonic()
        if step != total and now - last["t"] < 0.5:
            return
        last["t"] = now
        extra = "  ".join(f"{k}={v:.4g}" for k, v in numbers.items() if isinstance(v, float) and k in
                          ("loss", "samples_per_s", "val_latent_mse", "copy_last_mse"))
        end = "\n" if step == total else "\r"
        typer.echo(f"{phase:<10} {step:>6}/{total}  {extra}", err=True, nl=False)
        typer.echo(end, err=True, nl=False)

    return show


@app.command("train-encoder")
def train_encoder_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset from `harness collect` (HDF5)")],
    encoder: Annotated[str, typer.Option("--encoder", help="minivae or minijepa (encoders trained here)")],
    out: Annotated[str, typer.Option("--out", "-o", help="new folder for the encoder checkpoint")],
    camera: Annotated[str | None, typer.Option("--camera", help="camera to train on (default: the first)")] = None,
    steps: int = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: float = 1e-3,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Train a from-scratch encoder (reconstruction VAE or predictive JEPA) on collected frames."""
    from world_models.encoder_training import EncoderTrainConfig, train_encoder

    cfg = EncoderTrainConfig(data=data, encoder=encoder, out=out, camera=camera, steps=steps, batch_size=batch_size,
                             lr=lr, seed=seed, threads=threads)
    show = _train_progress(progress)
    result = train_encoder(cfg, (lambda i, n, num: show("encoder", i, n, num)) if show else None)
    typer.echo(f"wrote encoder {encoder} to {result['checkpoint']} (final loss {result['loss']:.4g})")


@app.command("train-wm")
def train_wm_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset from `harness collect` (HDF5)")],
    wm: Annotated[str | None, typer.Option("--wm", help="named world model: its configs/world_models/<name>.yaml sets the defaults")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="encoder name (see world_models/encoders)")] = None,
    encoder_path: Annotated[str | None, typer.Option("--encoder-path", help="encoder weights: train-encoder folder, local HF folder or repo id in the HF cache")] = None,
    size: Annotated[str | None, typer.Option("--size", help="DiT size: tiny, S, B, L")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="checkpoint folder (default: $WM_HARNESS_HOME/checkpoints/<name>)")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    frameskip: Annotated[int | None, typer.Option("--frameskip", help="control steps per world-model step")] = None,
    decoder_steps: Annotated[int | None, typer.Option("--decoder-steps", help="pixel-decoder steps (encoders without a decoder)")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every")] = None,
    camera: Annotated[str | None, typer.Option("--camera")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="latent cache (default: $WM_HARNESS_HOME/latents)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Train a DiT world model (flow matching) on cached encoder latents; resumes an interrupted run."""
    from world_models.named import default_checkpoint, read_config
    from world_models.training import TrainConfig, train_world_model

    base: dict = {}
    if wm is not None:
        from world_models.named import REPO_ROOT

        base = {k: v for k, v in read_config(wm).items() if k not in ("name", "description")}
        rel = base.get("encoder_path")
        if rel and not Path(rel).is_absolute() and (REPO_ROOT / rel).exists():
            base["encoder_path"] = str(REPO_ROOT / rel)  # paths in configs are relative to the repository
    given = {"encoder": encoder, "encoder_path": encoder_path, "size": size, "steps": steps, "batch_size": batch_size,
             "frameskip": frameskip, "decoder_steps": decoder_steps, "checkpoint_every": checkpoint_every,
             "camera": camera, "seed": seed, "threads": threads, "cache_dir": cache_dir}
    fields = {**base, **{k: v for k, v in given.items() if v is not None}}
    if "encoder" not in fields:
        raise HarnessError("pass --encoder NAME or --wm NAME (see `harness list world-models`)")
    name = wm or f"{fields['encoder']}_dit_{str(fields.get('size', 'tiny')).lower()}"
    try:
        cfg = TrainConfig(data=data, out=out or str(default_checkpoint(name)), name=name, **fields)
    except TypeError as e:
        raise HarnessError(f"bad world-model config for {name!r}: {e}") from None
    result = train_world_model(cfg, _train_progress(progress))
    held = {k: result[k] for k in ("val_latent_mse", "val_latent_mse_t0", "copy_last_mse") if k in result}
    typer.echo(f"wrote world model {name} to {result['checkpoint']}" +
               (f"; held-out latent MSE {held['val_latent_mse']:.4g} (mean prediction {held['val_latent_mse_t0']:.4g}) "
                f"vs copy-last {held['copy_last_mse']:.4g}" if held else ""))


@app.command("eval-wm")
def eval_wm_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset with real episodes (HDF5)")],
    wm: Annotated[str | None, typer.Option("--wm", help="named world model")] = None,
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="checkpoint folder")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="folder for fidelity.json and videos")] = "runs/eval-wm",
    episodes: Annotated[int | None, typer.Option("--episodes", "-n", help="at most this many episodes")] = None,
    horizon: int = 16,
    seed: int = 0,
    videos: Annotated[int, typer.Option("--videos", help="side-by-side videos for the first N episodes")] = 4,
    wm_decoder: Annotated[str, typer.Option("--wm-decoder", help="full (the world model's own decoder) or distilled")] = "full",
):
    """Open-loop rollout fidelity: PSNR/SSIM/latent MSE per horizon step, real | predicted videos."""
    from harness.fidelity import run_eval_wm

    r = run_eval_wm(wm=wm, checkpoint=wm_checkpoint, data=data, out=out, episodes=episodes, horizon=horizon,
                    seed=seed, videos=videos, decoder=wm_decoder)
    ps = r["per_step"]
    typer.echo(f"{r['world_model']} on {r['episodes']} episodes ({'held-out split' if r['heldout_split'] else 'all'}), "
               f"LPIPS {r['lpips']}")
    typer.echo(f"{'step':>4} {'PSNR':>7} {'SSIM':>6} {'recon PSNR':>10} {'latent MSE':>10} {'copy-last':>9}")
    for k in range(r["horizon"]):
        if ps["psnr"][k] is None:
            break
        typer.echo(f"{k + 1:>4} {ps['psnr'][k]:7.2f} {ps['ssim'][k]:6.3f} {ps['recon_psnr'][k]:10.2f} "
                   f"{ps['latent_mse'][k]:10.4g} {ps['copy_last_mse'][k]:9.4g}")
    typer.echo(f"wrote {Path(out) / 'fidelity.json'}")


@app.command("plan-error")
def plan_error_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="dataset with real episodes (HDF5)")],
    wm: Annotated[str, typer.Option("--wm", help="named world model")],
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="checkpoint folder")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="world-model steps between start and goal; repeat (default 1 and 4)")] = None,
    pairs: Annotated[int, typer.Option("--pairs", help="start/goal pairs per k")] = 32,
    preset: Annotated[str, typer.Option("--preset", help="CEM preset: dino_wm, vjepa2_ac, cpu")] = "dino_wm",
    episodes: Annotated[int | None, typer.Option("--episodes", "-n", help="use at most this many episodes")] = None,
    seed: int = 0,
    out: Annotated[str | None, typer.Option("--out", "-o", help="write the numbers as JSON here")] = None,
):
    """CEM planning error: plan from real start to real goal latents, compare with the recorded actions."""
    import json

    from harness.planning_error import planning_error
    from harness.store import atomic_write_json, check_output_file
    from policies.cem import CEM_PRESETS
    from world_models import load_world_model
    from world_models.data import check_dataset, load_episodes

    if preset not in CEM_PRESETS:
        raise HarnessError(f"--preset {preset!r} is unknown; available: {', '.join(CEM_PRESETS)}")
    if pairs < 1:
        raise HarnessError(f"--pairs {pairs} must be >= 1")
    if episodes is not None and episodes < 1:
        raise HarnessError(f"--episodes {episodes} must be >= 1 (leave it out for all episodes)")
    if out:
        check_output_file(Path(out))  # before the planning, not after
    model = load_world_model(wm, wm_checkpoint)
    camera = check_dataset(data, model.info.get("camera"))
    eps = load_episodes(data, camera, model.image_size, action_dim=model.env_action_dim)
    r = planning_error(model, eps[:episodes] if episodes else eps, tuple(k or (1, 4)), pairs, CEM_PRESETS[preset], seed)
    r.update(world_model=wm, data=data, preset=preset)
    typer.echo(f"{'k':>3} {'pairs':>5} {'action MSE':>10} {'MAE':>7} {'zero-action MSE':>15} {'random MSE':>10}")
    for kk, v in r["k"].items():
        typer.echo(f"{kk:>3} {v['pairs']:>5} {v['action_mse']:10.4f} {v['action_mae']:7.4f} "
                   f"{v['zero_action_mse']:15.4f} {v['random_action_mse']:10.4f}")
    if out:
        atomic_write_json(Path(out), r)
        typer.echo(f"wrote {out}")
    else:
        typer.echo(json.dumps(r["k"]))


@app.command("report")
def report_cmd(
    runs: Annotated[list[Path], typer.Argument(help="run folders of evals (and probe folders with probe.json)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="folder for report.md/html (default: the first run)")] = None,
):
    """Print the results as Markdown; write report.md and a self-contained report.html with plots and videos."""
    from harness.report import load_results, markdown
    from harness.report_html import write_report

    for run in runs:
        if not (run / "probe.json").exists() or (run / "episodes.jsonl").exists():
            typer.echo(markdown(load_results(run)))
    md, page = write_report(runs, out)
    typer.echo(f"wrote {md} and {page}")


@app.command("train-policy")
def train_policy_cmd(
    data: Annotated[list[str] | None, typer.Option("--data", "-d", help="dataset from `harness collect` (HDF5); repeat for several")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="folder for step_NNNNNN/ checkpoints (each is bc:path=...)")] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="write a checkpoint every N steps")] = None,
    chunk: Annotated[int | None, typer.Option("--chunk", help="actions predicted and run open-loop per frame")] = None,
    frames: Annotated[int | None, typer.Option("--frames", help="observed frames stacked (now, chunk steps ago, ...)")] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="camera to act from (default: the data's first)")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="policy input side (frames are resized)")] = None,
    size: Annotated[str | None, typer.Option("--size", help="network size: tiny or S")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML (configs/policies/); flags override it")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Train an image-based behaviour-cloning policy; a checkpoint every --save-every steps; resumes."""
    from policies.bc_training import BCTrainConfig, train_policy

    given = {"data": tuple(data) if data else None, "out": out, "steps": steps, "save_every": save_every,
             "chunk": chunk, "frames": frames, "camera": camera, "image_size": image_size, "size": size,
             "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads}
    if config is not None:
        cfg = BCTrainConfig.from_yaml(config, **given)
    elif not data or out is None:
        raise HarnessError("pass --data FILE and --out DIR (or --config FILE): e.g. --data demos.h5 --out runs/bc")
    else:
        cfg = BCTrainConfig(**{k: v for k, v in given.items() if v is not None})
    show = _train_progress(progress)
    result = train_policy(cfg, (lambda i, n, num: show("policy", i, n, num)) if show else None)
    for i, h in enumerate(result["history"]):
        val = f"  val loss {h['val_loss']:.4g}" if "val_loss" in h else ""
        typer.echo(f"step {h['step']:>6}  train loss {h['train_loss']:.4g}{val}  -> {result['checkpoints'][i]}")
    typer.echo(f"{result['parameters']} parameters, camera {result['camera']}, {len(result['instructions'])} "
               f"instruction(s); evaluate with --policy bc:path={Path(result['out']) / 'step_NNNNNN'}")


@app.command("train-judge")
def train_judge_cmd(
    data: Annotated[list[str], typer.Option("--data", "-d", help="simulator rollouts from `harness collect` (HDF5); repeat for several")],
    out: Annotated[str, typer.Option("--out", "-o", help="folder for the classifier (use as latent_classifier:path=DIR)")],
    wm: Annotated[str | None, typer.Option("--wm", help="named world model whose encoder gives the latents")] = None,
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="its checkpoint folder")] = None,
    encoder: Annotated[str | None, typer.Option("--encoder", help="or an encoder by name (see world_models/encoders)")] = None,
    encoder_path: Annotated[str | None, typer.Option("--encoder-path", help="its weights: train-encoder folder, local HF folder or cached repo id")] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="camera to judge from (default: the data's first)")] = None,
    steps: int = 300,
    lr: float = 3e-3,
    hidden: int = 64,
    heldout: Annotated[float, typer.Option("--heldout", help="fraction of episodes held out for scoring")] = 0.25,
    window: Annotated[int, typer.Option("--window", help="frames in the moving average of per-frame probabilities")] = 3,
    threshold: Annotated[float | None, typer.Option("--threshold", help="episode-score threshold (default: calibrated on the training episodes)")] = None,
    wm_replays: Annotated[bool, typer.Option("--wm-replays/--no-wm-replays", help="also train on the --wm world model's open-loop replays of the episodes (labelled by the real episode's oracle)")] = False,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Train a success classifier on frozen encoder latents, labelled by the simulator oracle."""
    from harness.judges.latent_classifier import JudgeTrainConfig, train_success_classifier

    cfg = JudgeTrainConfig(data=tuple(data), out=out, wm=wm, wm_checkpoint=wm_checkpoint, encoder=encoder,
                           encoder_path=encoder_path, camera=camera, steps=steps, lr=lr, hidden=hidden,
                           heldout=heldout, window=window, threshold=threshold, wm_replays=wm_replays, seed=seed,
                           threads=threads)
    show = _train_progress(progress)
    r = train_success_classifier(cfg, (lambda i, n, num: show("judge", i, n, num)) if show else None)
    for split in ("train", "heldout", "train_replays", "heldout_replays"):
        m = r.get(split) or {}
        if m.get("episodes") and split.endswith("replays"):
            typer.echo(f"{split:>8}: {m['episodes']} world-model replays, accuracy {m['accuracy']:.3f}, kappa {m['kappa']:.3f}")
        elif m.get("episodes"):
            typer.echo(f"{split:>8}: {m['episodes']} episodes, accuracy {m['accuracy']:.3f} (chance "
                       f"{m['chance_accuracy']:.3f}), kappa {m['kappa']:.3f}, frame accuracy {m['frame_accuracy']:.3f}")
    typer.echo(f"episode threshold {r['threshold']:.3f} ({r['threshold_source']})")
    typer.echo(f"wrote success classifier to {r['checkpoint']}; judge with --judge latent_classifier:path={r['checkpoint']}")


@app.command("distill-decoder")
def distill_decoder_cmd(
    data: Annotated[list[str], typer.Option("--data", "-d", help="real frames from `harness collect` (HDF5); repeat for several")],
    wm: Annotated[str, typer.Option("--wm", help="named world model whose decoder to distil")],
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="its checkpoint folder")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="folder (default: <checkpoint>/distilled_decoder, where --wm-decoder distilled looks)")] = None,
    steps: int = 3000,
    width: Annotated[int, typer.Option("--width", help="channels of the distilled decoder")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    lr: float = 2e-3,
    max_frames: Annotated[int, typer.Option("--max-frames", help="training frames kept, evenly spaced")] = 20000,
    seed: int = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Distil a world model's decoder into a cheap sub-pixel one (TAESD-style) for fast pixels."""
    from world_models.distill import (
        DECODER_FORMAT,
        DISTILLED_DIR,
        DistillConfig,
        distill_decoder,
        save_distilled_decoder,
    )
    from world_models.named import addon_folder, load_world_model

    target = addon_folder(wm, wm_checkpoint, out, DISTILLED_DIR, DECODER_FORMAT)  # refused before distilling
    cfg = DistillConfig(data=tuple(data), steps=steps, width=width, batch_size=batch_size, lr=lr,
                        max_frames=max_frames, seed=seed, threads=threads)
    world_model = load_world_model(wm, wm_checkpoint)
    show = _train_progress(progress)
    decoder, m = distill_decoder(world_model, cfg, (lambda i, n, num: show("decoder", i, n, num)) if show else None)
    folder = save_distilled_decoder(decoder, world_model, target, cfg, m)
    typer.echo(f"held-out ({m['val_frames']} frames): PSNR {m['val_psnr_vs_full']:.2f} dB against the full decoder; "
               f"against the real frames {m['val_psnr_vs_real']:.2f} dB (full decoder {m['full_psnr_vs_real']:.2f} dB)")
    typer.echo(f"64 frames decoded in {m['decode_64_s_distilled'] * 1000:.1f} ms vs {m['decode_64_s_full'] * 1000:.1f} ms "
               f"({m['decode_64_s_full'] / m['decode_64_s_distilled']:.1f}x faster, {m['threads']} thread(s))")
    typer.echo(f"wrote distilled decoder to {folder}; use it with --wm-decoder distilled")


@app.command("fit-proprio")
def fit_proprio_cmd(
    data: Annotated[list[str], typer.Option("--data", "-d", help="frames with states from `harness collect` (HDF5); repeat for several")],
    wm: Annotated[str, typer.Option("--wm", help="named world model whose latents to read")],
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="its checkpoint folder")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="folder (default: <checkpoint>/proprio, where cem:...,proprio=W looks)")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="fraction of episodes held out for the R^2")] = 0.2,
    max_frames: Annotated[int, typer.Option("--max-frames", help="frames per split kept, at random")] = 20000,
    seed: int = 0,
):
    """Fit a linear readout of the robot's proprioception from a world model's latents (CEM's proprio term)."""
    from world_models.named import addon_folder, load_world_model
    from world_models.proprio import (
        PROPRIO_DIR,
        PROPRIO_FORMAT,
        fit_proprio_readout,
        readout_fingerprint,
    )

    target = addon_folder(wm, wm_checkpoint, out, PROPRIO_DIR, PROPRIO_FORMAT)  # refused before fitting
    world_model = load_world_model(wm, wm_checkpoint)
    readout, m = fit_proprio_readout(world_model, data, val_fraction=val_fraction, max_frames=max_frames, seed=seed)
    folder = readout.save(target, readout_fingerprint(world_model.encoder.spec(), world_model.tensors()))
    r2 = ", ".join("n/a" if v is None else f"{v:.3f}" for v in m["heldout_r2"])
    typer.echo(f"{m['family']} proprioception ({m['dims']} dims), held-out R^2 per dim: {r2} "
               f"({m['heldout_frames']} frames; ridge alpha {m['alpha']:.3g})")
    typer.echo(f"wrote proprioception readout to {folder}; plan with it as cem:wm={wm},proprio=W")


@app.command("judge-eval")
def judge_eval_cmd(
    judge: Annotated[str, typer.Option("--judge", "-j", help="judge spec: oracle, vlm:path=DIR, consensus:judges=A+B, latent_classifier:path=DIR")],
    data: Annotated[list[str], typer.Option("--data", "-d", help="simulator rollouts from `harness collect` (HDF5); repeat for several")],
    wm: Annotated[str | None, typer.Option("--wm", help="named world model whose encoder gives the judge its latents")] = None,
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="JSON file (default: runs/judge-eval/<judge>.json)")] = None,
    camera: Annotated[str | None, typer.Option("--camera")] = None,
    episodes: Annotated[int | None, typer.Option("--episodes", "-n", help="at most this many episodes")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Score a judge against the simulator oracle on simulator rollouts: accuracy, kappa, precision/recall."""
    from harness.judges.evaluate import format_table, run_judge_eval

    if threads:
        import torch

        torch.set_num_threads(threads)

    def on_episode(rec, i):
        if progress:
            typer.echo(f"[{i}] {rec['episode']}: sim {'success' if rec['sim_success'] else 'failure'}, "
                       f"judge {rec['score']:.3f} -> {'success' if rec['verdict'] else 'failure'}", err=True)

    r = run_judge_eval(judge, data, out=out, wm=wm, wm_checkpoint=wm_checkpoint, camera=camera, episodes=episodes,
                       on_episode=on_episode)
    typer.echo(format_table(r))
    typer.echo(f"\nwrote {r['out']}")


@app.command("probe")
def probe_cmd(
    data: Annotated[list[str], typer.Option("--data", "-d", help="dataset from `harness collect` (HDF5); repeat for several")],
    out: Annotated[str, typer.Option("--out", "-o", help="folder for probe.json")],
    encoder: Annotated[str | None, typer.Option("--encoder", help="probe this encoder's latents (see world_models/encoders)")] = None,
    encoder_path: Annotated[str | None, typer.Option("--encoder-path", help="its weights: train-encoder folder, local HF folder or cached repo id")] = None,
    layer: Annotated[list[int] | None, typer.Option("--layer", help="hidden state of a pretrained encoder; repeat for a layer-wise curve")] = None,
    wm: Annotated[str | None, typer.Option("--wm", help="or a named world model's latents")] = None,
    wm_checkpoint: Annotated[str | None, typer.Option("--wm-checkpoint", help="its checkpoint folder")] = None,
    generated: Annotated[bool, typer.Option("--generated", help="also probe the world model's open-loop predicted latents")] = False,
    k: Annotated[list[int] | None, typer.Option("--k", help="frames between the pair (t, t+k); repeat (default 1 and 4)")] = None,
    probe: Annotated[list[str] | None, typer.Option("--probe", help="linear (ridge) or mlp; repeat for both")] = None,
    corruption: Annotated[list[str] | None, typer.Option("--corruption", help="none, noise, blur, jitter, occlusion (NAME:SEVERITY); repeat")] = None,
    severity: Annotated[int, typer.Option("--severity", help="default corruption severity 1..5")] = 3,
    split: Annotated[str, typer.Option("--split", help="hold out by episode or by task")] = "episode",
    target: Annotated[str, typer.Option("--target", help="chunk (the k actions, concatenated) or net (their sum; gripper averaged)")] = "chunk",
    pool: Annotated[str, typer.Option("--pool", help="tokens -> features: mean or flatten")] = "mean",
    seeds: Annotated[int, typer.Option("--seeds", help="probe seeds averaged")] = 3,
    seed: int = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction")] = 0.2,
    camera: Annotated[str | None, typer.Option("--camera")] = None,
    family: Annotated[str | None, typer.Option("--family", help="metaworld, libero or calvin when the data does not say")] = None,
    horizon: Annotated[int, typer.Option("--horizon", help="--generated: open-loop steps before restarting from real frames")] = 16,
    threads: Annotated[int | None, typer.Option("--threads", help="torch CPU threads")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Inverse-dynamics probes: R^2 / Pearson r of actions read off frozen latents of frames t, t+k."""
    from harness.probe import ProbeConfig, format_table, run_probe

    cfg = ProbeConfig(data=tuple(data), out=out, encoder=encoder, encoder_path=encoder_path, layers=tuple(layer or ()),
                      wm=wm, wm_checkpoint=wm_checkpoint, generated=generated, ks=tuple(k or (1, 4)),
                      probes=tuple(probe or ("linear",)), corruptions=tuple(corruption or ("none",)), severity=severity,
                      split=split, target=target, pool=pool, seeds=seeds, seed=seed, test_fraction=test_fraction,
                      camera=camera, family=family, horizon=horizon, threads=threads)
    r = run_probe(cfg, (lambda msg: typer.echo(msg, err=True)) if progress else None)
    typer.echo(format_table(r))
    typer.echo(f"\n{r['split']['train_episodes']} training / {r['split']['test_episodes']} held-out episodes "
               f"(split by {r['split']['by']}), {len(r['seeds'])} seeds; wrote {Path(out) / 'probe.json'}")


libero_demos_app = typer.Typer(no_args_is_help=True, help="LIBERO's own demonstration files (robomimic HDF5).")
app.add_typer(libero_demos_app, name="libero-demos")


@libero_demos_app.command("import")
def libero_demos_import_cmd(
    src: Annotated[Path, typer.Argument(help="a LIBERO demo file, e.g. libero_spatial/<task>_demo.hdf5")],
    out: Annotated[str, typer.Option("--out", "-o", help="harness dataset file (.h5)")],
    env: Annotated[str | None, typer.Option("--env", "-e", help="libero/<suite>/<task id> (default: from the file)")] = None,
    max_demos: Annotated[int | None, typer.Option("--max-demos", min=1)] = None,
    overwrite: bool = False,
):
    """Convert a LIBERO demo file into the harness's dataset (env-oriented images, 8-D state)."""
    from harness.libero_demos import import_demos

    r = import_demos(src, out, env=env, overwrite=overwrite, max_demos=max_demos)
    typer.echo(f"wrote {r['demos']} demos ({r['successful']} successful) of {r['env_id']} to {r['out']}")


@libero_demos_app.command("replay")
def libero_demos_replay_cmd(
    src: Annotated[Path, typer.Argument(help="a LIBERO demo file with data/demo_*/states")],
    env: Annotated[str | None, typer.Option("--env", "-e", help="libero/<suite>/<task id> (default: from the file)")] = None,
    max_demos: Annotated[int | None, typer.Option("--max-demos", min=1)] = None,
    report: Annotated[Path | None, typer.Option("--report", help="write the per-demo results as JSON")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
):
    """Play each demo's actions from its first state in the simulator: does it still succeed?
    Exit code 1 when a demo that succeeded when recorded fails on replay."""
    from harness.libero_demos import replay_demos, write_report

    def show(r, i, n):
        if progress:
            verdict = f"success at step {r.success_step}" if r.replay_success else "failure"
            typer.echo(f"[{i}/{n}] {r.demo}: recorded {'success' if r.recorded_success else 'failure'}, "
                       f"replay {verdict}, max qpos drift {r.max_state_error:.2e}", err=True)

    result = replay_demos(src, env=env, max_demos=max_demos, on_result=show)
    if report is not None:
        write_report(result, report)
    typer.echo(f"{result['env_id']}: {result['replay_successes']}/{result['demos']} demos succeed on replay "
               f"({result['recorded_successes']} succeeded when recorded)")
    if not result["still_succeed"]:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 for bad input, never a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # batched world-model calls reuse freed blocks (harness/allocator.py)
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="harness", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except HarnessError as exc:
        print(f"error: {' '.join(str(exc).splitlines())}", file=sys.stderr)  # one line, even if a value had newlines
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # Typer ships its own copy of click: recognise its exceptions by their interface.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # usage / bad parameter
            msg = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `harness {ctx.info_name} --help`)" if ctx is not None and ctx.info_name != "harness" else ""
            print(f"error: {msg}{hint}", file=sys.stderr)
            return 2
        if type(exc).__name__ == "Exit":
            return int(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            print("aborted", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    sys.exit(main())
