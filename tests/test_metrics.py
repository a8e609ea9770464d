"""PSNR and SSIM against hand-computed values."""

from __future__ import annotations

import math

import numpy as np

from harness.analyses.metrics import lpips_metric, psnr, ssim


def test_psnr_known_values():
    a = np.full((2, 16, 16, 3), 100, np.uint8)
    b = a + np.uint8(10)
    assert np.allclose(psnr(a, b), 10 * math.log10(255**2 / 100))  # 28.13 dB
    assert np.all(np.isinf(psnr(a, a)))


def test_ssim_known_values():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = np.full((16, 16, 3), 110, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 110 + c1) / (100**2 + 110**2 + c1)  # constant images: only the luminance term
    assert abs(float(ssim(a, b)) - expected) < 1e-9
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32)
    x = np.stack([np.broadcast_to(ramp[:, None, None], (32, 32, 3))] * 2).astype(np.uint8)  # smooth images
    assert np.allclose(ssim(x, x), 1.0)
    noisy = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim(x, noisy) < 0.9) and ssim(x, noisy).shape == (2,)


def test_lpips_is_reported_unavailable_rather_than_faked(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    fn, reason = lpips_metric()
    assert fn is None and reason
