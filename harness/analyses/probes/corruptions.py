"""Visual corruptions applied to uint8 frames before encoding, five severities each (as ImageNet-C
grades them). Deterministic: the random draws come from the generator the caller passes.

- ``noise``: additive Gaussian pixel noise, sigma in [0, 1] pixel units, independent per frame.
- ``blur``: Gaussian blur, sigma in pixels at 64 px (scaled with the frame size).
- ``jitter``: colour jitter per frame: brightness, contrast and saturation factors drawn
  uniformly from [1 - s, 1 + s].
- ``occlusion``: a grey square of the given fraction of the frame side, at one random position
  per episode (a static occluder in front of the scene).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from harness.errors import HarnessError

SEVERITIES = {
    "noise": (0.04, 0.08, 0.12, 0.18, 0.26),
    "blur": (0.5, 1.0, 1.5, 2.0, 3.0),
    "jitter": (0.1, 0.2, 0.3, 0.4, 0.5),
    "occlusion": (0.1, 0.2, 0.3, 0.4, 0.5),
}


def _noise(frames: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    x = frames.astype(np.float32) / 255.0 + rng.standard_normal(frames.shape, dtype=np.float32) * level
    return _to_uint8(x)


def _blur(frames: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    import cv2

    sigma = level * frames.shape[2] / 64.0
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigmaX=sigma, sigmaY=sigma) for f in frames])


def _jitter(frames: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    x = frames.astype(np.float32) / 255.0
    M = len(x)
    b, c, s = (rng.uniform(1 - level, 1 + level, (M, 1, 1, 1)).astype(np.float32) for _ in range(3))
    x = x * b
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) * c + x.mean(axis=(1, 2, 3), keepdims=True)
    grey = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return _to_uint8((x - grey) * s + grey)


def _occlusion(frames: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    H, W = frames.shape[1:3]
    side = max(1, round(level * min(H, W)))
    y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    out = frames.copy()
    out[:, y:y + side, x:x + side] = 128
    return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "noise": _noise, "blur": _blur, "jitter": _jitter, "occlusion": _occlusion,
}


def parse_corruption(spec: str, default_severity: int = 3) -> tuple[str, int]:
    """``none``, ``blur`` or ``blur:2`` -> (name, severity 1..5); severity 0 for ``none``."""
    name, _, sev = spec.strip().partition(":")
    if name == "none":
        return "none", 0
    if name not in CORRUPTIONS:
        raise HarnessError(f"unknown corruption {spec!r}: choose none, {', '.join(CORRUPTIONS)} "
                           f"(optionally with a severity, e.g. blur:2)")
    try:
        severity = int(sev) if sev else int(default_severity)
    except ValueError:
        severity = -1
    if not 1 <= severity <= 5:
        raise HarnessError(f"corruption severity must be 1..5, got {spec!r} (severity {sev or default_severity})")
    return name, severity


def corrupt(frames: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (M, H, W, 3) -> uint8 (M, H, W, 3); ``none`` returns the frames unchanged."""
    if name == "none":
        return frames
    return CORRUPTIONS[name](np.asarray(frames, np.uint8), SEVERITIES[name][severity - 1], rng)
