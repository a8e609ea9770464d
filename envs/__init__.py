"""Gymnasium environments behind one registry.

``make_env("metaworld/reach-v3")`` builds an env; ``expand_env_spec("metaworld")`` turns a
short form (a task set) into env ids. Entries are lazy, so listing and validation never
import a simulator.
"""

from __future__ import annotations

from envs.registry import (
    ENV_SETS,
    ENVS,
    IMAGE_SIZE_RANGE,
    RENDER_MODES,
    env_meta,
    expand_env_spec,
    make_env,
    resolve_env_options,
)

__all__ = [
    "ENVS",
    "ENV_SETS",
    "IMAGE_SIZE_RANGE",
    "RENDER_MODES",
    "env_meta",
    "expand_env_spec",
    "make_env",
    "resolve_env_options",
]
