"""Training a world model: cache encoder latents once, fit the DiT by flow matching, then (for
encoders without a decoder) a pixel decoder on the frozen features.

The output folder *is* the world-model checkpoint (``config.json`` + ``model.safetensors``), plus
``train_state.pt`` (optimizer, step, phase) so an interrupted run resumes where it stopped.
Batches are drawn from a generator seeded by (seed, step), so a resumed run sees the same batches
an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import HarnessError

from .checkpoint import TRAIN_STATE, load_train_state
from .data import (
    SPLIT_RULE,
    check_dataset,
    dataset_render,
    episode_groups,
    load_episodes,
    split_episodes,
)
from .dit import DIT_SIZES, PREDICTIONS, DiT, DiTConfig
from .encoders import ENCODERS, Encoder, is_trained_here, load_encoder
from .flow_matching import flow_matching_loss, resolve_shift
from .named import harness_home
from .pixel_decoder import PixelDecoder
from .world_model import SamplerConfig, WorldModel

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    encoder: str
    out: str
    encoder_path: str | None = None
    camera: str | None = None
    size: str = "tiny"
    width: int | None = None  # override the size table (small test models)
    depth: int | None = None
    heads: int | None = None
    head: str = "linear"
    target: str = "delta"  # "delta": predict the change from the previous frame; "absolute": the frame
    context_deltas: bool = False  # also feed the context frames' changes (needs target "delta")
    prediction: str = "velocity"  # the network's output: "velocity" or "data" (x-prediction)
    history: int = 2
    horizon: int = 1
    frameskip: int = 1  # control steps per world-model step (DINO-WM uses 5)
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup: int = 100
    grad_clip: float = 1.0
    decoder_steps: int = 1000
    decoder_width: int = 64
    sampler_steps: int = 4
    sampler: str = "euler"
    shift: float | str = "auto"
    temperature: float = 1.0
    val_fraction: float = 0.1
    checkpoint_every: int = 500
    seed: int = 0
    threads: int | None = None
    cache_dir: str | None = None
    name: str | None = None
    env_id: str | None = None  # what the data came from (recorded in the checkpoint)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise HarnessError(ENCODERS.unknown_message(self.encoder))
        if self.size not in DIT_SIZES:
            raise HarnessError(f"unknown --size {self.size!r}; choose one of {', '.join(DIT_SIZES)}")
        for name in ("history", "horizon", "frameskip", "steps", "batch_size", "checkpoint_every", "sampler_steps"):
            if int(getattr(self, name)) < 1:
                raise HarnessError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.target not in ("delta", "absolute"):
            raise HarnessError(f"--target must be 'delta' or 'absolute', got {self.target!r}")
        if self.prediction not in PREDICTIONS:
            raise HarnessError(f"prediction {self.prediction!r} is unknown: use {' or '.join(PREDICTIONS)} "
                               f"(the DiT's output; set `prediction:` in the world model's config)")
        if self.context_deltas and self.target != "delta":
            raise HarnessError("context_deltas needs target 'delta' (the context changes are fed in its units)")
        if self.decoder_steps < 0:
            raise HarnessError(f"--decoder-steps must be >= 0, got {self.decoder_steps}")
        if not 0 <= self.val_fraction < 1:
            raise HarnessError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        try:
            SamplerConfig(self.sampler_steps, self.sampler, self.shift, self.temperature)
        except ValueError as e:
            raise HarnessError(f"bad sampler settings: {e}") from None

    def dit_config(self, encoder: Encoder, action_dim: int) -> DiTConfig:
        over = {k: v for k, v in (("width", self.width), ("depth", self.depth), ("heads", self.heads)) if v}
        try:
            return DiTConfig.from_size(self.size, latent_dim=encoder.dim, num_tokens=encoder.num_tokens,
                                       action_dim=action_dim, history=self.history, horizon=self.horizon,
                                       head=self.head, context_deltas=bool(self.context_deltas),
                                       prediction=self.prediction, **over)
        except ValueError as e:
            raise HarnessError(f"bad transition-model settings: {e}") from None

    def identity(self) -> dict[str, Any]:
        """What must match for a resume (the step counts may grow)."""
        keep = ("data", "encoder", "encoder_path", "camera", "size", "width", "depth", "heads", "head", "target",
                "frameskip", "history", "horizon", "batch_size", "lr", "warmup", "seed", "val_fraction", "decoder_width")
        identity = {k: getattr(self, k) for k in keep}
        # fields added later count only when set: a resume state written before they existed
        # (without them) describes the same run as their defaults do
        for k, default in (("context_deltas", False), ("prediction", "velocity")):
            if getattr(self, k) != default:
                identity[k] = getattr(self, k)
        return identity


# latents -----------------------------------------------------------------------------------

def _encoder_fingerprint(encoder: Encoder) -> str:
    h = hashlib.sha256(json.dumps(encoder.spec(), sort_keys=True).encode())
    if is_trained_here(encoder.kind):
        for k, v in sorted(encoder.frozen_state().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_latents(data: str, camera: str, encoder: Encoder, cache_dir: str | os.PathLike,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Per-episode latents (T+1, N, D) and actions (T, A), encoded once per (dataset, camera,
    encoder) and reused: the key covers the file's size and mtime and the encoder's weights."""
    st = os.stat(data)
    key = hashlib.sha256(json.dumps([os.path.abspath(data), st.st_size, st.st_mtime_ns, camera,
                                     _encoder_fingerprint(encoder)]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"latents-{key}.npz"
    if path.is_file():
        with np.load(path) as f:
            n = int(f["count"])
            return {"latents": [f[f"z{i}"] for i in range(n)], "actions": [f[f"a{i}"] for i in range(n)],
                    "path": str(path), "cached": True}
    episodes = load_episodes(data, camera)
    latents, actions = [], []
    for i, ep in enumerate(episodes):
        latents.append(encoder.encode(ep.frames[None])[0].numpy().astype(np.float32))
        actions.append(ep.actions)
        if progress:
            progress(i + 1, len(episodes))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, count=len(latents), **{f"z{i}": z for i, z in enumerate(latents)},
             **{f"a{i}": a for i, a in enumerate(actions)})
    os.replace(tmp, path)
    return {"latents": latents, "actions": actions, "path": str(path), "cached": False}


class WindowSampler:
    """Training windows: H context frames, K targets, the K actions between. Windows may start
    before an episode's first frame; the context is then padded with that first frame, as
    ``WorldModel.predict`` pads a one-frame context after a reset."""

    def __init__(self, latents: list[np.ndarray], actions: list[np.ndarray], history: int, horizon: int):
        self.latents, self.actions, self.H, self.K = latents, actions, history, horizon
        # (episode, first target index) for every target chunk that fits
        self.index = np.array([(e, s) for e, z in enumerate(latents) for s in range(1, len(z) - horizon + 1)],
                              dtype=np.int64)
        if not len(self.index):
            raise HarnessError(f"no episode is long enough for a horizon of {horizon} frames")

    def __len__(self) -> int:
        return len(self.index)

    def get(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx, tgt, act = [], [], []
        for e, s in self.index[rows]:
            z = self.latents[e]
            ctx_idx = np.clip(np.arange(s - self.H, s), 0, None)
            ctx.append(z[ctx_idx])
            tgt.append(z[s:s + self.K])
            act.append(self.actions[e][s - 1:s - 1 + self.K])
        return (torch.from_numpy(np.stack(ctx)), torch.from_numpy(np.stack(tgt)), torch.from_numpy(np.stack(act)))

    def batch(self, rng: np.random.Generator, size: int):
        return self.get(rng.integers(0, len(self.index), size))


def skip_frames(latents: list[np.ndarray], actions: list[np.ndarray], frameskip: int):
    """One world-model step = ``frameskip`` control steps: every f-th frame, the f actions between
    two kept frames concatenated (f * A). Each of the f phase offsets becomes its own sequence."""
    if frameskip == 1:
        return latents, actions
    out_z, out_a = [], []
    for z, a in zip(latents, actions):
        for o in range(frameskip):
            n = (len(a) - o) // frameskip
            if n >= 1:
                out_z.append(z[o:o + n * frameskip + 1:frameskip])
                out_a.append(a[o:o + n * frameskip].reshape(n, -1))
    return out_z, out_a


def latent_stats(latents: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every token of every frame."""
    flat = np.concatenate([z.reshape(-1, z.shape[-1]) for z in latents]).astype(np.float64)
    return torch.tensor(flat.mean(0), dtype=torch.float32), torch.tensor(flat.std(0) + 1e-6, dtype=torch.float32)


def delta_stats(latents: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the change between consecutive frames."""
    return latent_stats([np.diff(z, axis=0) for z in latents if len(z) > 1])


# evaluation on held-out windows ------------------------------------------------------------

@torch.no_grad()
def heldout_metrics(wm: WorldModel, windows: WindowSampler, max_windows: int = 256, seed: int = 0) -> dict[str, float]:
    """Flow-matching loss, one-chunk prediction MSE and the copy-last-frame baseline's MSE, all in
    normalised latent space, on a fixed subset of held-out windows."""
    rows = np.random.default_rng(seed).permutation(len(windows))[:max_windows]
    ctx, tgt, act = windows.get(rows)
    g = torch.Generator().manual_seed(seed)
    n_ctx, n_tgt = wm.normalize(ctx), wm.normalize(tgt)
    loss = float(flow_matching_loss(wm.transition, n_ctx, wm.to_target(ctx[:, -1:], tgt), act, wm.alpha, generator=g))
    pred = wm.normalize(wm.predict(ctx, act, generator=torch.Generator().manual_seed(seed)))
    mean_pred = wm.normalize(wm.predict(ctx, act, temperature=0.0))
    copy_last = n_ctx[:, -1:].expand_as(n_tgt)
    return {"val_flow_loss": loss, "val_latent_mse": float(F.mse_loss(pred, n_tgt)),
            "val_latent_mse_t0": float(F.mse_loss(mean_pred, n_tgt)),
            "copy_last_mse": float(F.mse_loss(copy_last, n_tgt)), "val_windows": int(len(rows))}


# the training loop -------------------------------------------------------------------------

def _lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, total - cfg.warmup)
    return cfg.lr * 0.5 * (1 + np.cos(np.pi * min(1.0, frac)))


ProgressFn = Callable[[str, int, int, dict[str, float]], None]  # (phase, step, total, numbers)


def train_world_model(cfg: TrainConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train (or resume) and return a summary; the checkpoint is ``cfg.out``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    camera = check_dataset(cfg.data, cfg.camera)
    out = Path(cfg.out)
    state = _resume_state(out, cfg)
    encoder = load_encoder(cfg.encoder, cfg.encoder_path)
    cache = cache_latents(cfg.data, camera, encoder, cfg.cache_dir or harness_home() / "latents",
                          progress=(lambda i, n: progress("encode", i, n, {})) if progress else None)
    latents, actions = cache["latents"], cache["actions"]
    if not latents:
        raise HarnessError(f"no episode in {cfg.data} has two or more frames to learn a transition from: collect "
                           f"longer episodes")
    groups = episode_groups(cfg.data, camera)
    train_idx, val_idx = split_episodes(groups, cfg.val_fraction, cfg.seed)
    env_action_dim = int(actions[0].shape[-1])
    action_dim = env_action_dim * cfg.frameskip
    f = cfg.frameskip
    train = WindowSampler(*skip_frames([latents[i] for i in train_idx], [actions[i] for i in train_idx], f),
                          cfg.history, cfg.horizon)
    val = (WindowSampler(*skip_frames([latents[i] for i in val_idx], [actions[i] for i in val_idx], f),
                         cfg.history, cfg.horizon) if val_idx else None)
    mean, std = latent_stats([latents[i] for i in train_idx])
    d_mean, d_std = ((delta_stats(skip_frames([latents[i] for i in train_idx], [actions[i] for i in train_idx], f)[0]))
                     if cfg.target == "delta" else (None, None))

    torch.manual_seed(cfg.seed)
    transition = DiT(cfg.dit_config(encoder, action_dim))
    decoder = None if encoder.has_decoder else PixelDecoder(encoder.dim, encoder.grid, encoder.image_size,
                                                            cfg.decoder_width)
    render = dataset_render(cfg.data)
    info = {"name": cfg.name, "env_id": cfg.env_id, "camera": camera, "env_action_dim": env_action_dim,
            "frameskip": f, **({"render": render} if render else {}),
            "data": os.path.abspath(cfg.data), "train_episodes": len(train_idx), "val_episodes": len(val_idx),
            "split": {"rule": SPLIT_RULE, "seed": cfg.seed, "val_fraction": cfg.val_fraction, "val": val_idx,
                      "val_groups": sorted({f"{p} {e}" for p, e in (groups[i] for i in val_idx)})},
            **cfg.info}
    wm = WorldModel(encoder, transition, decoder, mean, std, SamplerConfig(cfg.sampler_steps, cfg.sampler, cfg.shift, cfg.temperature),
                    info, d_mean, d_std)
    transition.requires_grad_(True).train()
    opt = torch.optim.AdamW(transition.parameters(), lr=cfg.lr, weight_decay=0.0)
    step, history = 0, []
    if state is not None:
        from .checkpoint import load_checkpoint, load_state

        _, tensors = load_checkpoint(out, "world model", "wm-harness-wm/1")
        load_state(transition, tensors, "transition.", str(out))
        if decoder is not None:
            load_state(decoder, tensors, "decoder.", str(out))
        if state["phase"] == "transition" and state.get("optimizer"):
            opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        log.info("resuming %s at %s step %d", out, state["phase"], step)

    def save(phase: str, phase_step: int, optimizer: torch.optim.Optimizer | None) -> None:
        wm.info["train"] = {"config": asdict(cfg), "phase": phase, "step": phase_step, "history": history}
        wm.save(out, extra_files={TRAIN_STATE: {"identity": cfg.identity(), "phase": phase, "step": phase_step,
                                                "history": history,
                                                "optimizer": optimizer.state_dict() if optimizer else None}})

    alpha = resolve_shift(cfg.shift, encoder.num_tokens, encoder.dim)
    phase = state["phase"] if state else "transition"
    if phase == "transition":
        t0, seen = time.perf_counter(), 0
        while step < cfg.steps:
            rng = np.random.default_rng([cfg.seed, step])
            ctx, tgt, act = train.batch(rng, cfg.batch_size)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg, cfg.steps)
            g = torch.Generator().manual_seed(int(rng.integers(2**62)))
            loss = flow_matching_loss(transition, wm.normalize(ctx), wm.to_target(ctx[:, -1:], tgt), act, alpha,
                                      generator=g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(transition.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            seen += cfg.batch_size
            numbers = {"loss": float(loss.detach()), "samples_per_s": seen / (time.perf_counter() - t0)}
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                if val is not None:
                    transition.eval()
                    numbers.update(heldout_metrics(wm, val, seed=cfg.seed))
                    transition.train()
                history.append({"step": step, **numbers})
                save("transition", step, opt)
            if progress:
                progress("transition", step, cfg.steps, numbers)
    transition.eval().requires_grad_(False)
    if phase != "done" and decoder is not None and cfg.decoder_steps > 0:
        resuming = state is not None and state["phase"] == "decoder"
        step = _train_decoder(cfg, wm, camera, latents, state["step"] if resuming else 0, history, save, progress,
                              state.get("optimizer") if resuming else None)
    summary = {"checkpoint": str(out), "latent_cache": cache["path"], "latent_cache_reused": cache["cached"],
               "camera": camera, "history": history}
    if val is not None:
        # The last transition checkpoint already scored these final weights (the decoder does not
        # change latents); score again only when no such entry exists.
        scored = [h for h in history if "val_latent_mse" in h]
        held = ({k: v for k, v in scored[-1].items() if k.startswith(("val_", "copy_"))} if scored
                else heldout_metrics(wm, val, seed=cfg.seed))
        summary.update(held)
    wm.info["heldout"] = {k: v for k, v in summary.items() if k.startswith(("val_", "copy_"))}
    save("done", step, None)
    return summary


def _train_decoder(cfg: TrainConfig, wm: WorldModel, camera: str, latents: list[np.ndarray], step: int,
                   history: list, save, progress: ProgressFn | None, opt_state) -> int:
    """A pixel decoder on the frozen encoder's (cached) latents: MSE in the encoder's pixel space."""
    decoder, encoder = wm.decoder, wm.encoder
    episodes = load_episodes(cfg.data, camera, size=encoder.image_size)
    train_idx, _ = split_episodes(episode_groups(cfg.data, camera), cfg.val_fraction, cfg.seed)
    frames = np.concatenate([episodes[i].frames for i in train_idx])
    z_all = torch.from_numpy(np.concatenate([latents[i] for i in train_idx]))
    decoder.requires_grad_(True).train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=1e-3)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    t0, seen = time.perf_counter(), 0
    while step < cfg.decoder_steps:
        rng = np.random.default_rng([cfg.seed, 1_000_003, step])
        rows = rng.integers(0, len(frames), cfg.batch_size)
        target = encoder.preprocess(frames[rows])
        loss = F.mse_loss(decoder(z_all[rows]), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += cfg.batch_size
        numbers = {"loss": float(loss.detach()), "samples_per_s": seen / (time.perf_counter() - t0)}
        if step % cfg.checkpoint_every == 0 or step == cfg.decoder_steps:
            history.append({"decoder_step": step, **numbers})
            decoder.eval()
            save("decoder", step, opt)
            decoder.train()
        if progress:
            progress("decoder", step, cfg.decoder_steps, numbers)
    decoder.eval().requires_grad_(False)
    return step


def _resume_state(out: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The saved training state when ``out`` holds an unfinished or extendable run of the same
    config; a folder holding something else is refused rather than overwritten."""
    state = load_train_state(out, cfg.identity(), "train-wm checkpoint")
    if state is None:
        return None
    if state["phase"] == "done":
        # A finished run can be extended with more steps; otherwise there is nothing to do.
        hist = state.get("history") or []
        t_steps = max([h.get("step", 0) for h in hist] or [0])
        d_steps = max([h.get("decoder_step", 0) for h in hist] or [0])
        if cfg.steps > t_steps:
            return {**state, "phase": "transition", "step": t_steps, "optimizer": None}
        if cfg.decoder_steps > d_steps:
            return {**state, "phase": "decoder", "step": d_steps, "optimizer": None}
    return state
