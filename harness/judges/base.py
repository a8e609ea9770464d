"""The Judge protocol: a rollout's frames (and latents) + its instruction -> P(success).

Every judge scores one episode at a time::

    score(frames uint8 (T, H, W, 3), instruction, latents float32 (T, N, D) | None = None,
          *, success=None) -> float in [0, 1]

and its verdict is ``score >= threshold``. ``needs_latents`` says whether the judge reads
``latents`` (it may still encode frames itself when none are given); ``needs_success`` marks the
simulator oracle, the only judge that reads ``success`` — the simulator's per-step oracle flags,
which exist for simulator rollouts only. Other judges ignore ``success``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harness.errors import HarnessError


@runtime_checkable
class Judge(Protocol):
    threshold: float
    needs_latents: bool
    needs_success: bool

    def score(self, frames: np.ndarray, instruction: str, latents: np.ndarray | None = None, *,
              success: Sequence[bool] | None = None) -> float:
        """Success probability of the episode shown by ``frames`` (time order, last = end)."""


def verdict(judge: Judge, frames: np.ndarray, instruction: str, latents: np.ndarray | None = None, *,
            success: Sequence[bool] | None = None) -> tuple[float, bool]:
    """(score, verdict) of one episode."""
    p = float(judge.score(frames, instruction, latents, success=success))
    return p, p >= judge.threshold


def as_env_judge(judge: Judge) -> Callable[[np.ndarray, Any, str], bool]:
    """Adapter to ``world_models.env.Judge`` (``judge(frames, latents, instruction) -> bool``)."""
    if judge.needs_success:
        raise HarnessError("the simulator oracle cannot judge world-model rollouts: it reads the simulator's "
                           "own success flags; choose vlm:..., consensus:... or latent_classifier:...")

    def call(frames: np.ndarray, latents: Any, instruction: str) -> bool:
        z = None if latents is None else np.asarray(latents.detach().cpu() if hasattr(latents, "detach") else latents)
        return verdict(judge, frames, instruction, z)[1]

    return call


def check_frames(frames: np.ndarray, who: str) -> np.ndarray:
    """uint8 (T, H, W, 3) with T >= 1, or a one-line error."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise HarnessError(f"{who} expects frames as uint8 (T, H, W, 3) with T >= 1, got {arr.dtype} {arr.shape}")
    return arr


def check_threshold(threshold: float, who: str) -> float:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 <= threshold <= 1.0:
        raise HarnessError(f"{who}: threshold must be a number in [0, 1], got {threshold!r}")
    return float(threshold)


def sample_frame_indices(length: int, count: int, sample: int, samples: int) -> list[int]:
    """``count`` frame indices out of ``length``, in order, always ending at the last frame.
    Sample ``k`` of ``samples`` shifts the evenly spaced grid by ``k / samples`` of its step, so
    the samples of a majority vote look at different frames (deterministic, no RNG)."""
    if length <= count:
        return list(range(length))
    if count == 1:
        return [length - 1]
    step = (length - 1) / (count - 1)
    offset = step * sample / max(samples, 1)
    idx = [min(length - 1, int(round(offset + i * step))) for i in range(count)]
    idx[-1] = length - 1
    return sorted(set(idx))
