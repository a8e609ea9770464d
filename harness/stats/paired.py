"""Paired tests on binary outcomes of the same episodes (same task, init state and seed).

Two policies run on the same episodes, or one policy's episodes in the simulator and in the
world model, give paired successes. Only the discordant pairs carry information about which
side succeeds more often: McNemar's test asks whether ``a_only`` (a succeeded, b failed) and
``b_only`` differ more than a fair coin would make them. With the few dozen episodes of a
policy evaluation the chi-square approximation is poor, so the test is exact: a two-sided
binomial test of ``a_only`` out of ``a_only + b_only`` at p = 1/2 (``statsmodels``'s
``mcnemar(exact=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb
from typing import Any


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """{"n", "a_only", "b_only", "p_value"} for paired outcomes ``a`` and ``b``; p is 1.0 when
    no pair is discordant (nothing tells the two apart)."""
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact: {len(a)} outcomes against {len(b)}: the outcomes must be paired")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = a_only + b_only
    tail = sum(comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2.0 ** n if n else 1.0
    return {"n": len(a), "a_only": a_only, "b_only": b_only, "p_value": min(1.0, 2.0 * tail)}
