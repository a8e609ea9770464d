"""Rectified-flow training loss and Euler/Heun samplers for the DiT transition model.

Convention: ``x_t = t * x_data + (1 - t) * noise``, ``t`` in [0, 1], ``t = 1`` is clean data, and
the network predicts the velocity ``x_data - noise`` — or, for a model whose
``config.prediction`` is ``"data"``, the clean target itself (x-prediction, trained on the target's
squared error); the sampler turns it into the velocity ``(x_data_hat - x_t) / (1 - t)``. With
x-prediction the first step from pure noise is the network's estimate of the conditional mean,
which regresses the dynamics the way a deterministic predictor does, so a small model learns
action-dependent motion much sooner. Context frames are always passed clean (``t = 1``); only the
K target frames are noised, with one ``t`` per sample.

Noise-schedule shift: high-dimensional latents keep more signal at a given noise level, so more
of the schedule should be spent at high noise. With noise level ``s = 1 - t`` the shifted level is
``alpha * s / (1 + (alpha - 1) * s)`` and ``alpha = sqrt(N * D / 4096)``, the dimension-dependent
shift of SD3 / RAE that "Reconstruction or Semantics?" uses for 1024-1152-dim latents. ``"auto"``
applies it only above 4096 numbers per frame (small latents keep the plain schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

BASE_DIM = 4096
SAMPLERS = ("euler", "heun")


def resolve_shift(shift: float | str, num_tokens: int, latent_dim: int) -> float:
    if shift == "auto":
        return max(1.0, math.sqrt(num_tokens * latent_dim / BASE_DIM))
    value = float(shift)
    if value <= 0:
        raise ValueError(f"noise-schedule shift must be > 0 or 'auto', got {shift!r}")
    return value


def shift_time(t: torch.Tensor, alpha: float) -> torch.Tensor:
    """Move flow times toward the noise end by ``alpha`` (identity for alpha == 1)."""
    if alpha == 1.0:
        return t
    s = 1.0 - t
    return 1.0 - alpha * s / (1.0 + (alpha - 1.0) * s)


def sample_train_time(batch: int, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal times (SD3's choice: most weight mid-schedule), then the dimension shift."""
    u = torch.randn(batch, generator=generator)
    return shift_time(torch.sigmoid(u), alpha)


def flow_matching_loss(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    context: torch.Tensor,
    target: torch.Tensor,
    actions: torch.Tensor,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean squared velocity error on the target frames.

    context (B, H, N, D) clean; target (B, K, N, D) clean; actions (B, K, A).
    """
    B, H = context.shape[:2]
    K = target.shape[1]
    t = sample_train_time(B, alpha, generator).to(target)  # (B,)
    noise = torch.randn(target.shape, generator=generator).to(target)
    tt = t.view(B, 1, 1, 1)
    x_t = tt * target + (1 - tt) * noise
    frame_t = torch.cat([torch.ones(B, H), t[:, None].expand(B, K)], dim=1).to(target)  # (B, H + K)
    out = model(torch.cat([context, x_t], dim=1), frame_t, actions)[:, H:]
    if predicts_data(model):
        return ((out - target) ** 2).mean()
    return ((out - (target - noise)) ** 2).mean()


def predicts_data(model) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "prediction", "velocity") == "data"


@torch.no_grad()
def sample(
    model: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    context: torch.Tensor,
    actions: torch.Tensor,
    steps: int = 8,
    method: str = "euler",
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    shared: int = 0,
) -> torch.Tensor:
    """Integrate the flow from noise (t=0) to data (t=1) for the K target frames.

    context (B, H, N, D) or (1, H, N, D) shared by all rows; actions (B, K, A) -> (B, K, N, D). Heun costs two network calls per
    step (one at the last step), Euler one. ``shared``: the context's first that many frames are
    the same in every row (a model that caches its context computes them once).
    """
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")
    _, H, N, D = context.shape
    B, K = actions.shape[:2]
    x = noise if noise is not None else torch.randn((B, K, N, D), generator=generator).to(context)
    grid = shift_time(torch.linspace(0.0, 1.0, steps + 1), alpha).tolist()

    if hasattr(model, "encode_context"):
        # the clean context does not change across steps: compute it once (once for all rows
        # when one context of batch 1 is shared, as by CEM candidates)
        cache = model.encode_context(context, shared) if shared else model.encode_context(context)

        def velocity(x_k: torch.Tensor, t: float) -> torch.Tensor:
            return model.forward_target(x_k, torch.full((B, K), t, dtype=context.dtype), actions, cache)
    else:
        ctx = context.expand(B, -1, -1, -1) if context.shape[0] != B else context
        ones = torch.ones(B, H, dtype=context.dtype)

        def velocity(x_k: torch.Tensor, t: float) -> torch.Tensor:
            frame_t = torch.cat([ones, torch.full((B, K), t, dtype=context.dtype)], dim=1).to(context)
            return model(torch.cat([ctx, x_k], dim=1), frame_t, actions)[:, H:]

    if predicts_data(model):
        raw = velocity

        def velocity(x_k: torch.Tensor, t: float) -> torch.Tensor:  # noqa: F811 (x-prediction -> velocity)
            return (raw(x_k, t) - x_k) / (1.0 - t)

    for t0, t1 in zip(grid[:-1], grid[1:]):
        v0 = velocity(x, t0)
        x_next = x + (t1 - t0) * v0
        if method == "heun" and t1 < 1.0:
            x_next = x + (t1 - t0) * 0.5 * (v0 + velocity(x_next, t1))
        x = x_next
    return x
