"""A distilled pixel decoder: a cheap stand-in for a world model's own decoder.

A world model shows its predictions as pixels through its decoder (the VAE's own, or the light
decoder trained on a semantic encoder's features). At batch 64 on a CPU that decoder is most of a
``WorldModelVectorEnv`` step. As TAESD does for Stable Diffusion's VAE, ``distill_decoder`` trains
a much cheaper network (``PixelDecoder(arch="shuffle")``: convolutions at 1/4 of the image side,
then a pixel shuffle) to reproduce the world model's decoder on the frozen latents of real frames.
The latent space, the transition model and the judges are untouched; only the pixels differ, and
the held-out PSNR against the full decoder says by how much.

The result lives beside the world model's checkpoint, in ``<checkpoint>/distilled_decoder``
(``config.json`` + ``model.safetensors``), with a fingerprint of the decoder it was distilled from:
a distilled decoder is refused by any other world model. ``harness eval --wm-decoder distilled``
and ``WorldModelEnv(decoder="distilled")`` use it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

# torch, numpy and the networks are imported where used: configs import this module to check a
# decoder name cheaply

DISTILLED_DIR = "distilled_decoder"
DECODER_FORMAT = "wm-harness-decoder/1"
DECODERS = ("full", "distilled")  # which decoder a world model shows its predictions through


def _hint(name: str, where: object) -> str:
    return (f"Distil one with `harness distill-decoder --wm {name} --data DATASET.h5` (writes {where}), "
            f"or use --wm-decoder full.")


def check_decoder(name: Any, flag: str = "--wm-decoder") -> str:
    if name not in DECODERS:
        raise HarnessError(f"{flag} {name!r} is not a decoder: use {' or '.join(DECODERS)}")
    return name


def fingerprint(encoder_spec: dict[str, Any], checkpoint_tensors: dict[str, Any]) -> str:
    """What a distilled decoder imitates: the encoder's spec and the full decoder's weights as a
    world-model checkpoint stores them (its pixel decoder's, else a VAE trained here's decoder
    half; an external VAE's weights are named by the spec)."""
    from .checkpoint import tensor_fingerprint

    prefix = "decoder." if any(k.startswith("decoder.") for k in checkpoint_tensors) else "encoder.dec."
    return tensor_fingerprint(encoder_spec, checkpoint_tensors, (prefix,))


def teacher_fingerprint(world_model) -> str:
    return fingerprint(world_model.encoder.spec(), world_model.tensors())


def check_distilled(checkpoint: str | os.PathLike, name: str) -> None:
    """Before an eval runs: ``<checkpoint>/distilled_decoder`` exists, is whole and was distilled
    from this checkpoint's decoder (one line otherwise)."""
    from .checkpoint import WM_FORMAT, load_checkpoint

    folder = Path(checkpoint) / DISTILLED_DIR
    hint = _hint(name, folder)
    if not (folder / "config.json").is_file():
        raise HarnessError(f"world model {name} has no distilled decoder in {folder}. {hint}")
    config, _ = load_checkpoint(folder, "distilled decoder", DECODER_FORMAT, hint, weights=False)
    wm_config, tensors = load_checkpoint(checkpoint, "world model", WM_FORMAT)
    if config.get("fingerprint") != fingerprint(wm_config.get("encoder"), tensors):
        raise HarnessError(f"distilled decoder {folder} was made for another world model. {hint}")


def load_distilled_decoder(world_model, folder: str | os.PathLike | None = None):
    """The distilled decoder (a ``PixelDecoder``) of ``world_model`` (from ``<its
    checkpoint>/distilled_decoder`` unless ``folder`` is given), or one clear line saying how to
    make one."""
    from .checkpoint import load_addon, load_state
    from .pixel_decoder import PixelDecoder

    def build(where, config, tensors):
        decoder = PixelDecoder.from_config(config["decoder"])
        load_state(decoder, tensors, "", str(where))
        return decoder.eval().requires_grad_(False)

    name = world_model.info.get("name", "the world model")
    return load_addon(world_model, folder, DISTILLED_DIR, "distilled decoder", DECODER_FORMAT,
                      teacher_fingerprint(world_model), lambda where: _hint(name, where), build)


@dataclass(frozen=True)
class DistillConfig:
    data: tuple[str, ...]
    steps: int = 3000
    width: int = 64
    shuffle: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    val_fraction: float = 0.1
    max_frames: int = 20000  # training frames kept (evenly spaced over the episodes)
    seed: int = 0
    threads: int | None = None

    def __post_init__(self):
        for name in ("steps", "width", "shuffle", "batch_size", "max_frames"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise HarnessError(f"--{name.replace('_', '-')} {v!r} must be an integer >= 1")
        if self.width % 8:
            raise HarnessError(f"--width {self.width} must be a multiple of 8 (the decoder's group norm)")
        if not 0.0 < float(self.val_fraction) < 1.0:
            raise HarnessError(f"--val-fraction {self.val_fraction!r} must be in (0, 1)")
        if not float(self.lr) > 0:
            raise HarnessError(f"--lr {self.lr!r} must be > 0")
        if not self.data:
            raise HarnessError("--data is required: a dataset of real frames from `harness collect`")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise HarnessError(f"--threads {self.threads!r} must be an integer >= 1")


def _frames(world_model, cfg: DistillConfig):
    """uint8 frames (M, S, S, 3) of the training and the held-out episodes (``split_episodes``:
    seeded, stratified by policy and task, per dataset), from the world model's camera at its image size: at most ``max_frames`` (a
    quarter of that held out), evenly spaced over all of them. Episodes are read one at a time and
    only the chosen frames kept, so a large dataset (LIBERO at 224 px) never sits in memory whole."""
    import numpy as np

    from .data import check_dataset, episode_group, iter_episodes, kept_demos, split_episodes

    camera = world_model.info.get("camera")
    sources = []  # (path, camera, frame counts, train episode indices, held-out episode indices)
    for path in cfg.data:
        if not Path(path).is_file():
            raise HarnessError(f"--data {path} does not exist: collect one with `harness collect`")
        cam = check_dataset(path, camera)
        kept = kept_demos(path, cam)  # one read of the file's shapes and attributes
        counts = [n for n, _ in kept]
        tr, va = split_episodes([episode_group(attrs) for _, attrs in kept], cfg.val_fraction, cfg.seed)
        sources.append((path, cam, counts, set(tr), set(va)))
    n_train = sum(c for _, _, counts, tr, _ in sources for i, c in enumerate(counts) if i in tr)
    n_val = sum(c for _, _, counts, _, va in sources for i, c in enumerate(counts) if i in va)
    if not n_train or not n_val:
        raise HarnessError(f"{', '.join(cfg.data)} hold too few episodes to keep some apart for validation: "
                           f"collect at least 2")

    def chosen(total: int, keep: int) -> np.ndarray:
        # positions in the concatenation of all frames of that split, evenly spaced
        return np.arange(total) if total <= keep else np.linspace(0, total - 1, keep).round().astype(int)

    want = {"train": chosen(n_train, cfg.max_frames), "val": chosen(n_val, max(1, cfg.max_frames // 4))}
    seen = {"train": 0, "val": 0}
    kept: dict[str, list] = {"train": [], "val": []}
    for path, cam, counts, tr, _ in sources:
        for i, episode in enumerate(iter_episodes(path, cam, size=world_model.image_size)):
            split = "train" if i in tr else "val"
            start, n = seen[split], len(episode.frames)
            if i >= len(counts) or n != counts[i]:  # the file changed under us
                raise HarnessError(f"{path} changed while it was read (episode {i}): run again")
            pick = want[split][(want[split] >= start) & (want[split] < start + n)] - start
            kept[split].append(episode.frames[pick])
            seen[split] += n
    return np.concatenate(kept["train"]), np.concatenate(kept["val"])


def _targets(world_model, frames, chunk: int = 64):
    """Raw latents (M, N, D) of frames and the full decoder's output on them (float16, to halve memory)."""
    import torch

    zs, ys = [], []
    with torch.no_grad():
        for i in range(0, len(frames), chunk):
            z = world_model.encoder.encode_images(world_model.encoder.preprocess(frames[i:i + chunk]))
            zs.append(z.float())
            ys.append(world_model.decoder_output(z).half())
    return torch.cat(zs), torch.cat(ys)


def _psnr(a, b) -> float:
    """Mean PSNR (dB) between uint8 frame stacks (tensors), identical frames counted as 100 dB (not inf)."""
    import numpy as np

    from harness.analyses.metrics import psnr

    return float(np.mean(np.minimum(psnr(a.numpy(), b.numpy()), 100.0)))


def decode_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best of ``repeats`` timings of ``fn`` after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def distill_decoder(world_model, cfg: DistillConfig, progress: Callable[[int, int, dict], None] | None = None):
    """Train a ``PixelDecoder(arch="shuffle")`` to reproduce ``world_model``'s decoder on the
    latents of real frames (MSE in the encoder's pixel space). Returns it (eval mode) and the
    held-out measures: PSNR of its frames against the full decoder's and against the real ones,
    the full decoder's own PSNR against the real frames, and both decoders' time for 64 frames."""
    import torch
    import torch.nn.functional as F

    from .pixel_decoder import PixelDecoder

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    enc = world_model.encoder
    train_frames, val_frames = _frames(world_model, cfg)
    z_train, y_train = _targets(world_model, train_frames)
    z_val, y_val = _targets(world_model, val_frames)
    student = PixelDecoder(enc.dim, enc.grid, enc.image_size, cfg.width, arch="shuffle", shuffle=cfg.shuffle)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    warm = max(1, cfg.steps // 20)  # linear warm-up over 5% of the steps, then cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warm, 0.5 * (1 + math.cos(
        math.pi * min(1.0, max(0, i + 1 - warm) / max(1, cfg.steps - warm))))))
    gen = torch.Generator().manual_seed(cfg.seed)
    student.train()
    start = time.perf_counter()
    loss = float("nan")
    for step in range(1, cfg.steps + 1):
        rows = torch.randint(0, len(z_train), (cfg.batch_size,), generator=gen)
        out = student(z_train[rows])
        batch_loss = F.mse_loss(out, y_train[rows].float())
        opt.zero_grad(set_to_none=True)
        batch_loss.backward()
        opt.step()
        sched.step()
        loss = float(batch_loss.detach())
        if progress is not None:
            progress(step, cfg.steps, {"loss": loss, "samples_per_s": step * cfg.batch_size /
                                       (time.perf_counter() - start)})
    student.eval().requires_grad_(False)

    with torch.no_grad():
        real = torch.as_tensor(val_frames)
        full = torch.cat([enc.postprocess(y_val[i:i + 256].float()) for i in range(0, len(y_val), 256)])
        mine = torch.cat([enc.postprocess(student(z_val[i:i + 256])) for i in range(0, len(z_val), 256)])
        val_mse = float(torch.cat([F.mse_loss(student(z_val[i:i + 256]), y_val[i:i + 256].float(), reduction="none")
                                   .flatten(1).mean(1) for i in range(0, len(z_val), 256)]).mean())
        z64 = z_train[:64]
        metrics = {
            "train_loss": loss,
            "val_mse_vs_full": val_mse,
            "val_psnr_vs_full": _psnr(mine, full),
            "val_psnr_vs_real": _psnr(mine, real),
            "full_psnr_vs_real": _psnr(full, real),
            "val_frames": len(val_frames),
            "train_frames": len(train_frames),
            "decode_64_s_full": decode_seconds(lambda: world_model.decoder_output(z64)),
            "decode_64_s_distilled": decode_seconds(lambda: student(z64)),
            "train_s": time.perf_counter() - start,
            "threads": torch.get_num_threads(),
        }
    return student, metrics


def save_distilled_decoder(decoder, world_model, folder: str | os.PathLike, cfg: DistillConfig | None = None,
                           metrics: dict[str, Any] | None = None) -> Path:
    from .checkpoint import save_checkpoint

    config = {"format": DECODER_FORMAT, "decoder": decoder.config, "fingerprint": teacher_fingerprint(world_model),
              "world_model": world_model.info.get("name"), "train": None if cfg is None else asdict(cfg),
              "metrics": metrics or {}}
    return save_checkpoint(folder, config, decoder.state_dict())
