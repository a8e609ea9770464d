"""A success classifier on frozen encoder latents: the judge that works on a fresh machine.

Per frame, the encoder's patch tokens are pooled (mean and max over tokens), standardised, and a
small MLP gives P(task solved at this frame). An episode's score is the maximum over time of a
``window``-frame moving average of those probabilities, so one noisy frame cannot decide an
episode, while a success held for ``window`` frames does. Verdict: score >= threshold (0.5).

Trained by ``harness train-judge`` from simulator rollouts (datasets written by
``harness collect``), with the simulator oracle's labels: frame k of an episode (k = 0 is the
reset frame) is labelled with the oracle's flag after action k-1, the reset frame as failure.
Episodes, not frames, are split into training and held-out sets (stratified by outcome), and
the loss weights positive frames by (negatives / positives), so rare success frames count.

The checkpoint (``config.json`` + ``model.safetensors``, world_models/checkpoint.py) records the
identity of its encoder: the encoder's spec and a SHA-256 of its frozen weights, plus where to load
it from. A classifier refuses latents from any other encoder with one clear line.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

from .base import check_frames, check_threshold

log = logging.getLogger(__name__)

FORMAT = "wm-harness-success-classifier/1"
POOL_GRID = 2  # the token grid is average-pooled to POOL_GRID x POOL_GRID cells for the features
TRAIN_HINT = ("Train one with `harness train-judge --data D.h5 --wm NAME --out DIR` "
              "(or --encoder NAME --encoder-path P).")


# encoder identity --------------------------------------------------------------------------
def encoder_identity(encoder: Any) -> dict[str, Any]:
    """What makes two encoders' latents interchangeable: the spec and the exact frozen weights."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(encoder.frozen_state().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return {"name": encoder.kind, "spec": encoder.spec(), "weights_sha256": h.hexdigest(),
            "tokens": int(encoder.num_tokens), "dim": int(encoder.dim), "grid": [int(g) for g in encoder.grid]}


def _settings(spec: dict[str, Any]) -> dict[str, Any]:
    """An encoder spec without where its weights were read from (the same weights may sit at two
    paths; the weights themselves are compared by hash when the encoder loads)."""
    params = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    return {"name": spec.get("name"), "params": {k: v for k, v in params.items() if k != "path"}}


def _describe(identity: dict[str, Any]) -> str:
    return f"{identity['name']} ({identity['tokens']} tokens x {identity['dim']} dims, weights {identity['weights_sha256'][:12]})"


def load_judge_encoder(source: dict[str, Any]) -> Any:
    """The encoder a classifier was trained on, from the source recorded in its checkpoint."""
    if source.get("kind") == "world_model":
        from world_models import load_world_model

        return load_world_model(source["name"], source.get("checkpoint")).encoder
    from world_models.encoders import load_encoder

    return load_encoder(source["name"], source.get("path"))


# the network ---------------------------------------------------------------------------------
def _head_class():
    import torch
    from torch import nn

    class SuccessHead(nn.Module):
        """Pooled latent tokens -> standardised features -> MLP -> success logit, per frame."""

        def __init__(self, dim: int, grid: tuple[int, int] | list[int], hidden: int = 64, dropout: float = 0.2):
            super().__init__()
            self.dim, self.grid, self.hidden = dim, (int(grid[0]), int(grid[1])), hidden
            width = dim * (2 + POOL_GRID * POOL_GRID)
            self.register_buffer("feature_mean", torch.zeros(width))
            self.register_buffer("feature_std", torch.ones(width))
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, 1))

        def features(self, z: torch.Tensor) -> torch.Tensor:
            """(M, N, D) -> (M, (2 + P*P) D): mean and max over all tokens, and the token grid
            average-pooled to P x P (P = POOL_GRID), which keeps coarse *where* (the arm's reach)."""
            M, N, D = z.shape
            spatial = z.transpose(1, 2).reshape(M, D, *self.grid)
            pooled = nn.functional.adaptive_avg_pool2d(spatial, POOL_GRID).flatten(1)  # (M, D * P * P)
            return torch.cat([z.mean(dim=1), z.amax(dim=1), pooled], dim=-1)

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            f = (self.features(z.float()) - self.feature_mean) / self.feature_std
            return self.net(f).squeeze(-1)  # (M,)

    return SuccessHead


def episode_score(frame_probs: np.ndarray, window: int) -> float:
    """Max over time of the ``window``-frame moving average (the whole episode if shorter)."""
    p = np.asarray(frame_probs, dtype=np.float64)
    w = max(1, min(int(window), len(p)))
    return float(np.convolve(p, np.ones(w) / w, mode="valid").max())


def frame_labels(success: np.ndarray, num_frames: int) -> np.ndarray:
    """Per-frame labels from per-step oracle flags: frame 0 is the reset (failure), frame k+1
    follows action k."""
    return np.concatenate([[False], np.asarray(success, dtype=bool)])[:num_frames]


# the judge -------------------------------------------------------------------------------------
class LatentClassifierJudge:
    """Success classifier on frozen encoder latents (``latent_classifier:path=DIR``)."""

    needs_latents = True
    needs_success = False
    online = True  # a per-frame MLP: cheap enough to judge a world-model rollout as it goes (stop at success)

    def __init__(self, path: str, window: int | None = None, threshold: float | None = None, encoder: Any = None):
        import torch

        from world_models.checkpoint import load_checkpoint, load_state

        self.path = str(path)
        config, tensors = load_checkpoint(path, "success classifier", FORMAT, TRAIN_HINT)
        try:
            head_cfg, enc_cfg = config["head"], config["encoder"]
            self.identity, self.source = enc_cfg["identity"], enc_cfg["source"]
            self.head = _head_class()(int(head_cfg["dim"]), head_cfg["grid"], int(head_cfg["hidden"]))
            self.window = int(window if window is not None else config["window"])
            self.threshold = check_threshold(threshold if threshold is not None else config["threshold"],
                                             "latent_classifier")
        except (KeyError, TypeError, ValueError) as e:
            raise HarnessError(f"success classifier {path}/config.json is inconsistent ({type(e).__name__}: {e}); "
                               f"re-train it. {TRAIN_HINT}") from None
        if self.window < 1:
            raise HarnessError(f"latent_classifier: window must be >= 1, got {self.window}")
        load_state(self.head, tensors, "", self.path)
        self.head.eval().requires_grad_(False)
        self.config = config
        self._encoder = None
        if encoder is not None:
            self.check_encoder(encoder)
            self._encoder = encoder
        self.label = f"latent_classifier:path={self.path}"
        self._torch = torch

    @classmethod
    def check(cls, path: str, window: int | None = None, threshold: float | None = None,
              encoder_spec: dict[str, Any] | None = None, load_encoder: Callable[[], Any] | None = None,
              **_: Any) -> None:
        """Load the classifier (a small MLP) to refuse a missing or broken one before a run starts,
        and one trained on another kind of encoder than ``encoder_spec`` (the world model's), or on
        other weights than those of the encoder ``load_encoder`` gives (when the caller can load it
        cheaply)."""
        judge = cls(path, window, threshold)
        if encoder_spec is not None and _settings(encoder_spec) != _settings(judge.identity["spec"]):
            raise HarnessError(f"success classifier {judge.path} was trained on latents of {_describe(judge.identity)}; "
                               f"this world model's encoder is {encoder_spec.get('name')!r} with other settings. Train "
                               f"a classifier for it: `harness train-judge --wm NAME --data D.h5 --out DIR`")
        if load_encoder is not None:
            judge.check_encoder(load_encoder())

    def check_encoder(self, encoder: Any) -> None:
        """Refuse an encoder other than the one the classifier was trained on."""
        other = encoder_identity(encoder)
        if other["weights_sha256"] != self.identity["weights_sha256"] or other["spec"] != self.identity["spec"]:
            raise HarnessError(f"success classifier {self.path} was trained on latents of {_describe(self.identity)}; "
                               f"these latents come from {_describe(other)}. Train a classifier for this encoder: "
                               f"`harness train-judge --wm NAME --data D.h5 --out DIR`")

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            enc = load_judge_encoder(self.source)
            self.check_encoder(enc)
            self._encoder = enc
        return self._encoder

    def frame_probabilities(self, latents: np.ndarray) -> np.ndarray:
        z = self._torch.as_tensor(np.asarray(latents, dtype=np.float32))
        if z.ndim != 3 or tuple(z.shape[1:]) != (self.identity["tokens"], self.identity["dim"]):
            raise HarnessError(f"success classifier {self.path} expects latents (T, {self.identity['tokens']}, "
                               f"{self.identity['dim']}) from {_describe(self.identity)}, got {tuple(z.shape)}")
        with self._torch.no_grad():
            return self._torch.sigmoid(self.head(z)).numpy()

    def score(self, frames: np.ndarray | None, instruction: str, latents: np.ndarray | None = None, *,
              success: Sequence[bool] | None = None) -> float:
        if latents is None:
            if frames is None:
                raise HarnessError("latent_classifier judge needs frames or latents")
            frames = check_frames(frames, "latent_classifier judge")
            latents = self.encoder.encode(frames[None])[0].numpy()
        return episode_score(self.frame_probabilities(latents), self.window)


# training ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeTrainConfig:
    data: tuple[str, ...]
    out: str
    wm: str | None = None
    wm_checkpoint: str | None = None
    encoder: str | None = None
    encoder_path: str | None = None
    camera: str | None = None
    steps: int = 300
    lr: float = 3e-3
    hidden: int = 64
    heldout: float = 0.25
    window: int = 3
    threshold: float | None = None  # None: calibrated on the training episodes (balanced accuracy)
    wm_replays: bool = False  # also train on the world model's open-loop replays of the episodes (needs wm)
    seed: int = 0
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.data, str) or not self.data:
            raise HarnessError("pass at least one --data FILE (a dataset written by `harness collect`)")
        for d in self.data:
            if not Path(d).is_file():
                raise HarnessError(f"--data {d}: no such file; write one with `harness collect --env ... --out {d}`")
        if (self.wm is None) == (self.encoder is None):
            raise HarnessError("pass exactly one of --wm NAME (its encoder) or --encoder NAME [--encoder-path P]")
        if self.wm_checkpoint is not None and self.wm is None:
            raise HarnessError("--wm-checkpoint needs --wm NAME")
        if self.wm_replays and self.wm is None:
            raise HarnessError("--wm-replays needs --wm NAME (the world model that replays the episodes)")
        for name, value, low in (("steps", self.steps, 1), ("hidden", self.hidden, 1), ("window", self.window, 1)):
            if not isinstance(value, int) or value < low:
                raise HarnessError(f"--{name} must be an integer >= {low}, got {value!r}")
        if self.threshold is not None:
            check_threshold(self.threshold, "--threshold")
        if not 0.0 < self.heldout < 1.0:
            raise HarnessError(f"--heldout must be a fraction in (0, 1), got {self.heldout!r}")
        if not self.lr > 0:
            raise HarnessError(f"--lr must be > 0, got {self.lr!r}")
        from world_models.checkpoint import check_replaceable

        check_replaceable(Path(self.out), FORMAT)  # refused before training, not after

    def encoder_source(self) -> dict[str, Any]:
        if self.wm is not None:
            ckpt = None if self.wm_checkpoint is None else str(Path(self.wm_checkpoint).resolve())
            return {"kind": "world_model", "name": self.wm, "checkpoint": ckpt}
        path = self.encoder_path
        if path is not None and Path(path).expanduser().exists():
            path = str(Path(path).expanduser().resolve())
        return {"kind": "encoder", "name": self.encoder, "path": path}


@dataclass
class EncodedEpisode:
    source: str  # "file#demo"
    latents: np.ndarray  # (T + 1, N, D)
    labels: np.ndarray  # (T + 1,) bool
    success: bool  # the oracle: any step succeeded
    attrs: dict[str, Any]
    actions: np.ndarray  # (T, A), what the world model replays


def dataset_camera(path: str, camera: str | None) -> str:
    """The camera to read from a dataset: ``camera`` if it has it, else its first one."""
    import h5py

    from harness.data.dataset import list_demos

    try:
        demos = list_demos(path)
        if not demos:
            raise HarnessError(f"{path} holds no episodes")
        with h5py.File(path, "r") as f:
            keys = sorted(k[:-4] for k in f["data"][demos[0][0]]["obs"] if k.endswith("_rgb"))
    except (OSError, KeyError) as e:
        raise HarnessError(f"{path} is not a dataset written by `harness collect` (HDF5 with data/demo_*/obs): "
                           f"{' '.join(str(e).split())[:120]}") from None
    if camera is None:
        if not keys:
            raise HarnessError(f"{path} has no camera images (obs/<camera>_rgb)")
        return keys[0]
    if camera not in keys:
        raise HarnessError(f"{path} has no camera {camera!r}; its cameras: {', '.join(keys) or '(none)'}")
    return camera


def iter_rollouts(paths: Sequence[str], camera: str | None, limit: int | None = None):
    """(source, frames (T+1, H, W, 3), per-step success, attrs, actions (T, A)) for every episode
    of the files."""
    from harness.data.dataset import list_demos, read_demo

    count = 0
    for path in paths:
        cam = dataset_camera(path, camera)
        for name, _ in list_demos(path):
            if limit is not None and count >= limit:
                return
            ep = read_demo(path, name, keys=[f"{cam}_rgb"])
            if ep.success is None:
                raise HarnessError(f"{path}#{name} has no per-step success flags: it was not written by "
                                   f"`harness collect`, so the oracle's labels are unknown")
            count += 1
            yield (f"{path}#{name}", ep.frames(cam), np.asarray(ep.success, dtype=bool), ep.attrs,
                   np.asarray(ep.actions, dtype=np.float32))


def encode_episodes(encoder: Any, paths: Sequence[str], camera: str | None) -> list[EncodedEpisode]:
    out = []
    for source, frames, success, attrs, actions in iter_rollouts(paths, camera):
        z = encoder.encode(frames[None])[0].numpy()  # (T + 1, N, D)
        out.append(EncodedEpisode(source, z, frame_labels(success, len(z)), bool(success.any()), attrs, actions))
    return out


def world_model_replays(world_model: Any, episodes: Sequence[EncodedEpisode], seed: int = 0,
                        batch: int = 64) -> list[EncodedEpisode]:
    """Each episode replayed open-loop in the world model from its first frame under its recorded
    actions (as ``harness eval`` replays a policy in it: one prediction per ``frameskip`` control
    steps, the last prediction held in between), with the real episode's per-step labels. A judge
    trained on these as well learns what success looks like in the world model's own rollouts,
    which are blurrier and drift, not only in real frames."""
    import torch

    f = world_model.frameskip
    out: list[EncodedEpisode] = []
    for b0 in range(0, len(episodes), batch):
        part = episodes[b0:b0 + batch]
        acts = [e.actions for e in part]
        T = max(len(a) for a in acts)
        A = acts[0].shape[1]
        if A != world_model.env_action_dim:
            raise HarnessError(f"{part[0].source} has {A}-D actions; world model takes {world_model.env_action_dim}-D")
        padded = np.zeros((len(part), -(-T // f) * f, A), np.float32)
        for i, a in enumerate(acts):
            padded[i, :len(a)] = a
        gens = [torch.Generator().manual_seed(seed * 1_000_003 + b0 + i) for i in range(len(part))]
        ctx = torch.as_tensor(np.stack([e.latents[:1] for e in part]))  # (B, 1, N, D)
        seq = [ctx[:, 0]]
        last = ctx[:, 0]
        for k in range(1, T + 1):
            if k % f == 0:
                a = torch.as_tensor(padded[:, k - f:k].reshape(len(part), 1, f * A))
                z = world_model.predict(ctx, a, generator=gens)[:, 0]
                ctx = torch.cat([ctx, z[:, None]], 1)[:, -world_model.history:]
                last = z
            seq.append(last)
        lat = torch.stack(seq, 1).numpy()  # (B, T + 1, N, D)
        for i, e in enumerate(part):
            n = len(acts[i]) + 1
            out.append(EncodedEpisode(e.source + "@wm", lat[i, :n], e.labels[:n], e.success, e.attrs, e.actions))
    return out


def split_episodes(episodes: Sequence[EncodedEpisode], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """Episode indices (train, held-out), stratified by outcome, deterministic under ``seed``."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for outcome in (True, False):
        idx = [i for i, e in enumerate(episodes) if e.success == outcome]
        rng.shuffle(idx)
        k = int(round(heldout * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        held += idx[:k]
        train += idx[k:]
    return sorted(train), sorted(held)


def calibrate_threshold(judge_scores: Sequence[float], truth: Sequence[bool]) -> float:
    """The episode-score threshold with the best balanced accuracy (mean of the rates of successes
    and failures judged right) on these episodes: an episode's score is a maximum over time, so
    failed episodes score well above a frame's 0.5 and a fixed 0.5 calls most of them successes.
    Candidates lie midway between consecutive distinct scores; ties go to the one nearest 0.5.
    0.5 when the episodes hold only one outcome."""
    s = np.asarray(judge_scores, dtype=np.float64)
    y = np.asarray(truth, dtype=bool)
    if y.all() or not y.any():
        return 0.5
    u = np.unique(s)
    candidates = np.clip(np.concatenate([[u[0] / 2], (u[1:] + u[:-1]) / 2, [(u[-1] + 1) / 2]]), 0.0, 1.0)

    def balanced(t: float) -> float:
        v = s >= t
        return 0.5 * (v[y].mean() + (~v[~y]).mean())

    return float(max(candidates, key=lambda t: (balanced(t), -abs(t - 0.5))))


def _episode_metrics(judge_scores: list[float], truth: list[bool], threshold: float) -> dict[str, Any]:
    from harness.stats.agreement import accuracy, cohen_kappa, confusion

    if not truth:
        return {"episodes": 0}
    verdicts = [s >= threshold for s in judge_scores]
    majority = max(np.mean(truth), 1 - np.mean(truth))
    return {"episodes": len(truth), "accuracy": accuracy(truth, verdicts), "kappa": cohen_kappa(truth, verdicts),
            "chance_accuracy": float(majority), **confusion(truth, verdicts)}


def train_success_classifier(cfg: JudgeTrainConfig,
                             progress: Callable[[int, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Encode the datasets, train the head on the training episodes, score the held-out ones,
    save the checkpoint. Returns the metrics (also stored in the checkpoint's config)."""
    import torch

    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: JudgeTrainConfig, progress: Callable[[int, int, dict[str, float]], None] | None) -> dict[str, Any]:
    import torch

    from world_models.checkpoint import save_checkpoint

    source = cfg.encoder_source()
    encoder = load_judge_encoder(source)
    identity = encoder_identity(encoder)
    episodes = encode_episodes(encoder, cfg.data, cfg.camera)
    train_idx, held_idx = split_episodes(episodes, cfg.heldout, cfg.seed)
    replays: list[EncodedEpisode] = []
    if cfg.wm_replays:
        from world_models import load_world_model

        replays = world_model_replays(load_world_model(cfg.wm, cfg.wm_checkpoint), episodes, cfg.seed)
    fit = [episodes[i] for i in train_idx] + [replays[i] for i in train_idx if replays]
    z = torch.as_tensor(np.concatenate([e.latents for e in fit]))
    y = torch.as_tensor(np.concatenate([e.labels for e in fit])).float()
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        what = "no successful frame" if positives == 0 else "no failed frame"
        raise HarnessError(f"the training episodes hold {what}: a classifier needs both; collect rollouts of a policy "
                           f"that succeeds (e.g. scripted) and of one that fails (e.g. random)")

    torch.manual_seed(cfg.seed)
    head = _head_class()(identity["dim"], identity["grid"], cfg.hidden)
    feats = head.features(z.float())
    head.feature_mean.copy_(feats.mean(0))
    head.feature_std.copy_(feats.std(0).clamp_min(1e-6))
    pos_weight = torch.tensor((len(y) - positives) / positives)
    optim = torch.optim.AdamW(head.net.parameters(), lr=cfg.lr, weight_decay=1e-2)
    head.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(256, len(y))
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(z[idx]), y[idx], pos_weight=pos_weight)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if progress is not None:
            progress(step, cfg.steps, {"loss": float(loss.detach())})
    head.eval()

    def scores(indices: list[int], pool: Sequence[EncodedEpisode] = episodes) -> list[float]:
        with torch.no_grad():
            return [episode_score(torch.sigmoid(head(torch.as_tensor(pool[i].latents))).numpy(), cfg.window)
                    for i in indices]

    # every split scored once: the training scores serve the calibration and the metrics
    truth_train = [episodes[i].success for i in train_idx]
    truth_held = [episodes[i].success for i in held_idx]
    train_scores, held_scores = scores(train_idx), scores(held_idx)
    replay_train, replay_held = (scores(train_idx, replays), scores(held_idx, replays)) if replays else ([], [])
    threshold = (calibrate_threshold(train_scores + replay_train, truth_train + (truth_train if replays else []))
                 if cfg.threshold is None else float(cfg.threshold))

    def frame_accuracy(indices: list[int]) -> float | None:
        if not indices:
            return None
        with torch.no_grad():
            hits = [((torch.sigmoid(head(torch.as_tensor(episodes[i].latents))) >= 0.5).numpy() == episodes[i].labels)
                    for i in indices]
        return float(np.concatenate(hits).mean())

    metrics = {
        "train": {**_episode_metrics(train_scores, truth_train, threshold), "frame_accuracy": frame_accuracy(train_idx)},
        "heldout": {**_episode_metrics(held_scores, truth_held, threshold), "frame_accuracy": frame_accuracy(held_idx)},
        **({"heldout_replays": _episode_metrics(replay_held, truth_held, threshold),
            "train_replays": _episode_metrics(replay_train, truth_train, threshold)} if replays else {}),
        "final_loss": float(loss.detach()),
        "frames": int(len(y)), "positive_frames": positives,
    }
    config = {
        "format": FORMAT,
        "encoder": {"identity": identity, "source": source},
        "head": {"dim": identity["dim"], "grid": identity["grid"], "hidden": cfg.hidden},
        "window": cfg.window,
        "threshold": threshold,
        "threshold_source": "calibrated on the training episodes" if cfg.threshold is None else "given",
        "camera": dataset_camera(cfg.data[0], cfg.camera),
        "train": {"data": [str(Path(d).resolve()) for d in cfg.data], "steps": cfg.steps, "lr": cfg.lr,
                  "seed": cfg.seed, "heldout_fraction": cfg.heldout, "wm_replays": bool(cfg.wm_replays),
                  "train_episodes": [episodes[i].source for i in train_idx],
                  "heldout_episodes": [episodes[i].source for i in held_idx], "metrics": metrics},
    }
    folder = save_checkpoint(cfg.out, config, {k: v for k, v in head.state_dict().items()})
    log.info("success classifier written to %s: %s", folder, metrics)
    return {"checkpoint": os.fspath(folder), "threshold": threshold, "threshold_source": config["threshold_source"],
            **metrics}
