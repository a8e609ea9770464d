"""Convolutional decoders from a token grid to pixels.

``ConvDecoder`` is the decoder half of the from-scratch VAE, and, as ``PixelDecoder``, the light
decoder trained on a frozen semantic encoder's features so every world model can show pixels.

``ShuffleDecoder`` (``PixelDecoder(arch="shuffle")``) is the cheap one: its convolutions stop at
1/``shuffle`` of the image side, and a last convolution emits ``3 * shuffle**2`` channels that a
pixel shuffle (sub-pixel convolution, ESPCN) rearranges into the full-size image. At 64 px with
``shuffle`` 4 and width 64 it decoded 64 frames in 21 ms on one core where the embedded VAE's own
decoder took 290 ms (width 32: 8 ms). It is what ``harness distill-decoder`` trains, TAESD-style,
to stand in for a world model's decoder.
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


class ShuffleDecoder(nn.Module):
    """(M, C, h, w) -> (M, 3, S, S): ``width``-channel stages (nearest upsampling, two conv blocks
    each) up to S / ``shuffle``, then one convolution to ``3 * shuffle**2`` channels and a pixel
    shuffle. Every convolution runs at 1/``shuffle`` of the image side or below."""

    def __init__(self, in_channels: int, grid: tuple[int, int], image_size: int, width: int = 64, shuffle: int = 4):
        super().__init__()
        if shuffle < 1 or image_size % shuffle:
            raise ValueError(f"pixel shuffle {shuffle} must be >= 1 and divide the image size {image_size}")
        self.work = image_size // shuffle
        stages = max(0, math.ceil(math.log2(self.work / max(grid))))
        layers: list[nn.Module] = [conv_block(in_channels, width)]
        for _ in range(stages):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv_block(width, width), conv_block(width, width)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.Conv2d(width, 3 * shuffle * shuffle, 3, padding=1), nn.PixelShuffle(shuffle))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        if x.shape[-1] != self.work or x.shape[-2] != self.work:
            x = F.interpolate(x, size=(self.work, self.work), mode="bilinear", align_corners=False)
        return self.out(x)


DECODER_ARCHS = ("conv", "shuffle")


class PixelDecoder(nn.Module):
    """Tokens (M, N, D) of a frozen encoder -> normalised pixels (M, 3, S, S).

    ``arch`` "conv": convolutions up to the full image side (``ConvDecoder``); "shuffle": up to
    1/``shuffle`` of it, then a pixel shuffle (``ShuffleDecoder``, several times cheaper)."""

    def __init__(self, dim: int, grid: tuple[int, int], image_size: int, width: int = 128, arch: str = "conv",
                 shuffle: int = 4):
        super().__init__()
        if arch not in DECODER_ARCHS:
            raise ValueError(f"pixel decoder arch must be one of {', '.join(DECODER_ARCHS)}, got {arch!r}")
        self.grid = tuple(grid)
        self.config = {"dim": dim, "grid": list(grid), "image_size": image_size, "width": width}
        if arch != "conv":  # conv decoders keep the config they were saved with before arch existed
            self.config.update(arch=arch, shuffle=shuffle)
        self.proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width))
        if arch == "conv":
            self.body = ConvDecoder(width, self.grid, image_size, channels=(width, width, width // 2, width // 4))
        else:
            self.body = ShuffleDecoder(width, self.grid, image_size, width=width, shuffle=shuffle)

    @classmethod
    def from_config(cls, config: dict) -> PixelDecoder:
        return cls(int(config["dim"]), tuple(config["grid"]), int(config["image_size"]), int(config["width"]),
                   config.get("arch", "conv"), int(config.get("shuffle", 4)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(tokens_to_map(self.proj(z), self.grid))
