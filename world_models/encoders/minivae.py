"""A small convolutional VAE trained here from scratch: the embedded reconstruction encoder.

64 px frames -> a 4 x 4 grid of 16-dim latents (16 tokens, the size at which CEM planning stays
interactive on a CPU). The latent is the posterior mean; training is MSE reconstruction plus a
small KL term (beta), as SD-style VAEs are trained without their adversarial loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pixel_decoder import ConvDecoder, ConvEncoder
from .base import Encoder, map_to_tokens, tokens_to_map


class MiniVAE(Encoder):
    kind = "minivae"
    has_decoder = True
    trained_here = True

    def __init__(self, image_size: int = 64, dim: int = 16, channels: tuple[int, ...] | list[int] = (32, 64, 64, 64),
                 beta: float = 1e-4):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        down = 2 ** len(channels)
        if image_size % down:
            raise ValueError(f"minivae image_size {image_size} must be divisible by {down}")
        self.image_size, self.dim, self.channels, self.beta = image_size, dim, channels, beta
        self.grid = (image_size // down, image_size // down)
        self.enc = ConvEncoder(2 * dim, channels)
        self.dec = ConvDecoder(dim, self.grid, image_size, channels=tuple(reversed(channels)))

    def spec(self) -> dict:
        return {"name": self.kind, "params": {"image_size": self.image_size, "dim": self.dim,
                                              "channels": list(self.channels), "beta": self.beta}}

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.enc(x).chunk(2, dim=1)
        return mean, logvar.clamp(-20, 10)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(self.posterior(x)[0])

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(tokens_to_map(z, self.grid))

    # training (harness train-encoder) ------------------------------------------------------
    def training_loss(self, x: torch.Tensor, x_future: torch.Tensor, dt: torch.Tensor,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction needs only the current frame; the future frame is ignored."""
        mean, logvar = self.posterior(x)
        z = mean + torch.randn(mean.shape, generator=generator) * torch.exp(0.5 * logvar)
        recon = F.mse_loss(self.dec(z), x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        return recon + self.beta * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}

    def after_step(self) -> None:
        pass

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return self.state_dict()
