"""Episodes: the unit of evaluation, identical for every policy and backend of a run."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Episode:
    env_id: str
    task: str
    instruction: str
    init_state: int
    seed: int
    max_steps: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WorkItem:
    """One episode with one policy, recorded for each of ``backends``.

    ``"sim"`` is the real simulator; ``"wm:<name>"`` a world model, which always runs after the
    simulator episode it mirrors (its reset frame, and its actions for open-loop replay). So an
    item for a world-model backend also runs the simulator episode, and records it only when
    ``"sim"`` is among its backends (a resumed run may hold the simulator record already)."""

    policy: str
    backends: tuple[str, ...]
    episode: Episode
    video_path: str | None = None  # where to write the mp4, None for no video
    video_only_on_failure: bool = False

    @property
    def keys(self) -> list[tuple[str, str, str, int]]:
        return [record_key(self.policy, b, self.episode.env_id, self.episode.init_state) for b in self.backends]

    @property
    def world_model(self) -> str | None:
        """The world-model backend's name, if any (one per item)."""
        names = [b.split(":", 1)[1] for b in self.backends if b.startswith("wm:")]
        return names[0] if names else None


def record_key(policy: str, backend: str, env_id: str, init_state: int) -> tuple[str, str, str, int]:
    return (policy, backend, env_id, int(init_state))


def derive_seed(base_seed: int, env_id: str, init_state: int) -> int:
    """Stable per-episode seed: the same on every machine, worker count and run order."""
    digest = hashlib.sha256(f"{base_seed}|{env_id}|{init_state}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def build_episodes(env_ids: list[str], episodes_per_env: int, base_seed: int, max_steps: dict[str, int],
                   first_init_state: int = 0) -> list[Episode]:
    """Init states first..first+n-1 of every env (0..n-1 by default), each with its derived seed.

    Training data is collected from a later range (e.g. ``first_init_state=1000``) so that the
    evaluation's init states 0..n-1 are never seen in training."""
    from envs import env_meta

    out = []
    for env_id in env_ids:
        meta = env_meta(env_id)
        for i in range(first_init_state, first_init_state + episodes_per_env):
            out.append(Episode(env_id, meta["task"], meta["instruction"], i, derive_seed(base_seed, env_id, i), max_steps[env_id]))
    return out


def check_action(action: np.ndarray, shape: tuple[int, ...], step: int, where: str) -> None:
    """Refuse an action of the wrong shape or dtype, or with NaN/inf, naming the step."""
    if action.shape != shape:
        raise ValueError(f"policy returned an action of shape {action.shape}; {where} expects {shape}")
    if not np.issubdtype(action.dtype, np.floating):
        raise TypeError(f"policy returned a {action.dtype} action at step {step}; {where} expects floats "
                        f"(float32, in the action space)")
    if not np.isfinite(action).all():
        raise FloatingPointError(f"policy returned a non-finite action at step {step}"
                                 f"{'' if where == 'the env' else ' in ' + where}: {action}")
