"""``harness probe``: how much of the action can be read off frozen latents (inverse-dynamics probes).

The protocol follows "What Makes Video World Model Latents Action-Relevant" and the IDM metric of
"Reconstruction or Semantics?": from the latents of frames ``t`` and ``t + k`` a probe predicts the
``k`` actions taken between them. Per frame the latent tokens (N, D) are mean-pooled (or flattened,
``pool="flatten"``); a pair's feature is ``[f(z_t), f(z_{t+k})]``, standardised with statistics of
the training split only. Probes: closed-form ridge (penalty chosen on a validation part of the
training split) and an optional MLP (early stopping on that part). Scored on held-out episodes (or
held-out tasks): R^2 and Pearson r, overall and per action-dimension group, mean and std over seeds
(a seed draws the held-out episodes or tasks, the validation episodes, the MLP's initialisation and
the random projection).
Baselines on exactly the same pairs: the same probe on a Gaussian random projection of the pixels
to the same feature size, and predicting the training mean.

Latents come from an encoder (optionally several layers), or from a world model: its encoder's
latents of real frames and, with ``generated=True``, the latents it predicts open loop from real
context frames under the recorded actions (windows of ``horizon`` steps restarted from real
context). Corruptions are applied to the held-out frames before encoding; the probe is trained on
clean frames, so a corrupted score measures how well the clean probe survives the shift.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

log = logging.getLogger(__name__)

PROBE_FORMAT = "wm-harness-probe/1"

# Action layout per env family: group -> [lo, hi) action dimensions.
ACTION_GROUPS: dict[str, dict[str, tuple[int, int]]] = {
    "metaworld": {"translation": (0, 3), "gripper": (3, 4)},
    "libero": {"translation": (0, 3), "rotation": (3, 6), "gripper": (6, 7)},
    "calvin": {"translation": (0, 3), "rotation": (3, 6), "gripper": (6, 7)},
}
GRIPPER_GROUPS = ("gripper",)  # averaged, not summed, by the "net" target
PROBES = ("linear", "mlp")
SPLITS = ("episode", "task")
TARGETS = ("chunk", "net")
POOLS = ("mean", "flatten")
MAX_FLATTEN = 8192


@dataclass
class ProbeConfig:
    data: tuple[str, ...]
    out: str
    encoder: str | None = None
    encoder_path: str | None = None
    layers: tuple[int, ...] = ()
    wm: str | None = None
    wm_checkpoint: str | None = None
    generated: bool = False
    ks: tuple[int, ...] = (1, 4)
    probes: tuple[str, ...] = ("linear",)
    corruptions: tuple[str, ...] = ("none",)
    severity: int = 3
    split: str = "episode"
    test_fraction: float = 0.2
    val_fraction: float = 0.2
    seeds: int = 3
    seed: int = 0
    target: str = "chunk"
    pool: str = "mean"
    camera: str | None = None
    family: str | None = None
    horizon: int = 16
    threads: int | None = None

    def __post_init__(self):
        from harness.analyses.probes.corruptions import parse_corruption

        self.data = tuple(self.data)
        self.ks, self.layers, self.probes = tuple(self.ks), tuple(self.layers), tuple(self.probes)
        if not self.data:
            raise HarnessError("pass --data D.h5 (a dataset from `harness collect`); repeat for several")
        for path in self.data:
            if not os.path.isfile(path):
                raise HarnessError(f"dataset {path} does not exist: write one with `harness collect --env ... --out {path}`")
        uses_wm = self.wm is not None or self.wm_checkpoint is not None
        if (self.encoder is None) == (not uses_wm):
            which = "both were given" if uses_wm else "neither was given"
            raise HarnessError("pass one of --encoder NAME (frozen encoder latents) or --wm NAME / --wm-checkpoint DIR "
                               f"(a world model's latents); {which}")
        if self.generated and not uses_wm:
            raise HarnessError("--generated probes a world model's predicted latents: pass --wm NAME as well")
        if uses_wm and self.layers:
            raise HarnessError("--layer applies to --encoder (a pretrained encoder's hidden states), not to --wm")
        if self.encoder is not None:
            from world_models.encoders import ENCODERS

            if self.encoder not in ENCODERS:
                raise HarnessError(ENCODERS.unknown_message(self.encoder))
            if self.layers:
                import inspect

                if "layer" not in inspect.signature(ENCODERS.entry(self.encoder).load()).parameters:
                    with_layers = [n for n in ENCODERS.names()
                                   if "layer" in inspect.signature(ENCODERS.entry(n).load()).parameters]
                    raise HarnessError(f"encoder {self.encoder!r} has no selectable layers; --layer applies to "
                                       f"{', '.join(with_layers)}")
        if not self.ks or any(int(k) < 1 for k in self.ks):
            raise HarnessError(f"--k must be >= 1 (frames between the pair), got {list(self.ks)}")
        self.ks = tuple(sorted(set(int(k) for k in self.ks)))
        for p in self.probes:
            if p not in PROBES:
                raise HarnessError(f"unknown --probe {p!r}: choose {' or '.join(PROBES)}")
        self.probes = tuple(dict.fromkeys(self.probes)) or ("linear",)
        corrs = ["none"] + [c for c in self.corruptions if c.strip() != "none"]
        self.corruptions = tuple(dict.fromkeys(corrs))
        for c in self.corruptions:
            parse_corruption(c, self.severity)
        checks = [(self.split in SPLITS, f"--split must be {' or '.join(SPLITS)}, got {self.split!r}"),
                  (self.target in TARGETS, f"--target must be {' or '.join(TARGETS)}, got {self.target!r}"),
                  (self.pool in POOLS, f"--pool must be {' or '.join(POOLS)}, got {self.pool!r}"),
                  (0 < self.test_fraction < 1, f"--test-fraction must be in (0, 1), got {self.test_fraction}"),
                  (0 < self.val_fraction < 1, f"--val-fraction must be in (0, 1), got {self.val_fraction}"),
                  (self.seeds >= 1, f"--seeds must be >= 1, got {self.seeds}"),
                  (self.horizon >= 1, f"--horizon must be >= 1, got {self.horizon}"),
                  (self.family is None or self.family in ACTION_GROUPS,
                   f"--family must be one of {', '.join(ACTION_GROUPS)}, got {self.family!r}")]
        for ok, message in checks:
            if not ok:
                raise HarnessError(message)


# data -----------------------------------------------------------------------------------------
@dataclass
class ProbeEpisode:
    frames: np.ndarray  # (S+1, H, W, 3) uint8, one frame per model step
    actions: np.ndarray  # (S, f, A) float32: the f control actions of each model step
    task: str
    name: str


def dataset_family(path: str | os.PathLike) -> str | None:
    """The env family a dataset was collected in: from its episodes' ``env_id`` (``metaworld/...``),
    its ``env_args``, or LIBERO's own file attributes; None when nothing says."""
    import json

    import h5py

    with h5py.File(path, "r") as f:
        data = f["data"]
        ids = []
        for name in list(data.keys())[:1]:
            env_id = data[name].attrs.get("env_id")
            if env_id is not None:
                ids.append(env_id.decode() if isinstance(env_id, bytes) else str(env_id))
        try:
            args = json.loads(data.attrs.get("env_args", "{}"))
        except (TypeError, ValueError):
            args = {}
        ids += list(args.get("env_ids", [])) if isinstance(args, dict) else []
        text = " ".join(str(v) for v in [*data.attrs.keys(), args.get("env_name", "") if isinstance(args, dict) else ""])
    for env_id in ids:
        family = env_id.split("/", 1)[0]
        if family in ACTION_GROUPS:
            return family
    if "bddl" in text or "problem_info" in text or "libero" in text.lower():
        return "libero"
    return None


def _load_data(cfg: ProbeConfig, camera: str | None, stride: int) -> tuple[list[ProbeEpisode], dict[str, Any]]:
    from world_models.data import check_dataset, load_episodes

    cams = [check_dataset(p, camera) for p in cfg.data]
    if camera is None and len(set(cams)) > 1:
        camera = cams[0]
        cams = [check_dataset(p, camera) for p in cfg.data]
    camera = cams[0]
    families = {p: cfg.family or dataset_family(p) for p in cfg.data}
    unknown = [p for p, fam in families.items() if fam is None]
    if unknown:
        raise HarnessError(f"cannot tell which env family {unknown[0]} was collected in (no env_id attribute): "
                           f"pass --family {' | '.join(ACTION_GROUPS)}")
    if len(set(families.values())) > 1:
        raise HarnessError(f"the datasets mix env families ({', '.join(f'{p}: {f}' for p, f in families.items())}); "
                           f"probe one family at a time")
    family = next(iter(families.values()))
    A = max(hi for _, hi in ACTION_GROUPS[family].values())
    episodes: list[ProbeEpisode] = []
    for path in cfg.data:
        for i, ep in enumerate(load_episodes(path, camera)):
            if ep.actions.shape[1] != A:
                raise HarnessError(f"{path} has {ep.actions.shape[1]}-D actions, but {family} actions are {A}-D "
                                   f"({', '.join(ACTION_GROUPS[family])}); pass the right --family")
            S = len(ep.actions) // stride
            if S < 1:
                continue
            task = str(ep.attrs.get("env_id") or ep.attrs.get("task") or os.path.basename(path))
            episodes.append(ProbeEpisode(frames=ep.frames[::stride][:S + 1],
                                         actions=ep.actions[:S * stride].reshape(S, stride, A),
                                         task=task, name=f"{os.path.basename(path)}:{i}"))
    info = {"data": [os.path.abspath(p) for p in cfg.data], "camera": camera, "family": family, "action_dim": A,
            "groups": {g: list(r) for g, r in ACTION_GROUPS[family].items()}}
    return episodes, info


def split_episodes(episodes: list[ProbeEpisode], by: str, test_fraction: float,
                   seed: int = 0) -> tuple[list[int], list[int]]:
    """Held-out test episodes drawn under ``seed``: per task a random ``test_fraction`` of its
    whole episodes (``by="episode"``), or a random ``test_fraction`` of the tasks with all their
    episodes (``by="task"``, task-OOD). Each probe seed draws its own, so the spread over seeds
    includes the choice of held-out data, not only the fit."""
    rng = np.random.default_rng([seed, 7])
    tasks: dict[str, list[int]] = {}
    for i, ep in enumerate(episodes):
        tasks.setdefault(ep.task, []).append(i)
    if by == "task":
        names = sorted(tasks)
        if len(names) < 2:
            raise HarnessError(f"--split task needs episodes of at least 2 tasks; the data has {len(names)} "
                               f"({', '.join(names)}): use --split episode or add --data of another task")
        n_test = min(len(names) - 1, max(1, math.ceil(test_fraction * len(names))))
        test = [i for t in rng.permutation(names)[:n_test] for i in tasks[str(t)]]
    else:
        test = []
        for name in sorted(tasks):
            idx = tasks[name]
            if len(idx) >= 2:
                n_test = min(len(idx) - 1, max(1, math.ceil(test_fraction * len(idx))))
                test += [int(i) for i in rng.permutation(idx)[:n_test]]
    train = [i for i in range(len(episodes)) if i not in set(test)]
    if not test or len(train) < 2:
        raise HarnessError(f"too few episodes to split by {by}: {len(episodes)} episodes in "
                           f"{len(tasks)} task(s) give {len(train)} training and {len(test)} held-out; the probe "
                           f"needs >= 2 training episodes (one for validation) and >= 1 held out: collect more")
    return sorted(train), sorted(test)


def validation_split(train: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded choice of validation episodes among the training ones (at least one each side)."""
    rng = np.random.default_rng(seed)
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    val = sorted(rng.choice(train, size=n_val, replace=False).tolist())
    return [i for i in train if i not in set(val)], val


# pairs and targets ------------------------------------------------------------------------------
@dataclass
class Sequence:
    """Pooled latents of consecutive model steps of one episode, from step ``start``. Pairs
    ``(i, i + k)`` count only when ``i + k >= first_target`` (generated windows: the predicted frames)."""

    episode: int
    start: int
    feats: np.ndarray  # (L, P)
    first_target: int = 0


def action_target(actions: np.ndarray, t: int, k: int, target: str, gripper: np.ndarray) -> np.ndarray:
    """The probe's target for the pair (t, t + k): ``chunk`` = the k * f actions between the frames,
    concatenated; ``net`` = their sum (the net commanded motion) with gripper dims averaged."""
    a = actions[t:t + k].reshape(-1, actions.shape[-1])  # (k * f, A)
    if target == "chunk":
        return a.reshape(-1)
    return np.where(gripper, a.mean(axis=0), a.sum(axis=0))


def target_dims(A: int, steps: int, target: str) -> np.ndarray:
    """Action dimension of each target column."""
    return np.tile(np.arange(A), steps) if target == "chunk" else np.arange(A)


def build_pairs(seqs: list[Sequence], episodes: list[ProbeEpisode], keep: set[int], k: int, target: str,
                gripper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X, Y = [], []
    for s in seqs:
        if s.episode not in keep:
            continue
        acts = episodes[s.episode].actions
        for i in range(max(0, s.first_target - k), len(s.feats) - k):
            X.append(np.concatenate([s.feats[i], s.feats[i + k]]))
            Y.append(action_target(acts, s.start + i, k, target, gripper))
    if not X:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.stack(X).astype(np.float32), np.stack(Y).astype(np.float32)


# latents ----------------------------------------------------------------------------------------
def pool_latents(z, pool: str) -> np.ndarray:
    """(..., N, D) -> (..., D) mean over tokens, or (..., N * D) flattened."""
    z = np.asarray(z, np.float32)
    return z.mean(axis=-2) if pool == "mean" else z.reshape(*z.shape[:-2], -1)


def random_projection(frames: np.ndarray, dim: int, seed: int, block: int = 8192) -> np.ndarray:
    """uint8 (M, H, W, 3) -> (M, dim): pixels in [0, 1] times a Gaussian matrix (entries N(0, 1/p)),
    drawn block by block from ``seed`` so a large frame never needs the whole matrix in memory."""
    x = frames.reshape(len(frames), -1).astype(np.float32) / 255.0
    p = x.shape[1]
    out = np.zeros((len(x), dim), np.float32)
    for b, lo in enumerate(range(0, p, block)):
        w = np.random.default_rng([seed, b]).standard_normal((min(block, p - lo), dim), dtype=np.float32)
        out += x[:, lo:lo + block] @ w
    return out / np.sqrt(p)


@dataclass
class LatentSource:
    """Where latents come from: ``encode(frames uint8 (M, H, W, 3)) -> (M, N, D)``; a world model
    also rolls out (``model``)."""

    name: str
    layer: int | None
    encode: Callable[[np.ndarray], Any]
    model: Any = None
    info: dict[str, Any] = field(default_factory=dict)


def _encoder_sources(cfg: ProbeConfig):
    from world_models.encoders import load_encoder

    for layer in cfg.layers or (None,):
        enc = load_encoder(cfg.encoder, cfg.encoder_path, **({} if layer is None else {"layer": layer}))
        yield LatentSource(cfg.encoder, layer, lambda fr, enc=enc: enc.encode(fr[None])[0].numpy(),
                           info={"kind": "encoder", "name": cfg.encoder, "path": cfg.encoder_path,
                                 "image_size": enc.image_size, "tokens": enc.num_tokens, "dim": enc.dim})


def generated_windows(model, z: np.ndarray, actions: np.ndarray, horizon: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """Open-loop rollouts of one episode: from each window start s (every ``horizon`` steps), the
    world model predicts up to ``horizon`` frames from the real latents z[s:s+H] under the recorded
    actions. Returns (s, latents (H + L, N, D)) = real context followed by the predicted frames."""
    import torch

    H = model.history
    S = len(z) - 1
    starts = list(range(0, S - H + 1, horizon))
    out = []
    gen = torch.Generator().manual_seed(seed)
    acts = actions.reshape(len(actions), -1)  # (S, f * A)
    by_len: dict[int, list[int]] = {}
    for s in starts:
        by_len.setdefault(min(horizon, S - (s + H) + 1), []).append(s)
    for L, group in by_len.items():
        ctx = torch.as_tensor(np.stack([z[s:s + H] for s in group]))
        a = np.stack([acts[s + H - 1:s + H - 1 + L] for s in group])
        pred = model.predict(ctx, a, generator=gen).numpy()  # (B, L, N, D)
        out += [(s, np.concatenate([z[s:s + H], p])) for s, p in zip(group, pred)]
    return sorted(out, key=lambda w: w[0])


def _rp_sequences(seqs: list[Sequence], dim: int, seed: int, c: int, cache: dict, episodes: list[ProbeEpisode],
                  test_frames: Callable[[int, int], np.ndarray]) -> list[Sequence]:
    """The random-projection features of the same frames, in the same sequence geometry as ``seqs``."""
    out = []
    for s in seqs:
        key = (seed, dim, c, s.episode)
        if key not in cache:
            frames = episodes[s.episode].frames if c == 0 else test_frames(s.episode, c)
            cache[key] = random_projection(frames, dim, seed)
        out.append(Sequence(s.episode, s.start, cache[key][s.start:s.start + len(s.feats)], s.first_target))
    return out


# the protocol -------------------------------------------------------------------------------------
def _fit(kind: str, seed: int, x, y, xv, yv):
    from harness.analyses.probes.mlp import MLPProbe
    from harness.analyses.probes.ridge import RidgeProbe

    probe = RidgeProbe().fit(x, y, xv, yv) if kind == "linear" else MLPProbe(seed=seed).fit(x, y, xv, yv)
    detail = {"alpha": probe.alpha} if kind == "linear" else {"best_epoch": probe.best_epoch}
    return probe, detail


def _stat(values: list[float]) -> dict[str, float | None]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def _aggregate(per_seed: list[dict[str, Any]], groups: list[str]) -> dict[str, Any]:
    return {"r2": _stat([s["r2"] for s in per_seed]), "pearson": _stat([s["pearson"] for s in per_seed]),
            "r2_groups": {g: _stat([s["r2_groups"][g] for s in per_seed]) for g in groups},
            "pearson_groups": {g: _stat([s["pearson_groups"][g] for s in per_seed]) for g in groups}}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def run_probe(cfg: ProbeConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    import torch

    from harness.analyses.probes.corruptions import corrupt, parse_corruption
    from harness.analyses.probes.scores import score
    from harness.run.store import atomic_write_json, check_writable

    t0 = time.perf_counter()
    say = progress or (lambda msg: log.info(msg))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out)
    check_writable(out_dir)

    model = None
    if cfg.wm is not None or cfg.wm_checkpoint is not None:
        from harness.analyses.fidelity import _resolve_wm

        model = _resolve_wm(cfg.wm, cfg.wm_checkpoint)
    stride = model.frameskip if model is not None else 1
    camera = cfg.camera or (model.info.get("camera") if model is not None else None)
    episodes, info = _load_data(cfg, camera, stride)
    if model is not None and model.env_action_dim != info["action_dim"]:
        raise HarnessError(f"world model {cfg.wm or cfg.wm_checkpoint} takes {model.env_action_dim}-D actions, the data "
                           f"has {info['action_dim']}-D")
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    splits = {seed: split_episodes(episodes, cfg.split, cfg.test_fraction, seed) for seed in seeds}
    held_any = sorted({i for _, test in splits.values() for i in test})  # corrupted frames are needed for these
    groups = ACTION_GROUPS[info["family"]]
    A = info["action_dim"]
    gripper = np.zeros(A, bool)
    for g in GRIPPER_GROUPS:
        if g in groups:
            gripper[slice(*groups[g])] = True
    corruptions = [parse_corruption(c, cfg.severity) for c in cfg.corruptions]

    def test_frames(e: int, c: int) -> np.ndarray:
        name, sev = corruptions[c]
        return corrupt(episodes[e].frames, name, sev, np.random.default_rng([cfg.seed, e, c]))

    if model is not None:
        name = f"wm:{cfg.wm}" if cfg.wm else f"wm:{cfg.wm_checkpoint}"
        sources = iter([LatentSource(name, None, lambda fr: model.encode(fr[None])[0].numpy(), model=model,
                                     info={"kind": "world_model", "name": cfg.wm, "checkpoint": cfg.wm_checkpoint,
                                           "image_size": model.image_size, "history": model.history,
                                           "frameskip": stride, "tokens": model.encoder.num_tokens,
                                           "dim": model.encoder.dim})])
    else:
        sources = _encoder_sources(cfg)

    rows: list[dict[str, Any]] = []
    source_info: list[dict[str, Any]] = []
    rp_cache: dict[tuple[int, int, int, int], np.ndarray] = {}  # (seed, dim, corruption, episode) -> (S+1, dim)
    for src in sources:
        label = src.name + (f" layer {src.layer}" if src.layer is not None else "")
        kinds = ["encoder"] + (["generated"] if cfg.generated else [])
        # seqs[kind][c]: sequences of every episode (c = 0, clean) or of the test episodes (c > 0)
        seqs: dict[str, list[list[Sequence]]] = {k: [[] for _ in corruptions] for k in kinds}
        for c in range(len(corruptions)):
            todo = range(len(episodes)) if c == 0 else held_any
            say(f"{label}: encoding {len(todo)} episodes ({cfg.corruptions[c]})")
            for e in todo:
                z = src.encode(episodes[e].frames if c == 0 else test_frames(e, c))  # (S+1, N, D)
                if cfg.pool == "flatten" and z.shape[1] * z.shape[2] > MAX_FLATTEN:
                    raise HarnessError(f"--pool flatten would give {z.shape[1]} x {z.shape[2]} = "
                                       f"{z.shape[1] * z.shape[2]} features per frame (> {MAX_FLATTEN}): use --pool mean")
                seqs["encoder"][c].append(Sequence(e, 0, pool_latents(z, cfg.pool)))
                if cfg.generated:
                    for s, w in generated_windows(src.model, z, episodes[e].actions, cfg.horizon, cfg.seed + e):
                        seqs["generated"][c].append(Sequence(e, s, pool_latents(w, cfg.pool), src.model.history))
        P = seqs["encoder"][0][0].feats.shape[1]
        source_info.append({**src.info, "layer": src.layer, "pooled_dim": int(P)})

        for kind in kinds:
            for k in cfg.ks:
                dims = target_dims(A, k * stride, cfg.target)
                masks = {g: (dims >= lo) & (dims < hi) for g, (lo, hi) in groups.items()}
                for probe_kind in cfg.probes:
                    per_c: list[dict[str, list]] = [{"probe": [], "rp": [], "mean": []} for _ in corruptions]
                    counts: dict[str, int] = {}
                    for seed in seeds:
                        train, test = splits[seed]
                        fit_eps, val_eps = validation_split(train, cfg.val_fraction, seed)
                        feats = {"probe": seqs[kind],
                                 "rp": [_rp_sequences(seqs[kind][c], P, seed, c, rp_cache, episodes, test_frames)
                                        for c in range(len(corruptions))]}
                        fitted = {}
                        for which, sq in feats.items():
                            x, y = build_pairs(sq[0], episodes, set(fit_eps), k, cfg.target, gripper)
                            xv, yv = build_pairs(sq[0], episodes, set(val_eps), k, cfg.target, gripper)
                            if len(x) < 2 or len(xv) < 1:
                                raise HarnessError(f"k={k} leaves too few frame pairs in the training episodes "
                                                   f"({len(x)} to fit, {len(xv)} to validate): lower --k or collect "
                                                   f"longer episodes")
                            fitted[which] = _fit(probe_kind, seed, x, y, xv, yv)
                            counts.update(n_train=len(x) + len(xv), n_fit=len(x), n_val=len(xv),
                                          feature_dim=int(x.shape[1]), target_dim=int(y.shape[1]))
                            if which == "probe":
                                y_mean = np.concatenate([y, yv]).mean(axis=0)
                        for c in range(len(corruptions)):
                            for which, sq in feats.items():
                                xt, yt = build_pairs(sq[c], episodes, set(test), k, cfg.target, gripper)
                                if not len(xt):
                                    raise HarnessError(f"k={k} is longer than every held-out episode: lower --k")
                                probe, detail = fitted[which]
                                per_c[c][which].append({"seed": seed, **score(yt, probe.predict(xt), masks), **detail})
                                if which == "probe":
                                    counts["n_test"] = len(xt)
                                    pred = np.broadcast_to(y_mean, yt.shape)
                                    per_c[c]["mean"].append({"seed": seed, **score(yt, pred, masks)})
                    for c, (cname, sev) in enumerate(corruptions):
                        res = per_c[c]
                        rows.append({
                            "source": src.name, "layer": src.layer, "latents": kind, "k": k,
                            "corruption": cname, "severity": sev, "probe": probe_kind, **counts,
                            **_aggregate(res["probe"], list(groups)),
                            "baselines": {"random_projection": _aggregate(res["rp"], list(groups)),
                                          "mean": _aggregate(res["mean"], list(groups))},
                            "seeds": [{"seed": p["seed"], "r2": _finite(p["r2"]), "pearson": _finite(p["pearson"]),
                                       "random_projection_r2": _finite(b["r2"]),
                                       **{key: p[key] for key in ("alpha", "best_epoch") if key in p}}
                                      for p, b in zip(res["probe"], res["rp"])],
                        })
    result = {
        "format": PROBE_FORMAT,
        "config": asdict(cfg),
        **info,
        "target": cfg.target, "pool": cfg.pool, "frame_stride": stride,
        "split": {"by": cfg.split, "train_episodes": len(splits[seeds[0]][0]),
                  "test_episodes": len(splits[seeds[0]][1]),
                  "train_tasks": sorted({episodes[i].task for i in splits[seeds[0]][0]}),
                  "test_tasks": sorted({episodes[i].task for i in splits[seeds[0]][1]}),
                  "test": [episodes[i].name for i in splits[seeds[0]][1]],
                  "per_seed": {str(s): {"test": [episodes[i].name for i in test],
                                        "test_tasks": sorted({episodes[i].task for i in test})}
                               for s, (_, test) in splits.items()},
                  "resampled_by_seed": "held-out episodes (or tasks), validation episodes, MLP initialisation, "
                                       "random projection"},
        "sources": source_info,
        "seeds": seeds,
        "results": rows,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_json(out_dir / "probe.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    """One line per result row: R^2 (mean +- std over seeds) overall and per group, Pearson r, and
    the random-projection and mean baselines' R^2."""
    groups = list(result["groups"])

    def num(s: dict | None, std: bool = False) -> str:
        if s is None or s.get("mean") is None:
            return "   -  "
        return f"{s['mean']:6.3f}" + (f"±{s['std']:.3f}" if std else "")

    head = (f"{'source':<24} {'latents':<9} {'k':>2} {'corruption':<12} {'probe':<6} {'R2':>12} "
            + " ".join(f"{'R2 ' + g[:5]:>8}" for g in groups) + f" {'r':>6} {'R2 rand':>8} {'R2 mean':>8} {'n test':>6}")
    lines = [head]
    for r in result["results"]:
        src = r["source"] + (f"@{r['layer']}" if r["layer"] is not None else "")
        corr = r["corruption"] + (f":{r['severity']}" if r["severity"] else "")
        lines.append(f"{src:<24} {r['latents']:<9} {r['k']:>2} {corr:<12} {r['probe']:<6} {num(r['r2'], True):>12} "
                     + " ".join(f"{num(r['r2_groups'][g]):>8}" for g in groups)
                     + f" {num(r['pearson']):>6} {num(r['baselines']['random_projection']['r2']):>8}"
                     f" {num(r['baselines']['mean']['r2']):>8} {r['n_test']:>6}")
    return "\n".join(lines)
