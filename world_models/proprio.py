"""Proprioception read from a world model's latents: the robot's own state for CEM's proprio term.

DINO-WM plans on its visual latents plus the robot's proprioception, which its world model
predicts beside the image. The world models here predict image latents only, so a
``ProprioReadout`` recovers the proprioceptive part of the state from a latent: a ridge
regression (``harness.analyses.probes.ridge``, penalty chosen on a quarter of the training episodes)
from the latent, its token grid average-pooled to at most 4 x 4 and flattened, to the leading
``PROPRIO_DIMS`` state
dimensions of the benchmark (end-effector position, then orientation and gripper where the state
has them). Any predicted latent then has a predicted proprioception, and CEM can add the distance
to the goal's proprioception to its latent cost (``cem:...,proprio=W``).

``harness fit-proprio --wm NAME --data D.h5`` fits it on real frames and their states and saves it
in ``<checkpoint>/proprio`` with a fingerprint of the encoder and latent statistics it reads; it
reports held-out R^2 per dimension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

PROPRIO_DIR = "proprio"
PROPRIO_FORMAT = "wm-harness-proprio/1"
# leading dimensions of the harness's "state" that are the robot's own (envs/*.py):
# Meta-World hand xyz + gripper opening; LIBERO eef xyz, axis-angle, 2 gripper joints;
# CALVIN tcp xyz, euler, gripper width
PROPRIO_DIMS = {"metaworld": 4, "libero": 8, "calvin": 7}
POOLED_GRID = 4  # latents are pooled to at most this many tokens per side before the regression


def readout_fingerprint(encoder_spec: dict[str, Any], checkpoint_tensors: dict[str, Any]) -> str:
    """What a readout depends on: the encoder (spec, and its weights when trained here) and the
    world model's latent statistics."""
    from .checkpoint import tensor_fingerprint

    return tensor_fingerprint(encoder_spec, checkpoint_tensors, ("encoder.", "latent_mean", "latent_std"))


def pooled_features(z, grid: tuple[int, int]):
    """Raw latents (..., N, D) (torch) -> (..., F) features: the token grid average-pooled to at
    most POOLED_GRID per side, flattened token by token (a small grid is the latent itself)."""
    import torch.nn.functional as F

    lead, D = z.shape[:-2], z.shape[-1]
    h, w = grid
    x = z.reshape(-1, h, w, D).permute(0, 3, 1, 2)
    if h > POOLED_GRID or w > POOLED_GRID:
        x = F.adaptive_avg_pool2d(x, (min(h, POOLED_GRID), min(w, POOLED_GRID)))
    return x.permute(0, 2, 3, 1).flatten(1).reshape(*lead, -1)


class ProprioReadout:
    """Raw latents (..., N, D) -> proprioception (..., P): ``features @ weight + bias``."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, target_std: np.ndarray, grid: tuple[int, int],
                 family: str, info: dict[str, Any] | None = None):
        import torch

        self.weight = torch.as_tensor(np.asarray(weight, np.float32))  # (F, P)
        self.bias = torch.as_tensor(np.asarray(bias, np.float32))  # (P,)
        self.target_std = torch.as_tensor(np.asarray(target_std, np.float32))  # (P,): the cost's units
        self.grid, self.family, self.info = tuple(grid), family, dict(info or {})

    @property
    def dims(self) -> int:
        return int(self.bias.shape[0])

    def __call__(self, z):
        return pooled_features(z.float(), self.grid) @ self.weight + self.bias

    def save(self, folder: str | os.PathLike, fingerprint: str) -> Path:
        from .checkpoint import save_checkpoint

        config = {"format": PROPRIO_FORMAT, "grid": list(self.grid), "family": self.family, "dims": self.dims,
                  "fingerprint": fingerprint, "info": self.info}
        return save_checkpoint(folder, config, {"weight": self.weight, "bias": self.bias,
                                                "target_std": self.target_std})


def _hint(name: str, where: object) -> str:
    return f"Fit one with `harness fit-proprio --wm {name} --data DATASET.h5` (writes {where})"


def load_proprio_readout(world_model, folder: str | os.PathLike | None = None) -> ProprioReadout:
    """``<checkpoint>/proprio`` of ``world_model`` (or ``folder``), checked against it; one clear
    line saying how to fit one when it is absent or belongs to another model."""
    from .checkpoint import load_addon

    def build(where, config, tensors):
        return ProprioReadout(tensors["weight"].numpy(), tensors["bias"].numpy(), tensors["target_std"].numpy(),
                              tuple(config["grid"]), config["family"], config.get("info"))

    name = world_model.info.get("name", "the world model")
    return load_addon(world_model, folder, PROPRIO_DIR, "proprioception readout", PROPRIO_FORMAT,
                      readout_fingerprint(world_model.encoder.spec(), world_model.tensors()),
                      lambda where: _hint(name, where) + ", or plan without proprio=.", build)


def check_readout(checkpoint: str | os.PathLike, name: str, family: str) -> None:
    """Before anything runs (no torch): ``<checkpoint>/proprio`` exists and reads ``family``'s
    proprioception. Its fingerprint is checked when it is loaded."""
    import json

    path = Path(checkpoint) / PROPRIO_DIR / "config.json"
    hint = _hint(name, path.parent) + "."
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"cem proprio: world model {name} has no proprioception readout in {path.parent}. "
                           f"{hint}") from None
    except (OSError, ValueError) as e:
        raise HarnessError(f"cem proprio: {path} is unreadable ({type(e).__name__}). {hint}") from None
    if not isinstance(config, dict) or config.get("family") != family:
        got = config.get("family") if isinstance(config, dict) else None
        raise HarnessError(f"cem proprio: the readout of {name} reads {got} proprioception, not {family}'s: fit one "
                           f"on {family} data. {hint}")


def _family(env_id: str) -> str:
    family = str(env_id).split("/")[0]
    if family not in PROPRIO_DIMS:
        raise HarnessError(f"no proprioception layout for env {env_id!r}: known families "
                           f"{', '.join(PROPRIO_DIMS)}")
    return family


def _episodes(world_model, paths: Sequence[str]) -> tuple[list[tuple[np.ndarray, np.ndarray, tuple]], str]:
    """Per episode (frames (T+1, S, S, 3), states (T+1, P), (policy, env_id)) from the world
    model's camera; the family."""
    from harness.data.dataset import list_demos, read_demo

    from .data import check_dataset, episode_group, resize_frames

    camera = world_model.info.get("camera")
    out, families = [], set()
    for path in paths:
        if not Path(path).is_file():
            raise HarnessError(f"--data {path} does not exist: collect one with `harness collect`")
        cam = check_dataset(path, camera)
        for name, attrs in list_demos(path):
            demo = read_demo(path, name, keys=[f"{cam}_rgb", "state"])
            if "state" not in demo.obs:
                raise HarnessError(f"{path}:{name} has no state: collect with the state observation kept")
            family = _family(attrs.get("env_id", ""))
            families.add(family)
            states = demo.obs["state"]
            if "state" in demo.final_obs:
                states = np.concatenate([states, demo.final_obs["state"]])
            frames = demo.frames(cam)
            n = min(len(frames), len(states))
            out.append((resize_frames(frames[:n], world_model.image_size), states[:n, :PROPRIO_DIMS[family]],
                        episode_group(attrs)))
    if len(families) != 1:
        raise HarnessError(f"--data mixes benchmark families ({', '.join(sorted(families)) or 'none'}): fit a "
                           f"readout on one family's data")
    return out, families.pop()


def fit_proprio_readout(world_model, data: Sequence[str], val_fraction: float = 0.2, max_frames: int = 20000,
                        seed: int = 0) -> tuple[ProprioReadout, dict[str, Any]]:
    """Fit the readout on the frames and states of ``data``: ridge on the training episodes with
    each dimension's penalty chosen on the last quarter of them, scored (R^2 per dimension) on the
    held-out episodes (a seeded stratified ``val_fraction`` of all, ``split_episodes``), then
    refitted on everything. ``max_frames``:
    frames kept per part, at random."""
    import torch

    from harness.analyses.probes.ridge import RidgeProbe
    from harness.analyses.probes.scores import r2_per_dim

    from .data import split_episodes

    if not 0.0 < float(val_fraction) < 1.0:
        raise HarnessError(f"--val-fraction {val_fraction!r} must be in (0, 1)")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
        raise HarnessError(f"--max-frames {max_frames!r} must be an integer >= 1")
    episodes, family = _episodes(world_model, data)
    train_idx, val_idx = split_episodes([e[2] for e in episodes], val_fraction, seed)
    if not train_idx or not val_idx:
        raise HarnessError("fitting a proprioception readout needs at least 2 episodes (one held out)")

    def features(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        frames = np.concatenate([episodes[i][0] for i in idx])
        states = np.concatenate([episodes[i][1] for i in idx]).astype(np.float64)
        if len(frames) > max_frames:
            keep = np.random.default_rng(seed).choice(len(frames), max_frames, replace=False)
            frames, states = frames[np.sort(keep)], states[np.sort(keep)]
        with torch.no_grad():
            z = world_model.encode(frames[:, None])[:, 0]
        return pooled_features(z, world_model.encoder.grid).numpy().astype(np.float64), states

    # each dimension's penalty is chosen on the last quarter of the training episodes (whole
    # episodes): one dimension the pixels cannot show must not shrink the others to nothing; the
    # readout refitted on all of them is scored on the held-out episodes, which it has not seen
    fit_idx = train_idx[:max(1, len(train_idx) * 3 // 4)]
    pick_idx = train_idx[len(fit_idx):]
    x_fit, y_fit = features(fit_idx)
    if pick_idx:
        x_pick, y_pick = features(pick_idx)
        chosen = RidgeProbe(per_target=True).fit(x_fit, y_fit, x_pick, y_pick)  # refitted on both parts
        x_tr, y_tr = np.concatenate([x_fit, x_pick]), np.concatenate([y_fit, y_pick])
    else:  # one training episode: the middle of the penalty grid
        chosen = RidgeProbe(per_target=True).fit(x_fit, y_fit)
        x_tr, y_tr = x_fit, y_fit
    alphas = chosen.alpha
    x_va, y_va = features(val_idx)
    r2 = r2_per_dim(y_va, chosen.predict(x_va))
    final = RidgeProbe().fit_penalties(np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va]), alphas)
    weight = final.weight / final.scaler.std[:, None]
    bias = final.y_mean - (final.scaler.mean / final.scaler.std) @ final.weight
    y_all = np.concatenate([y_tr, y_va])
    target_std = np.where(y_all.std(axis=0) > 1e-6, y_all.std(axis=0), 1.0)
    metrics = {"family": family, "dims": int(y_tr.shape[1]), "alpha": [float(a) for a in alphas],
               "heldout_r2": [None if not np.isfinite(v) else float(v) for v in r2],
               "train_frames": len(x_tr), "heldout_frames": len(x_va), "episodes": len(episodes)}
    readout = ProprioReadout(weight, bias, target_std, world_model.encoder.grid, family, metrics)
    return readout, metrics
