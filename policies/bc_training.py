"""Training a BC policy (``harness train-policy``): (frames, instruction) -> action chunk by
masked MSE, with DrQ-style random shifts, saving a checkpoint every ``save_every`` steps.

``out/step_000500/`` etc. are each a policy (``bc:path=out/step_000500``): one run gives a
ladder of policies of graded quality. ``out/train_state.pt`` (optimizer, step, settings) lets an
interrupted or finished run resume or extend. Batches and shifts are drawn from a generator seeded
by (seed, step), so a resumed run sees the batches an uninterrupted one would, and a run is
deterministic under its seed on a CPU.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, require_module
from policies.bc import BC_SIZES, BCConfig, build_network, resize_frames, save_bc_checkpoint

log = logging.getLogger(__name__)
TRAIN_STATE = "train_state.pt"  # world_models.checkpoint.TRAIN_STATE (not imported here: torch loads lazily)


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out) / f"step_{step:06d}"


@dataclass
class BCTrainConfig:
    data: tuple[str, ...]
    out: str
    steps: int = 5000
    save_every: int = 1000
    chunk: int = 4
    frames: int = 2
    camera: str | None = None  # default: the datasets' first camera (corner2 for Meta-World)
    image_size: int = 64
    size: str = "S"
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 1e-4
    shift: int = 4  # random-shift augmentation: pad by this many pixels, crop back
    val_fraction: float = 0.1
    seed: int = 0
    # One thread: this network is too small to gain from more, and on a shared CPU two threads
    # were 60x slower per step than one (2.5 s vs 42 ms at batch 32, load ~10 on 2 cores).
    threads: int | None = 1
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.data, str):
            self.data = (self.data,)
        self.data = tuple(str(d) for d in self.data)
        if not self.data:
            raise HarnessError("pass at least one --data FILE (a `harness collect` dataset)")
        for name in ("steps", "save_every", "chunk", "frames", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise HarnessError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if self.size not in BC_SIZES:
            raise HarnessError(f"unknown --size {self.size!r}; choose one of {', '.join(BC_SIZES)}")
        step = BCConfig.downsampling(self.size)
        if not isinstance(self.image_size, int) or self.image_size < step or self.image_size % step:
            raise HarnessError(f"--image-size must be a multiple of {step} for --size {self.size}, got {self.image_size!r}")
        if not isinstance(self.shift, int) or not 0 <= self.shift <= self.image_size // 4:
            raise HarnessError(f"--shift must be an integer in [0, {self.image_size // 4}], got {self.shift!r}")
        if not 0 <= self.val_fraction < 1:
            raise HarnessError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lr > 0:
            raise HarnessError(f"--lr must be > 0, got {self.lr}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> BCTrainConfig:
        from harness.yaml_config import construct, yaml_fields

        data = yaml_fields(cls, path, overrides)
        missing = [k for k in ("data", "out") if k not in data]
        if missing:
            raise HarnessError(f"{path}: set {' and '.join(missing)} in the file or pass "
                               f"{' '.join('--' + k for k in missing)}")
        return construct(cls, path, data)

    def identity(self) -> dict[str, Any]:
        """What must match for a resume (the step count may grow)."""
        keep = ("data", "chunk", "frames", "camera", "image_size", "size", "batch_size", "lr", "weight_decay",
                "shift", "val_fraction", "seed")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ((k, getattr(self, k)) for k in keep)}


# data --------------------------------------------------------------------------------------

class ChunkDataset:
    """Every control step of every episode as one sample: the F frames observed at t, t-C, ...
    (the first frame repeated before the episode starts), the instruction, and actions t..t+C-1
    with a mask for the steps past the episode's end."""

    def __init__(self, frames: list[np.ndarray], actions: list[np.ndarray], instruction_ids: list[int],
                 chunk: int, n_frames: int):
        self.frames = np.concatenate(frames)  # (N, S, S, 3) frame t is seen before action t
        self.actions = np.concatenate(actions).astype(np.float32)  # (N, A)
        lengths = np.array([len(a) for a in actions])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.start = np.repeat(starts, lengths)  # episode bounds per sample
        self.end = np.repeat(starts + lengths, lengths)
        self.instruction = np.repeat(np.asarray(instruction_ids, np.int64), lengths)
        self.chunk, self.n_frames = chunk, n_frames

    def __len__(self) -> int:
        return len(self.actions)

    def get(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """frames (B, F, S, S, 3) uint8, instruction (B,), actions (B, C, A), mask (B, C)."""
        back = self.chunk * np.arange(self.n_frames - 1, -1, -1)  # oldest first
        f_idx = np.maximum(rows[:, None] - back[None], self.start[rows, None])
        a_idx = rows[:, None] + np.arange(self.chunk)[None]
        mask = a_idx < self.end[rows, None]
        a_idx = np.minimum(a_idx, self.end[rows, None] - 1)
        return self.frames[f_idx], self.instruction[rows], self.actions[a_idx], mask


def load_demonstrations(cfg: BCTrainConfig) -> dict[str, Any]:
    """Episodes of every --data file at the policy's image size, with their instructions."""
    from harness.data.dataset import list_demos, read_demo
    from world_models.data import check_dataset

    cameras = [check_dataset(path, cfg.camera) for path in cfg.data]
    camera = cameras[0]
    if any(c != camera for c in cameras):
        raise HarnessError(f"the --data files default to different cameras ({', '.join(sorted(set(cameras)))}); "
                           f"pick one with --camera")
    frames, actions, texts, envs = [], [], [], []
    for path in cfg.data:
        for name, attrs in list_demos(path):
            text = attrs.get("instruction")
            if not text:
                raise HarnessError(f"{path}:{name} has no instruction attribute; BC needs the task's instruction "
                                   f"(datasets from `harness collect` have one)")
            demo = read_demo(path, name, keys=[f"{camera}_rgb"])
            if demo.length == 0:
                continue
            frames.append(resize_frames(demo.obs[f"{camera}_rgb"][: demo.length], cfg.image_size))
            actions.append(np.asarray(demo.actions, np.float32))
            texts.append(str(text))
            envs.append(str(attrs.get("env_id", "")))
    if not frames:
        raise HarnessError(f"no episode with at least one action in {', '.join(cfg.data)}")
    dims = sorted({a.shape[-1] for a in actions})
    if len(dims) > 1:
        raise HarnessError(f"the --data files mix action sizes {dims}: train one policy per benchmark")
    instructions = tuple(sorted(set(texts)))
    return {"frames": frames, "actions": actions, "instructions": instructions, "camera": camera,
            "instruction_ids": [instructions.index(t) for t in texts], "env_ids": sorted(set(envs) - {""}),
            "action_dim": dims[0]}


def split_indices(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Held-out episodes spread evenly through the files (collect orders them by task), so every
    task keeps most of its episodes and is represented in validation."""
    n_val = 0 if n < 2 or val_fraction <= 0 else max(1, round(n * val_fraction))
    if n_val == 0:
        return list(range(n)), []
    val = sorted({int(i) for i in np.linspace(n - 1, 0, n_val).round()})
    return [i for i in range(n) if i not in set(val)], val


# the loop ----------------------------------------------------------------------------------

def augment_batch(frames: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
    """Random shift (DrQ): edge-pad by ``pad`` pixels and crop back at a random offset, the same
    offset for every stacked frame of a sample. (B, F, S, S, 3) uint8 in, same shape out."""
    if pad == 0:
        return frames
    B, _, S, _, _ = frames.shape
    padded = np.pad(frames, ((0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    off = rng.integers(0, 2 * pad + 1, size=(B, 2))
    out = np.empty_like(frames)
    for b, (y, x) in enumerate(off):  # slicing copies beat one fancy-indexed gather ~20x here
        out[b] = padded[b, :, y:y + S, x:x + S]
    return out


def chunk_loss(pred, target, mask):
    """MSE over the chunk's valid steps (past an episode's end there is nothing to imitate)."""
    m = mask.unsqueeze(-1).to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / (m.sum() * pred.shape[-1]).clamp_min(1.0)


def evaluate_loss(net, data: ChunkDataset, rows: np.ndarray, batch: int = 256) -> float:
    import torch

    total = count = 0.0
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            f, ins, act, mask = (torch.from_numpy(x) for x in data.get(rows[i:i + batch]))
            n = float(mask.sum()) * act.shape[-1]
            total += float(chunk_loss(net(f, ins), act, mask)) * n
            count += n
    net.train()
    return total / max(count, 1.0)


ProgressFn = Callable[[int, int, dict[str, float]], None]  # (step, total, numbers)


def train_policy(cfg: BCTrainConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Train (or resume) and return a summary with the checkpoints written."""
    require_module("torch", "PyTorch", "models")
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    state = _resume_state(out, cfg)
    demos = load_demonstrations(cfg)
    n_eps = len(demos["frames"])
    train_idx, val_idx = split_indices(n_eps, cfg.val_fraction)
    pick = lambda idx: ChunkDataset([demos["frames"][i] for i in idx], [demos["actions"][i] for i in idx],  # noqa: E731
                                    [demos["instruction_ids"][i] for i in idx], cfg.chunk, cfg.frames)
    train = pick(train_idx)
    val = pick(val_idx) if val_idx else None
    val_rows = (np.random.default_rng([cfg.seed, 7]).permutation(len(val))[:1024] if val is not None else None)
    model_cfg = BCConfig(action_dim=demos["action_dim"], instructions=demos["instructions"], camera=demos["camera"],
                         image_size=cfg.image_size, frames=cfg.frames, chunk=cfg.chunk, size=cfg.size)
    log.info("BC training on %d episodes (%d samples, %d held out), %d instructions, camera %s",
             len(train_idx), len(train), len(val_idx), len(model_cfg.instructions), model_cfg.camera)

    torch.manual_seed(cfg.seed)
    net = build_network(model_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, history = 0, []
    if state is not None:
        from policies.bc import load_bc_checkpoint

        _, saved, _ = load_bc_checkpoint(step_dir(out, state["step"]))
        net.load_state_dict(saved.state_dict())
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        log.info("resuming %s at step %d", out, step)
    net.train()
    info = {"data": [os.path.abspath(d) for d in cfg.data], "env_ids": demos["env_ids"],
            "train_episodes": len(train_idx), "val_episodes": len(val_idx), "train_samples": len(train),
            "parameters": sum(p.numel() for p in net.parameters()), **cfg.info}

    t0, seen, losses = time.perf_counter(), 0, []
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        f, ins, act, mask = train.get(rng.integers(0, len(train), cfg.batch_size))
        f, ins, act, mask = (torch.from_numpy(x) for x in (augment_batch(f, rng, cfg.shift), ins, act, mask))
        loss = chunk_loss(net(f, ins), act, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += cfg.batch_size
        losses.append(float(loss.detach()))
        numbers = {"loss": losses[-1], "samples_per_s": seen / (time.perf_counter() - t0)}
        if step % cfg.save_every == 0 or step == cfg.steps:
            numbers["train_loss"] = float(np.mean(losses))  # mean since the last checkpoint
            losses = []
            if val is not None:
                numbers["val_loss"] = evaluate_loss(net, val, val_rows)
            history.append({"step": step, **numbers})
            folder = step_dir(out, step)
            save_bc_checkpoint(folder, model_cfg, net, {**info, "step": step, "history": history,
                                                        "train": {**asdict(cfg), "data": list(cfg.data)}})
            torch.save({"identity": cfg.identity(), "step": step, "history": history,
                        "optimizer": opt.state_dict()}, out / (TRAIN_STATE + ".partial"))
            os.replace(out / (TRAIN_STATE + ".partial"), out / TRAIN_STATE)
            log.info("step %d: train loss %.4g%s -> %s", step, numbers["train_loss"],
                     f", val loss {numbers['val_loss']:.4g}" if "val_loss" in numbers else "", folder)
        if progress:
            progress(step, cfg.steps, numbers)
    return {"out": str(out), "camera": model_cfg.camera, "instructions": list(model_cfg.instructions),
            "checkpoints": [str(step_dir(out, h["step"])) for h in history], "history": history,
            "parameters": info["parameters"]}


def _resume_state(out: Path, cfg: BCTrainConfig) -> dict[str, Any] | None:
    """The saved state when ``out`` holds a run with the same settings; a folder holding
    something else is refused rather than overwritten."""
    from world_models.checkpoint import load_train_state

    state = load_train_state(out, cfg.identity(), "train-policy", " or extend it")
    if state is None:
        out.mkdir(parents=True, exist_ok=True)
        return None
    if state["step"] >= cfg.steps:
        log.info("%s already has %d steps (asked for %d): nothing to train", out, state["step"], cfg.steps)
    return state
