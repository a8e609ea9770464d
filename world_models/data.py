"""Episodes for world-model training, read from a ``harness collect`` dataset (or a LIBERO-style
HDF5 file in the same robomimic layout): T+1 frames of one camera and the T actions between them."""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from harness.data.dataset import list_demos, read_demo
from harness.errors import HarnessError


@dataclass
class Episode:
    frames: np.ndarray  # (T+1, S, S, 3) uint8
    actions: np.ndarray  # (T, A) float32
    attrs: dict


def dataset_cameras(path: str | os.PathLike) -> list[str]:
    import h5py

    with h5py.File(path, "r") as f:
        first = next(iter(f["data"].values()))
        return sorted(k[: -len("_rgb")] for k in first["obs"] if k.endswith("_rgb"))


def dataset_render(path: str | os.PathLike) -> str | None:
    """How the dataset's frames were rendered ("faithful" or "fast", as its env options record),
    or None when its files do not say or its envs disagree."""
    import json

    import h5py

    try:
        with h5py.File(path, "r") as f:
            env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
    except (OSError, KeyError, ValueError):
        return None
    options = env_args.get("options") if isinstance(env_args, dict) else None
    renders = {o.get("render") for o in options.values() if isinstance(o, dict)} if isinstance(options, dict) else set()
    return renders.pop() if len(renders) == 1 and None not in renders else None


def check_dataset(path: str | os.PathLike, camera: str | None) -> str:
    """The camera to read; one clear error if the file or the camera is unusable."""
    if not os.path.isfile(path):
        raise HarnessError(f"dataset {path} does not exist: write one with `harness collect --env ... --out {path}`")
    try:
        demos = list_demos(path)
        cams = dataset_cameras(path) if demos else []
    except (OSError, KeyError, StopIteration) as e:
        raise HarnessError(f"{path} is not a readable episode dataset ({type(e).__name__}: {e}); "
                           f"expected HDF5 with data/demo_i/{{actions, obs/<camera>_rgb}}") from None
    if not demos:
        raise HarnessError(f"dataset {path} holds no episodes; collect some with `harness collect`")
    if not cams:
        raise HarnessError(f"dataset {path} has no camera images (obs/<camera>_rgb); collect it with a camera")
    if camera is None:
        return cams[0]
    if camera not in cams:
        raise HarnessError(f"camera {camera!r} is not in {path}; it has {', '.join(cams)}")
    return camera


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def load_episodes(path: str | os.PathLike, camera: str, size: int | None = None,
                  action_dim: int | None = None) -> list[Episode]:
    """Every episode's frames (resized to ``size`` when given) and actions, in file order;
    ``action_dim``: the action size a world model takes, refused in one line when the data differ."""
    return list(iter_episodes(path, camera, size, action_dim))


def kept_demos(path: str | os.PathLike, camera: str) -> list[tuple[int, dict]]:
    """(frame count, attrs) of each episode ``iter_episodes`` yields, in the same order, read from
    the dataset's shapes and attributes without loading any image."""
    import h5py

    key = f"{camera}_rgb"
    kept = []
    with h5py.File(path, "r") as f:
        for name, attrs in list_demos(path):
            g = f["data"][name]
            n = g["obs"][key].shape[0] + (g["final_obs"][key].shape[0] if "final_obs" in g and key in g["final_obs"] else 0)
            if n >= 2:  # iter_episodes skips shorter ones
                kept.append((int(n), attrs))
    return kept


def frame_counts(path: str | os.PathLike, camera: str) -> list[int]:
    """The number of frames of each episode ``iter_episodes`` yields, in the same order."""
    return [n for n, _ in kept_demos(path, camera)]


def episode_group(attrs: dict) -> tuple[str, str]:
    """An episode's stratum for held-out draws: (policy, env_id) from its attributes ("" where
    the file does not say)."""
    return str(attrs.get("policy", "")), str(attrs.get("env_id", ""))


def iter_episodes(path: str | os.PathLike, camera: str, size: int | None = None,
                  action_dim: int | None = None) -> Iterator[Episode]:
    """``load_episodes`` one episode at a time: memory for one episode's frames, not the file's."""
    for name, _ in list_demos(path):
        demo = read_demo(path, name, keys=[f"{camera}_rgb"])
        if action_dim is not None and demo.actions.shape[1] != action_dim:
            raise HarnessError(f"{path}:{name} has {demo.actions.shape[1]}-D actions; the world model takes "
                               f"{action_dim}-D: use data of the benchmark it was trained on")
        frames = demo.frames(camera)
        actions = demo.actions.astype(np.float32)
        if frames.shape[0] == demo.length:  # robomimic files without final_obs: last action has no next frame
            actions = actions[:-1]
        elif frames.shape[0] != demo.length + 1:
            raise HarnessError(f"{path}:{name} has {frames.shape[0]} frames for {demo.length} actions; "
                               f"expected T+1 (with final_obs) or T")
        if len(frames) < 2:
            continue
        if size is not None:
            frames = resize_frames(frames, size)
        yield Episode(frames, actions, demo.attrs)


SPLIT_RULE = ("whole episodes, stratified by (policy, env_id): round(val_fraction x n) held out (at least 1), "
              "shared among the groups by largest remainder, each group's drawn with numpy default_rng(seed)")


def heldout_episodes(info: dict, n: int) -> list[int]:
    """The held-out episodes of a world model's training data (``n`` episodes): those its
    checkpoint records (``info["split"]["val"]``); a checkpoint that records none held out the
    last round(val_fraction x n) episodes."""
    split = info.get("split")
    if isinstance(split, dict) and isinstance(split.get("val"), list):
        return [int(i) for i in split["val"] if 0 <= int(i) < n]
    n_val = held_out_count(n, float(info.get("train", {}).get("config", {}).get("val_fraction", 0.1)))
    return list(range(n - n_val, n))


def episode_groups(path: str | os.PathLike, camera: str) -> list[tuple[str, str]]:
    """``episode_group`` of each episode ``iter_episodes`` yields, in the same order."""
    return [episode_group(attrs) for _, attrs in kept_demos(path, camera)]


def held_out_count(n: int, val_fraction: float) -> int:
    """round(val_fraction x n) episodes, at least 1 when there are 2 or more, none for a fraction of 0."""
    return 0 if n < 2 or val_fraction <= 0 else max(1, round(n * val_fraction))


def split_episodes(groups: Sequence[Hashable] | int, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Train and held-out episode indices (SPLIT_RULE): every (policy, task) group gives its share
    of held-out episodes, drawn at random under ``seed``, so the held-out set looks like the
    training set instead of being its last-collected policy. ``groups``: one label per episode,
    or a count (one group)."""
    labels = [0] * groups if isinstance(groups, int) else list(groups)
    n = len(labels)
    n_val = held_out_count(n, val_fraction)
    members: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    order = sorted(members, key=repr)
    quota = {g: len(members[g]) * n_val / n for g in order} if n else {}
    take = {g: int(quota[g]) for g in order}
    for g in sorted(order, key=lambda g: quota[g] - take[g], reverse=True)[:n_val - sum(take.values())]:
        take[g] += 1
    rng = np.random.default_rng(seed)
    val = sorted(int(i) for g in order for i in rng.permutation(members[g])[:take[g]])
    held = set(val)
    return [i for i in range(n) if i not in held], val
