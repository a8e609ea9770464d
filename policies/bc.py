"""Image-based behaviour cloning: a small CNN from one camera's pixels + the instruction to a
chunk of actions, and the policy that runs a checkpoint of it (``bc:path=DIR/step_000500``).

The policy sees only ``observation["pixels"][camera]``, never ``state``, so the same checkpoint
acts in the simulator and inside a pixel world model. It predicts C actions (default 4), runs them
open-loop, then looks again: one new frame every C control steps, as a world model with frameskip
C produces them. The network sees the last F observed frames (default 2: now and C steps ago).

Instruction conditioning is a learned embedding per instruction seen in training; the list is
stored in the checkpoint and an instruction outside it is refused (one line), never guessed.

Training lives in ``policies/bc_training.py``; this file is the network and the policy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError, require_module
from policies.base import EnvInfo

FORMAT = "wm-harness-bc/1"
WHAT = "BC policy"
HINT = "train one with `harness train-policy --data D.h5 --out DIR` and pass bc:path=DIR/step_NNNNNN"

# Named network sizes: a 4x4 patchify stem, 3x3 stride-2 convs (each halves the side), feature
# and MLP widths. S: 64 px -> 16 -> 8 -> 4, ~0.15M parameters (~0.6 MB in fp32).
BC_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"stem": 8, "widths": (16,), "feature_dim": 32, "embed_dim": 8, "hidden": 64},
    "S": {"stem": 16, "widths": (32, 32), "feature_dim": 128, "embed_dim": 32, "hidden": 192},
}
STEM_STRIDE = 4


@dataclass(frozen=True)
class BCConfig:
    """Everything that rebuilds the network and says how the policy feeds it."""

    action_dim: int
    instructions: tuple[str, ...]
    camera: str
    image_size: int = 64
    frames: int = 2  # observed frames stacked: now, C steps ago, ...
    chunk: int = 4  # actions predicted (and executed open-loop) per observation
    size: str = "S"

    def __post_init__(self):
        if self.size not in BC_SIZES:
            raise HarnessError(f"unknown BC size {self.size!r}; choose one of {', '.join(BC_SIZES)}")
        for name in ("action_dim", "frames", "chunk"):
            if int(getattr(self, name)) < 1:
                raise HarnessError(f"BC {name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.downsampling(self.size):
            raise HarnessError(f"BC size {self.size!r} needs an image size that is a multiple of "
                               f"{self.downsampling(self.size)}, got {self.image_size}")
        if not self.instructions:
            raise HarnessError("a BC policy needs at least one training instruction")
        if len(set(self.instructions)) != len(self.instructions):
            raise HarnessError("BC instructions must be distinct")

    @staticmethod
    def downsampling(size: str) -> int:
        return STEM_STRIDE * 2 ** len(BC_SIZES[size]["widths"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "instructions": list(self.instructions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> BCConfig:
        try:
            return cls(**{**d, "instructions": tuple(d["instructions"])})
        except (TypeError, KeyError) as e:
            raise HarnessError(f"{WHAT} checkpoint {where} has a bad model config ({e}); re-train it") from None


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., size, size, 3) with area interpolation; the one resize used
    both in training and when acting, so the policy sees what it was trained on."""
    import cv2

    frames = np.asarray(frames, dtype=np.uint8)
    if frames.shape[-3:-1] == (size, size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat])
    return out.reshape(*frames.shape[:-3], size, size, 3)


def build_network(cfg: BCConfig):
    """The BC network for ``cfg`` (torch is imported here, not at module import)."""
    require_module("torch", "PyTorch", "models")
    import torch
    from torch import nn

    class BCNet(nn.Module):
        """frames (B, F, S, S, 3) uint8 + instruction ids (B,) -> action chunk (B, C, A)."""

        def __init__(self, c: BCConfig):
            super().__init__()
            size = BC_SIZES[c.size]
            self.chunk, self.action_dim = c.chunk, c.action_dim
            # Patchify first: 3x3 convs at full resolution cost ~5x more CPU time per batch
            # (measured 620 vs 115 ms, 64 frames of 64 px, one thread).
            layers, cin = [nn.Conv2d(3 * c.frames, size["stem"], STEM_STRIDE, stride=STEM_STRIDE), nn.ReLU()], size["stem"]
            for w in size["widths"]:
                layers += [nn.Conv2d(cin, w, 3, stride=2, padding=1), nn.ReLU()]
                cin = w
            self.conv = nn.Sequential(*layers)
            side = c.image_size // BCConfig.downsampling(c.size)
            # Flatten (not pool): where the gripper and objects are is what the policy needs.
            self.project = nn.Sequential(nn.Linear(cin * side * side, size["feature_dim"]),
                                         nn.LayerNorm(size["feature_dim"]))
            self.embed = nn.Embedding(len(c.instructions), size["embed_dim"])
            h = size["hidden"]
            self.head = nn.Sequential(nn.Linear(size["feature_dim"] + size["embed_dim"], h), nn.ReLU(),
                                      nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c.chunk * c.action_dim))
            self.initialize_weights()

        def initialize_weights(self) -> None:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            # Start from "do nothing": small first actions instead of random saturated ones.
            nn.init.normal_(self.head[-1].weight, std=1e-3)

        def forward(self, frames: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
            B, F, S, _, _ = frames.shape
            x = frames.permute(0, 1, 4, 2, 3).reshape(B, F * 3, S, S).float() / 255.0 - 0.5
            feat = self.project(self.conv(x).flatten(1))  # (B, feature_dim)
            h = torch.cat([feat, self.embed(instruction)], dim=-1)
            return self.head(h).view(B, self.chunk, self.action_dim)  # (B, C, A)

    return BCNet(cfg)


def save_bc_checkpoint(folder: str | Path, cfg: BCConfig, net, info: dict[str, Any],
                       extra_files: dict[str, Any] | None = None) -> Path:
    from world_models.checkpoint import save_checkpoint

    config = {"format": FORMAT, "model": cfg.to_dict(), "info": info}
    return save_checkpoint(folder, config, {f"net.{k}": v for k, v in net.state_dict().items()}, extra_files)


def load_bc_checkpoint(folder: str | Path):
    """(BCConfig, network in eval mode, info) or one HarnessError line."""
    require_module("torch", "PyTorch", "models")
    from world_models.checkpoint import load_checkpoint, load_state

    config, tensors = load_checkpoint(folder, WHAT, FORMAT, HINT)
    if not isinstance(config.get("model"), dict):
        raise HarnessError(f"{WHAT} checkpoint {folder} has no model config in config.json; re-train it")
    cfg = BCConfig.from_dict(config["model"], str(folder))
    net = build_network(cfg)
    load_state(net, tensors, "net.", str(folder))
    net.eval().requires_grad_(False)
    return cfg, net, config.get("info", {})


class _Stream:
    """One episode's memory: the frames observed so far (at chunk starts) and the actions left."""

    def __init__(self, instruction_id: int, frames: int):
        self.instruction_id = instruction_id
        self.history: deque[np.ndarray] = deque(maxlen=frames)
        self.queue: deque[np.ndarray] = deque()


class BCPolicy:
    """Runs a ``harness train-policy`` checkpoint from pixels of one camera + the instruction."""

    observes = frozenset({"pixels"})  # never the simulator's state: it runs closed-loop in a world model too

    def __init__(self, env_info: EnvInfo, path: str, threads: int = 1):
        if not isinstance(threads, int) or threads < 1:
            raise HarnessError(f"bc policy threads must be an integer >= 1, got {threads!r}")
        self.cfg, self.net, self.info = load_bc_checkpoint(Path(str(path)).expanduser())
        self.path = str(path)
        self.threads = threads
        cfg = self.cfg
        if cfg.camera not in env_info.cameras:
            raise HarnessError(f"BC policy {path} acts from camera {cfg.camera!r}, which {env_info.env_id} does "
                               f"not render (cameras: {', '.join(env_info.cameras) or 'none'}); pass --camera {cfg.camera}")
        dim = int(np.prod(env_info.action_space.shape))
        if dim != cfg.action_dim:
            raise HarnessError(f"BC policy {path} outputs {cfg.action_dim}-D actions but {env_info.env_id} takes "
                               f"{dim}-D actions: it was trained on another benchmark")
        self._index = {text: i for i, text in enumerate(cfg.instructions)}
        self._instruction_id(env_info.instruction)  # refuse an unknown task before any episode runs
        self.space = env_info.action_space
        self._streams: list[_Stream] = []

    def _instruction_id(self, instruction: str) -> int:
        if instruction not in self._index:
            known = "; ".join(repr(t) for t in self.cfg.instructions)
            raise HarnessError(f"BC policy {self.path} was not trained on the instruction {instruction!r}; "
                               f"it knows: {known}")
        return self._index[instruction]

    # single episode ------------------------------------------------------------------------
    def reset(self, instruction: str, *, seed: int | None = None, init_state: int | None = None) -> None:
        self.reset_batch([instruction])  # deterministic: seed and init_state change nothing

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        return self.act_batch([observation])[0]

    # a batch of episodes stepped together (e.g. several world-model rollouts) --------------
    def reset_batch(self, instructions: list[str], *, seeds: list[int | None] | None = None,
                    init_states: list[int | None] | None = None) -> None:
        """Start one episode per instruction (deterministic: seeds and init states change nothing)."""
        self._streams = [_Stream(self._instruction_id(t), self.cfg.frames) for t in instructions]

    def select_batch(self, rows: list[int]) -> None:
        """Go on with these episodes only, in this order (the others ended)."""
        self._streams = [self._streams[i] for i in rows]

    def act_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        """One action per episode, (B, A) float32; episodes whose chunk ran out share one forward pass."""
        if len(observations) != len(self._streams):
            raise HarnessError(f"BC policy got {len(observations)} observations for {len(self._streams)} "
                               f"episodes: call reset/reset_batch first with one instruction per episode")
        need = [i for i, s in enumerate(self._streams) if not s.queue]
        if need:
            for i in need:
                stream = self._streams[i]
                frame = self._frame(observations[i])
                if not stream.history:  # episode start: no earlier frame, repeat the first
                    stream.history.extend([frame] * (self.cfg.frames - 1))
                stream.history.append(frame)
            chunks = self._predict([self._streams[i] for i in need])
            for i, chunk in zip(need, chunks):
                self._streams[i].queue.extend(chunk)
        return np.stack([s.queue.popleft() for s in self._streams])

    def _frame(self, observation: dict[str, Any]) -> np.ndarray:
        pixels = observation.get("pixels") if isinstance(observation, dict) else None
        if not isinstance(pixels, dict) or self.cfg.camera not in pixels:
            have = ", ".join(pixels) if isinstance(pixels, dict) else "no pixels"
            raise HarnessError(f"BC policy {self.path} needs observation['pixels'][{self.cfg.camera!r}]; "
                               f"the observation has {have}")
        img = np.asarray(pixels[self.cfg.camera])
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise HarnessError(f"BC policy {self.path} needs a uint8 (H, W, 3) image from camera "
                               f"{self.cfg.camera!r}, got {img.dtype} {img.shape}")
        return resize_frames(img, self.cfg.image_size)

    def _predict(self, streams: list[_Stream]) -> np.ndarray:
        import torch

        frames = torch.from_numpy(np.stack([np.stack(s.history) for s in streams]))  # (B, F, S, S, 3)
        ids = torch.tensor([s.instruction_id for s in streams], dtype=torch.long)
        # The net is tiny: one thread is fastest, and on a busy CPU torch's default of all cores
        # made each call ~40x slower (64 vs 1.5 ms per action). Restored after, so the process's
        # other torch work keeps its own setting.
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                chunk = self.net(frames, ids).numpy()  # (B, C, A)
        finally:
            torch.set_num_threads(before)
        return np.clip(chunk, self.space.low, self.space.high).astype(np.float32)
