"""The simulator's own success oracle, as a judge: the ground truth every other judge is scored
against. It reads the per-step ``success`` flags that the simulator reported during the rollout
(``info["success"]``, stored as ``success`` in datasets), so it exists only for simulator
rollouts; a world-model rollout has no such flags and asking the oracle about one is an error."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from harness.errors import HarnessError

from .base import check_threshold


class OracleJudge:
    """Success = the simulator reported success at any step (1.0), else 0.0."""

    needs_latents = False
    needs_success = True
    label = "oracle"

    def __init__(self, threshold: float = 0.5):
        self.threshold = check_threshold(threshold, "oracle")

    def score(self, frames: np.ndarray | None, instruction: str, latents: np.ndarray | None = None, *,
              success: Sequence[bool] | None = None) -> float:
        if success is None:
            raise HarnessError("the oracle judge needs the simulator's per-step success flags, which exist only for "
                               "simulator rollouts; judge world-model rollouts with vlm:..., consensus:... or "
                               "latent_classifier:...")
        flags = np.asarray(list(success), dtype=bool)
        return float(flags.any())
