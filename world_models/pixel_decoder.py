"""Convolutional decoders from a token grid to pixels.

``ConvDecoder`` is the decoder half of the from-scratch VAE, and, as ``PixelDecoder``, the light
decoder trained on a frozen semantic encoder's features so every world model can show pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .encoders.base import tokens_to_map


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                         nn.SiLU())


class ConvEncoder(nn.Module):
    """(M, 3, S, S) -> (M, out, S / 2^len(channels), ...): one stride-2 stage per channel entry."""

    def __init__(self, out_channels: int, channels: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        layers: list[nn.Module] = [conv_block(3, channels[0])]
        c = channels[0]
        for c_out in channels:
            layers += [conv_block(c, c_out, stride=2), conv_block(c_out, c_out)]
            c = c_out
        layers.append(nn.Conv2d(c, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(M, D, h, w) -> (M, 3, S, S): nearest-upsample stages until S is reached, then an exact
    resize when the grid does not divide S by a power of two (e.g. 16 x 16 DINOv2 tokens)."""

    def __init__(self, in_channels: int, grid: tuple[int, int], image_size: int,
                 channels: tuple[int, ...] = (128, 128, 64, 32)):
        super().__init__()
        self.image_size = image_size
        stages = max(0, math.ceil(math.log2(image_size / max(grid))))
        chans = list(channels[:stages]) + [channels[-1]] * max(0, stages - len(channels))
        layers: list[nn.Module] = [conv_block(in_channels, chans[0] if chans else channels[-1])]
        c = chans[0] if chans else channels[-1]
        for c_out in chans:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(c, c_out), conv_block(c_out, c_out)]
            c = c_out
        self.net = nn.Sequential(*layers)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.out(x)


class PixelDecoder(nn.Module):
    """Tokens (M, N, D) of a frozen encoder -> normalised pixels (M, 3, S, S)."""

    def __init__(self, dim: int, grid: tuple[int, int], image_size: int, width: int = 128):
        super().__init__()
        self.grid = tuple(grid)
        self.config = {"dim": dim, "grid": list(grid), "image_size": image_size, "width": width}
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        self.body = ConvDecoder(width, self.grid, image_size, channels=(width, width, width // 2, width // 4))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(tokens_to_map(self.proj(z), self.grid))
