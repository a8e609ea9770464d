"""Image fidelity metrics on uint8 frames: PSNR, SSIM (Wang et al. 2004, 11x11 Gaussian window,
sigma 1.5, K1 = 0.01, K2 = 0.03, per channel then averaged), and LPIPS when its backbone
weights are available locally (they cannot be downloaded here, so it is reported unavailable
rather than approximated)."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB of uint8 frames (..., H, W, 3); inf for identical frames."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff ** 2).reshape(*diff.shape[:-3], -1).mean(-1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame mean SSIM of uint8 frames (..., H, W, 3), 'valid' filtering as the reference code."""
    import cv2

    lead = a.shape[:-3]
    A = a.reshape(-1, *a.shape[-3:]).astype(np.float64)
    B = b.reshape(-1, *b.shape[-3:]).astype(np.float64)
    g = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = np.empty(len(A))

    def blur(x: np.ndarray) -> np.ndarray:
        y = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
        return y[5:-5, 5:-5] if min(y.shape[:2]) > 10 else y

    for i, (x, y) in enumerate(zip(A, B)):
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        out[i] = s.mean()
    return out.reshape(lead)


def lpips_metric():
    """An LPIPS callable ``(a, b) -> per-frame distance`` when the ``lpips`` package and its
    backbone weights are present locally, else ``(None, reason)``."""
    import importlib.util
    import os

    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed (pip install lpips) and its AlexNet weights are needed"
    hub = os.path.join(os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch")), "hub", "checkpoints")
    if not (os.path.isdir(hub) and any(n.startswith("alexnet") for n in os.listdir(hub))):
        return None, f"LPIPS needs torchvision's AlexNet weights in {hub} (not downloadable here)"
    import lpips
    import torch

    net = lpips.LPIPS(net="alex", verbose=False)

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        to = lambda x: torch.from_numpy(x.reshape(-1, *x.shape[-3:])).permute(0, 3, 1, 2).float() / 127.5 - 1  # noqa: E731
        with torch.no_grad():
            return net(to(a), to(b)).flatten().numpy().reshape(a.shape[:-3])

    return distance, ""
