"""Training the from-scratch encoders (``minivae``, ``minijepa``) on a collected dataset.

Each step draws frame pairs (t, t + dt) with dt in [0, max_dt] from the training episodes; the
encoder's own ``training_loss`` uses what it needs (the VAE only frame t, the JEPA both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.errors import HarnessError

from .data import check_dataset, episode_group, load_episodes, split_episodes
from .encoders import ENCODERS, is_trained_here, save_encoder


@dataclass
class EncoderTrainConfig:
    data: str
    encoder: str
    out: str
    camera: str | None = None
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    max_dt: int = 4
    val_fraction: float = 0.1
    seed: int = 0
    threads: int | None = None
    params: dict[str, Any] | None = None  # encoder constructor overrides (image_size, dim, ...)

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise HarnessError(ENCODERS.unknown_message(self.encoder))
        if not is_trained_here(self.encoder):
            trained = [n for n in ENCODERS.names() if is_trained_here(n)]
            raise HarnessError(f"encoder {self.encoder!r} is pretrained and frozen; train-encoder trains "
                               f"{', '.join(trained)}. Use --encoder-path to point train-wm at its weights")
        for name in ("steps", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise HarnessError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        out = Path(self.out)
        if out.is_file() or (out.is_dir() and any(out.iterdir())):
            raise HarnessError(f"--out {self.out} already exists; choose a new folder")


def train_encoder(cfg: EncoderTrainConfig,
                  progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    camera = check_dataset(cfg.data, cfg.camera)
    torch.manual_seed(cfg.seed)
    try:
        encoder = ENCODERS.build(cfg.encoder, **(cfg.params or {}))
    except (TypeError, ValueError) as e:
        raise HarnessError(f"bad {cfg.encoder} settings {cfg.params}: {e}") from None
    episodes = load_episodes(cfg.data, camera, size=encoder.image_size)
    if not episodes:
        raise HarnessError(f"no episode in {cfg.data} has two or more frames: collect longer episodes")
    train_idx, _ = split_episodes([episode_group(e.attrs) for e in episodes], cfg.val_fraction, cfg.seed)
    frames = [episodes[i].frames for i in train_idx]
    pairs = np.array([(e, t) for e, f in enumerate(frames) for t in range(len(f))], dtype=np.int64)
    params = encoder.trainable_parameters()
    encoder.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    t0, numbers = time.perf_counter(), {}
    for step in range(cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])
        rows = pairs[rng.integers(0, len(pairs), cfg.batch_size)]
        dt = rng.integers(0, cfg.max_dt + 1, cfg.batch_size)
        fut = [min(t + d, len(frames[e]) - 1) for (e, t), d in zip(rows, dt)]
        x = encoder.preprocess(np.stack([frames[e][t] for e, t in rows]))
        x_f = encoder.preprocess(np.stack([frames[e][t] for (e, _), t in zip(rows, fut)]))
        dt_real = torch.tensor([f - t for (_, t), f in zip(rows, fut)])
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        loss, numbers = encoder.training_loss(x, x_f, dt_real, generator=torch.Generator().manual_seed(int(rng.integers(2**62))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        encoder.after_step()
        numbers = {"loss": float(loss.detach()), **numbers, "samples_per_s": (step + 1) * cfg.batch_size / (time.perf_counter() - t0)}
        if progress:
            progress(step + 1, cfg.steps, numbers)
    encoder.eval()
    info = {"config": asdict(cfg), "camera": camera, "final": numbers, "train_episodes": len(train_idx)}
    save_encoder(cfg.out, encoder, info)
    return {"checkpoint": cfg.out, "camera": camera, **numbers}
