"""Commands that measure a world model or a judge: `eval-wm`, `plan-error`, `judge-eval`, `probe`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError

from .app import app


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
    from harness.analyses.fidelity import run_eval_wm

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
    proprio: Annotated[float | None, typer.Option("--proprio", help="weight of the proprio term (default: the preset's; dino_wm 1, which needs the world model's readout from `harness fit-proprio`)")] = None,
    episodes: Annotated[int | None, typer.Option("--episodes", "-n", help="use at most this many episodes")] = None,
    seed: int = 0,
    out: Annotated[str | None, typer.Option("--out", "-o", help="write the numbers as JSON here")] = None,
):
    """CEM planning error: plan from real start to real goal latents, compare with the recorded actions."""
    import json
    import math
    from dataclasses import replace

    from harness.analyses.planning_error import planning_error
    from harness.run.store import atomic_write_json, check_output_file
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
    if proprio is not None and not (proprio >= 0 and math.isfinite(proprio)):
        raise HarnessError(f"--proprio {proprio} must be a number >= 0 (0: plan without the proprio term)")
    config = CEM_PRESETS[preset] if proprio is None else replace(CEM_PRESETS[preset], proprio=proprio)
    model = load_world_model(wm, wm_checkpoint)
    if config.proprio > 0:
        try:
            model.proprio_readout()
        except HarnessError as e:
            raise HarnessError(f"{e} Or plan without it: --proprio 0 (preset {preset} weighs it {config.proprio:g}).") from None
    camera = check_dataset(data, model.info.get("camera"))
    eps = load_episodes(data, camera, model.image_size, action_dim=model.env_action_dim)
    r = planning_error(model, eps[:episodes] if episodes else eps, tuple(k or (1, 4)), pairs, config, seed)
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
    from harness.analyses.probe import ProbeConfig, format_table, run_probe

    cfg = ProbeConfig(data=tuple(data), out=out, encoder=encoder, encoder_path=encoder_path, layers=tuple(layer or ()),
                      wm=wm, wm_checkpoint=wm_checkpoint, generated=generated, ks=tuple(k or (1, 4)),
                      probes=tuple(probe or ("linear",)), corruptions=tuple(corruption or ("none",)), severity=severity,
                      split=split, target=target, pool=pool, seeds=seeds, seed=seed, test_fraction=test_fraction,
                      camera=camera, family=family, horizon=horizon, threads=threads)
    r = run_probe(cfg, (lambda msg: typer.echo(msg, err=True)) if progress else None)
    typer.echo(format_table(r))
    typer.echo(f"\n{r['split']['train_episodes']} training / {r['split']['test_episodes']} held-out episodes "
               f"(split by {r['split']['by']}), {len(r['seeds'])} seeds; wrote {Path(out) / 'probe.json'}")
