"""Episodes: the unit of evaluation, identical for every policy and backend of a run."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass


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
    """One episode to run with one policy on one backend ('sim' for the real simulator)."""

    policy: str
    backend: str
    episode: Episode
    video_path: str | None = None  # where to write the mp4, None for no video
    video_only_on_failure: bool = False

    @property
    def key(self) -> tuple[str, str, str, int]:
        return record_key(self.policy, self.backend, self.episode.env_id, self.episode.init_state)


def record_key(policy: str, backend: str, env_id: str, init_state: int) -> tuple[str, str, str, int]:
    return (policy, backend, env_id, int(init_state))


def derive_seed(base_seed: int, env_id: str, init_state: int) -> int:
    """Stable per-episode seed: the same on every machine, worker count and run order."""
    digest = hashlib.sha256(f"{base_seed}|{env_id}|{init_state}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def build_episodes(env_ids: list[str], episodes_per_env: int, base_seed: int, max_steps: dict[str, int]) -> list[Episode]:
    """Init states 0..n-1 of every env, each with its derived seed."""
    from envs import env_meta

    out = []
    for env_id in env_ids:
        meta = env_meta(env_id)
        for i in range(episodes_per_env):
            out.append(Episode(env_id, meta["task"], meta["instruction"], i, derive_seed(base_seed, env_id, i), max_steps[env_id]))
    return out
