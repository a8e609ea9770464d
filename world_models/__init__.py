"""World models as simulators: frozen encoders, DiT transition + flow matching, WorldModel,
WorldModelEnv, training. ``harness list world-models`` shows the named ones
(``configs/world_models/*.yaml``); ``load_world_model(name)`` loads one."""

from __future__ import annotations

from harness.registry import Registry

from .named import register_all

WORLD_MODELS: Registry = Registry("world model")
register_all(WORLD_MODELS)


def load_world_model(name: str, checkpoint=None):
    from .named import load_world_model as _load

    return _load(name, checkpoint)


__all__ = ["WORLD_MODELS", "load_world_model"]
