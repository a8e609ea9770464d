"""Commands that train: encoders, world models, BC policies, success judges, distilled decoders,
proprioception readouts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.errors import HarnessError
from harness.stats.agreement import shown

from .app import _train_progress, app


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
            typer.echo(f"{split:>8}: {m['episodes']} world-model replays, accuracy {m['accuracy']:.3f}, kappa "
                       f"{shown(m['kappa'], '.3f')}")
        elif m.get("episodes"):
            typer.echo(f"{split:>8}: {m['episodes']} episodes, accuracy {m['accuracy']:.3f} (chance "
                       f"{m['chance_accuracy']:.3f}), kappa {shown(m['kappa'], '.3f')}, frame accuracy "
                       f"{m['frame_accuracy']:.3f}")
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
               f"({m['heldout_frames']} frames; ridge penalty per dimension {', '.join(format(a, '.3g') for a in m['alpha'])})")
    typer.echo(f"wrote proprioception readout to {folder}; plan with it as cem:wm={wm},proprio=W")
