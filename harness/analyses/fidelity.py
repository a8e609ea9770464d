"""``harness eval-wm``: open-loop rollout fidelity of a world model on recorded episodes.

From ``history`` real context frames, the world model predicts the rest of the episode (up to
``horizon`` steps) under the recorded actions. Per horizon step it reports PSNR and SSIM of the
decoded prediction against the real frame (both at the decoder's resolution), the same for the
decoder's reconstruction of the real latent (the ceiling the decoder allows), LPIPS when its
weights exist locally, and latent MSE (normalised latents) next to the copy-last-frame baseline.
Side-by-side videos show real | predicted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.analyses.metrics import lpips_metric, psnr, ssim
from harness.errors import HarnessError
from harness.run.store import atomic_write_json, check_writable


def _resolve_wm(wm: str | None, checkpoint: str | None):
    from world_models import load_world_model
    from world_models.world_model import WorldModel

    if wm is None and checkpoint is None:
        raise HarnessError("pass --wm NAME (see `harness list world-models`) or --wm-checkpoint DIR")
    if wm is not None:
        return load_world_model(wm, checkpoint)  # an unknown name fails with the known ones
    return WorldModel.load(checkpoint)


def run_eval_wm(*, wm: str | None, checkpoint: str | None, data: str, out: str, episodes: int | None = None,
                horizon: int = 16, seed: int = 0, videos: int = 4, progress=None,
                decoder: str = "full") -> dict[str, Any]:
    """``decoder`` "distilled": predicted and reconstructed frames through the world model's
    distilled decoder (``harness distill-decoder``) instead of its full one."""
    import torch

    from world_models.data import check_dataset, heldout_episodes, load_episodes, resize_frames
    from world_models.distill import check_decoder

    if horizon < 1:
        raise HarnessError(f"--horizon must be >= 1, got {horizon}")
    if episodes is not None and episodes < 1:
        raise HarnessError(f"--episodes must be >= 1, got {episodes}")
    if videos < 0:
        raise HarnessError(f"--videos must be >= 0 (0: none), got {videos}")
    check_decoder(decoder)
    model = _resolve_wm(wm, checkpoint)
    if decoder == "distilled":
        model.distilled_decoder()  # absent or foreign: one line before any work
    camera = model.info.get("camera")
    camera = check_dataset(data, camera)
    out_dir = Path(out)
    check_writable(out_dir)

    all_eps = load_episodes(data, camera, action_dim=model.env_action_dim)
    heldout = os.path.abspath(data) == model.info.get("data")
    idx = heldout_episodes(model.info, len(all_eps)) if heldout else list(range(len(all_eps)))
    if heldout and not idx:
        idx = list(range(len(all_eps)))
    idx = idx[:episodes] if episodes else idx
    H, f, S = model.history, model.frameskip, model.image_size
    lp, lp_reason = lpips_metric()
    per_step: dict[str, list[list[float]]] = {k: [[] for _ in range(horizon)] for k in
                                              ("psnr", "ssim", "recon_psnr", "recon_ssim", "latent_mse",
                                               "copy_last_mse", "lpips")}
    t0 = time.perf_counter()
    used = 0
    for n, e in enumerate(idx):
        ep = all_eps[e]
        frames = ep.frames[::f]
        steps = (len(ep.actions)) // f
        acts = ep.actions[:steps * f].reshape(steps, -1)
        L = min(horizon, len(frames) - H, steps - (H - 1))
        if L < 1:
            continue
        used += 1
        z_real = model.encode(frames[None, :H + L])  # (1, H + L, N, D)
        gen = torch.Generator().manual_seed(seed + e)
        z_pred = model.predict(z_real[:, :H], acts[None, H - 1:H - 1 + L], generator=gen)  # (1, L, N, D)
        pred = model.decode(z_pred, decoder=decoder)[0].numpy()
        recon = model.decode(z_real[:, H:], decoder=decoder)[0].numpy()
        real = resize_frames(frames[H:H + L], S)
        zn_real, zn_pred = model.normalize(z_real[0, H:]), model.normalize(z_pred[0])
        last = model.normalize(z_real[0, H - 1:H])
        numbers = {
            "psnr": psnr(pred, real), "ssim": ssim(pred, real),
            "recon_psnr": psnr(recon, real), "recon_ssim": ssim(recon, real),
            "latent_mse": ((zn_pred - zn_real) ** 2).mean(dim=(1, 2)).numpy(),
            "copy_last_mse": ((last - zn_real) ** 2).mean(dim=(1, 2)).numpy(),
        }
        if lp is not None:
            numbers["lpips"] = lp(pred, real)
        for key, values in numbers.items():
            for k, v in enumerate(values):
                per_step[key][k].append(float(v))
        if n < videos:
            from harness.report.video import compose_frame, write_video

            ctx = resize_frames(frames[:H], S)
            rows = [compose_frame([c, c]) for c in ctx] + [compose_frame([r, p]) for r, p in zip(real, pred)]
            write_video(out_dir / "videos" / f"episode{e:04d}_real_vs_predicted.mp4", rows, fps=10)
        if progress:
            progress(n + 1, len(idx))
    if not used:
        raise HarnessError(f"no episode in {data} is longer than the world model's {H} context frames")

    def mean(key: str) -> list[float | None]:
        return [float(np.mean([v for v in vals if np.isfinite(v)])) if vals else None for vals in per_step[key]]

    result = {
        "world_model": wm or str(checkpoint), "checkpoint": str(checkpoint) if checkpoint else None,
        "data": os.path.abspath(data), "camera": camera, "episodes": used, "heldout_split": heldout,
        "history": H, "frameskip": f, "horizon": horizon, "image_size": S, "seed": seed, "decoder": decoder,
        "per_step": {k: mean(k) for k in per_step if k != "lpips" or lp is not None},
        "lpips": "available" if lp is not None else f"unavailable: {lp_reason}",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    result["summary"] = {k: (float(np.nanmean([v for v in vals if v is not None])) if any(v is not None for v in vals)
                             else None) for k, vals in result["per_step"].items()}
    atomic_write_json(out_dir / "fidelity.json", result)
    return result
