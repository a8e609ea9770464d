"""The eval and collect configurations: typed, validated at construction, YAML-serialisable."""

from __future__ import annotations

import re
import reprlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from envs.registry import check_render
from harness.errors import HarnessError
from harness.yaml_config import construct, yaml_fields
from world_models.distill import check_decoder
from world_models.precision import check_precision

VIDEO_MODES = "all|failures|none|first:N"
DEFAULT_EPISODES = 10  # per env, when neither --episodes nor the env's meta (``default_episodes``) says
MAX_EPISODES = 100_000  # per env: Meta-World's init states never run out, so a typo would plan forever


def parse_video_mode(mode: str) -> tuple[str, int]:
    """'all' | 'failures' | 'none' | 'first:N' -> (kind, N)."""
    mode = str(mode).strip()
    if mode in ("all", "failures", "none"):
        return mode, 0
    m = re.fullmatch(r"first:(\d+)", mode)
    if m and int(m.group(1)) > 0:
        return "first", int(m.group(1))
    raise HarnessError(f"video mode {mode!r} is not allowed: use {VIDEO_MODES} (N > 0 episodes per policy and task)")


@dataclass(frozen=True)
class EvalConfig:
    env: str
    policies: tuple[str, ...] = ("scripted",)
    episodes: int | None = None  # per env; None: the env's own default (LIBERO 50), else DEFAULT_EPISODES
    seed: int = 0
    max_steps: int | None = None
    cameras: tuple[str, ...] | None = None
    image_size: int | None = None
    # faithful: the simulator's own renderer; fast: no shadows, reflections, MSAA. None: as the --wm
    # world model's training frames were rendered when its checkpoint says, else faithful
    render: str | None = None
    stop_on_success: bool = True
    video: str = "first:3"
    video_fps: int = 30
    workers: int = 1
    executor: str = "local"
    out: str | None = None
    wm: str | None = None  # world model for the matched evaluation ("none" or None: simulator only)
    wm_checkpoint: str | None = None
    judge: str | None = None  # judge spec for world-model success; None: the world model's own, if it has one
    wm_batch: int = 1  # world-model episodes advanced together in one batched call per step
    wm_precision: str = "float32"  # the world model's networks in eval: float32 | bfloat16
    wm_decoder: str = "full"  # the world model's pixels: its full decoder, or the distilled one
    threads: int | None = None  # torch CPU threads per worker; None: the CPUs shared out over the workers
    ray_address: str | None = None  # with executor "ray": "auto", "HOST:PORT" or None for a local cluster

    def __post_init__(self):
        if not isinstance(self.env, str):
            raise HarnessError(f"--env {_show(self.env)} must be text: one env id or set, e.g. 'metaworld/reach-v3' "
                               "(see `harness list envs`)")
        if not self.env.strip():
            raise HarnessError("--env is empty: name an env id or set, e.g. 'metaworld/reach-v3' (see `harness list envs`)")
        if not self.policies:
            raise HarnessError("no --policy given: name at least one, e.g. 'scripted' (see `harness list policies`)")
        for flag, values in (("--policy", self.policies), ("--camera", self.cameras)):
            if values is not None and (not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values)):
                raise HarnessError(f"{flag} takes a list of names, got {_show(values)}: write one name per item, quoted if needed")
        for flag, value in (("--video", self.video), ("--executor", self.executor), ("--out", self.out), ("--wm", self.wm),
                            ("--wm-checkpoint", self.wm_checkpoint), ("--judge", self.judge), ("--ray-address", self.ray_address)):
            if not isinstance(value, str) and (value is not None or flag in ("--video", "--executor")):
                raise HarnessError(f"{flag} {_show(value)} must be text (got {type(value).__name__}); quote it in YAML")
        if not isinstance(self.stop_on_success, bool):
            raise HarnessError(f"stop_on_success {_show(self.stop_on_success)} must be true or false")
        check_episode_args(DEFAULT_EPISODES if self.episodes is None else self.episodes, self.seed, self.max_steps)
        _positive("workers", self.workers, "--workers")
        _positive("video_fps", self.video_fps, "--video-fps")
        _positive("wm_batch", self.wm_batch, "--wm-batch")
        if self.threads is not None:
            _positive("threads", self.threads, "--threads")
        if self.ray_address is not None and self.executor != "ray":
            raise HarnessError(f"--ray-address {self.ray_address} needs --executor ray (got --executor {self.executor})")
        parse_video_mode(self.video)
        if self.render is not None:
            check_render(self.render)
        if self.wm is not None and (not isinstance(self.wm, str) or self.wm.strip().lower() in ("", "none")):
            object.__setattr__(self, "wm", None)
        check_precision(self.wm_precision, "--wm-precision")
        check_decoder(self.wm_decoder)
        if self.wm is None and (self.judge is not None or self.wm_checkpoint is not None
                                or self.wm_precision != "float32" or self.wm_decoder != "full"):
            raise HarnessError("--judge, --wm-checkpoint, --wm-precision and --wm-decoder belong to a world model: "
                               "add --wm NAME (see `harness list world-models`) or drop them")
        object.__setattr__(self, "policies", tuple(self.policies))
        if self.cameras is not None:
            object.__setattr__(self, "cameras", tuple(self.cameras))

    def identity(self, env_ids: list[str]) -> dict[str, Any]:
        """The fields that decide episode outcomes: a run folder holds one identity."""
        return {
            "env_ids": env_ids,
            "policies": list(self.policies),
            "episodes": self.episodes,
            "seed": self.seed,
            "max_steps": self.max_steps,
            "cameras": None if self.cameras is None else list(self.cameras),
            "image_size": self.image_size,
            "render": self.render,
            "stop_on_success": self.stop_on_success,
            "wm": self.wm,
            "wm_checkpoint": self.wm_checkpoint,
            "judge": self.judge,
            # bf16 changes outcomes slightly; named only when set, so float32 runs keep their identity
            **({"wm_precision": self.wm_precision} if self.wm_precision != "float32" else {}),
            **({"wm_decoder": self.wm_decoder} if self.wm_decoder != "full" else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["policies"] = list(self.policies)
        d["cameras"] = None if self.cameras is None else list(self.cameras)
        return d

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> EvalConfig:
        data = yaml_fields(cls, path, overrides)
        for key in ("policies", "cameras"):
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
        return construct(cls, path, data)


def check_episode_args(episodes: Any, seed: Any, max_steps: Any) -> None:
    """The checks every command that builds episodes shares (eval, collect)."""
    _positive("episodes", episodes, "--episodes")
    if episodes > MAX_EPISODES:
        raise HarnessError(f"--episodes {episodes} is more than {MAX_EPISODES} per env: use a smaller number")
    if max_steps is not None:
        _positive("max_steps", max_steps, "--max-steps")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise HarnessError(f"--seed {_show(seed)} must be an integer >= 0")


def _positive(name: str, value: Any, flag: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise HarnessError(f"{flag} {_show(value)} must be an integer > 0")


def _show(value: Any) -> str:
    """A user's value in an error message, cut short (a YAML alias bomb must not print forever)."""
    return reprlib.repr(value)
