"""The frozen-encoder contract every world model builds on.

``encode(frames uint8 (B, T, H, W, 3)) -> float32 (B, T, N, D)``: per-frame patch tokens.
An encoder resizes frames to its own ``image_size``, normalises them its own way and reads the
layer its config names. Encoders with their own decoder (VAEs) also ``decode`` latents back to
uint8 frames at ``image_size``; the others get a pixel decoder trained on their frozen features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    """Subclasses set ``image_size``, ``grid`` (h, w tokens), ``dim``, ``mean``/``std`` and
    implement ``encode_images`` (and ``decode_images`` when ``has_decoder``)."""

    kind: str = "?"  # registry name, stored in checkpoints
    image_size: int = 64
    grid: tuple[int, int] = (4, 4)
    dim: int = 16
    has_decoder: bool = False
    trained_here: bool = False  # weights live in the world model's checkpoint, not a hub folder
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def spec(self) -> dict[str, Any]:
        """Registry name + parameters that rebuild this encoder (stored in checkpoints)."""
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What ``harness train-encoder`` optimises (encoders trained here only)."""
        return list(self.parameters())

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The weights a world model needs from this encoder (no training-only parts)."""
        return self.state_dict()

    # pixels <-> model input ----------------------------------------------------------------
    def preprocess(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (M, H, W, 3) -> float (M, 3, S, S), resized and normalised."""
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    def postprocess(self, x: torch.Tensor) -> torch.Tensor:
        """float (M, 3, S, S) in the normalised space -> uint8 (M, S, S, 3)."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        x = (x.float() * std + mean).clamp(0, 1)
        return (x * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)

    # the contract ------------------------------------------------------------------------
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) normalised -> (M, N, D)."""
        raise NotImplementedError

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """(M, N, D) -> (M, 3, S, S) in the normalised space."""
        raise NotImplementedError(f"encoder {self.kind!r} has no decoder of its own")

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float32 (B, T, N, D)."""
        B, T = frames.shape[:2]
        flat = frames.reshape(B * T, *frames.shape[2:])
        out = [self.encode_images(self.preprocess(flat[i:i + chunk])) for i in range(0, B * T, chunk)]
        z = torch.cat(out, dim=0).float()
        return z.view(B, T, *z.shape[1:])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """float (B, T, N, D) -> uint8 (B, T, S, S, 3)."""
        B, T, N, D = latents.shape
        flat = latents.reshape(B * T, N, D)
        out = [self.postprocess(self.decode_images(flat[i:i + chunk])) for i in range(0, B * T, chunk)]
        x = torch.cat(out, dim=0)
        return x.view(B, T, *x.shape[1:])


def tokens_to_map(z: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(M, N, D) -> (M, D, h, w)."""
    M, N, D = z.shape
    return z.transpose(1, 2).reshape(M, D, grid[0], grid[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(M, D, h, w) -> (M, N, D)."""
    return x.flatten(2).transpose(1, 2)
