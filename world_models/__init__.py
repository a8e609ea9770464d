"""World models as simulators: encoders, transition models, WorldModelEnv.

The registry is filled as world models are added; ``harness list world-models`` shows it.
"""

from __future__ import annotations

from harness.registry import Registry

WORLD_MODELS: Registry = Registry("world model")

__all__ = ["WORLD_MODELS"]
