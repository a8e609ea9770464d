"""A small predictive (JEPA-style) encoder trained here from scratch: the embedded counterpart
of V-JEPA, so "prediction vs reconstruction" latents can be compared on a CPU.

Architecture: a convolutional patch stem (64 px -> 4 x 4 tokens) and a small transformer. Training
follows I-JEPA / V-JEPA: an online encoder sees frame ``t`` with a random subset of its tokens
masked; a predictor, told the time offset ``dt`` (0..4 frames), predicts the *target* encoder's
tokens of frame ``t + dt`` (``dt = 0`` is masked-view prediction). The target encoder is an
exponential moving average of the online one and gets no gradient; the loss is on layer-normed
targets. A small variance hinge on the online tokens (VICReg's std term) guards against collapse,
which the EMA alone does not always prevent on a dataset this small. The frozen encoder used by
world models is the EMA target encoder, as in I-JEPA.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..pixel_decoder import ConvEncoder
from .base import Encoder, map_to_tokens


class TokenTransformer(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, num_tokens: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, num_tokens, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x + self.pos))


class JEPABackbone(nn.Module):
    def __init__(self, dim: int, width: int, depth: int, heads: int, channels: tuple[int, ...], num_tokens: int):
        super().__init__()
        self.stem = ConvEncoder(width, channels)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.body = TokenTransformer(width, depth, heads, num_tokens)
        self.head = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = map_to_tokens(self.stem(x))  # (M, N, width)
        if mask is not None:  # (M, N) True = hidden from the encoder
            h = torch.where(mask[..., None], self.mask_token.expand_as(h), h)
        return self.head(self.body(h))  # (M, N, dim)


class MiniJEPA(Encoder):
    kind = "minijepa"
    trained_here = True

    def __init__(self, image_size: int = 64, dim: int = 32, width: int = 128, depth: int = 3, heads: int = 4,
                 channels: tuple[int, ...] | list[int] = (32, 64, 128, 128), max_dt: int = 4,
                 mask_ratio: float = 0.5, ema: float = 0.99, var_weight: float = 1.0):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        down = 2 ** len(channels)
        if image_size % down:
            raise ValueError(f"minijepa image_size {image_size} must be divisible by {down}")
        self.image_size, self.dim, self.width, self.depth, self.heads = image_size, dim, width, depth, heads
        self.channels, self.max_dt, self.mask_ratio, self.ema, self.var_weight = channels, max_dt, mask_ratio, ema, var_weight
        self.grid = (image_size // down, image_size // down)
        n = self.num_tokens
        self.target = JEPABackbone(dim, width, depth, heads, channels, n)  # the frozen encoder after training
        # Training-only parts are built lazily so a loaded frozen encoder carries just `target`.
        self.online: JEPABackbone | None = None
        self.predictor: nn.Module | None = None

    def spec(self) -> dict:
        return {"name": self.kind, "params": {
            "image_size": self.image_size, "dim": self.dim, "width": self.width, "depth": self.depth,
            "heads": self.heads, "channels": list(self.channels), "max_dt": self.max_dt,
            "mask_ratio": self.mask_ratio, "ema": self.ema, "var_weight": self.var_weight}}

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x)

    # training (harness train-encoder) ------------------------------------------------------
    def _training_parts(self) -> None:
        if self.online is None:
            self.online = copy.deepcopy(self.target)
            self.target.requires_grad_(False)
            self.predictor = nn.ModuleDict({
                "inp": nn.Linear(self.dim, self.width),
                "dt": nn.Embedding(self.max_dt + 1, self.width),
                "body": TokenTransformer(self.width, 2, self.heads, self.num_tokens),
                "out": nn.Linear(self.width, self.dim),
            })

    def trainable_parameters(self):
        self._training_parts()
        return list(self.online.parameters()) + list(self.predictor.parameters())

    def training_loss(self, x: torch.Tensor, x_future: torch.Tensor, dt: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """x, x_future (M, 3, S, S); dt (M,) frame offsets in [0, max_dt]."""
        self._training_parts()
        M, N = x.shape[0], self.num_tokens
        mask = torch.rand(M, N, generator=generator) < self.mask_ratio
        z = self.online(x, mask)  # (M, N, D)
        p = self.predictor
        pred = p["out"](p["body"](p["inp"](z) + p["dt"](dt.clamp(0, self.max_dt))[:, None]))
        with torch.no_grad():
            tgt = F.layer_norm(self.target(x_future), (self.dim,))
        pred_loss = F.mse_loss(F.layer_norm(pred, (self.dim,)), tgt)
        std = torch.sqrt(z.reshape(-1, self.dim).var(dim=0) + 1e-4)
        var_loss = F.relu(1.0 - std).mean()
        return pred_loss + self.var_weight * var_loss, {"pred": float(pred_loss.detach()), "std": float(std.mean().detach())}

    @torch.no_grad()
    def after_step(self) -> None:
        for p_t, p_o in zip(self.target.parameters(), self.online.parameters()):
            p_t.mul_(self.ema).add_(p_o.detach(), alpha=1 - self.ema)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("target.")}
