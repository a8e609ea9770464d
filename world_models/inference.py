"""Inference-only stand-ins for some of a network's modules, chosen on this machine by measuring.

The model files keep one forward path, in torch's own modules. A network loaded for inference
(``WorldModel.load``) passes through ``prepare_for_inference``: each stand-in computes the same
function as the module it replaces (to float rounding) in other torch operations, and it is
swapped in only where it measured faster than torch's module on the CPU at hand, at the size of a
batched planning call. Nothing is swapped where it measured slower, so no CPU runs slower than
torch's own modules would. ``WM_HARNESS_INFERENCE=torch`` keeps torch's modules everywhere.

A stand-in is used only where it measured at least ``MARGIN`` faster, and the decision is made
once per machine (CPU model and vector flags, torch version, thread count) and kept in a small
file (``$WM_HARNESS_CACHE``, else ``$XDG_CACHE_HOME/wm-harness`` or ``~/.cache/wm-harness``,
``inference.json``): every later process on that machine takes the same path, so repeated runs
give the same numbers rather than racing two timings that are close. Delete the file to measure
again (after a hardware change, say).

The returned record says which path runs and why (the two timings, and whether they were measured
now or read back); runs write it into ``results.json``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ENV_SWITCH = "WM_HARNESS_INFERENCE"  # "torch": no stand-ins
CACHE_ENV = "WM_HARNESS_CACHE"  # folder of the per-machine decisions
MARGIN = 0.15  # a stand-in must be at least this much faster: a near tie keeps torch's module
SMALL_TENSOR = 1 << 15  # elements; below it one torch kernel beats a few elementwise ones
_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


class SigmoidGELU(nn.Module):
    """DiT's tanh-approximated GELU written as ``x * sigmoid(2z)`` (``0.5 * (1 + tanh(z))`` equals
    ``sigmoid(2z)``): the same function, within 5e-7 of float64. torch's CPU tanh is slow on some
    CPUs; the sigmoid form works in one buffer of its own. Under autograd, for small tensors and
    outside float32, torch's kernel runs unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != torch.float32 or x.numel() < SMALL_TENSOR
                or (torch.is_grad_enabled() and x.requires_grad)):
            return F.gelu(x, approximate="tanh")
        u = x * x
        u.mul_(0.044715 * _GELU_K).add_(_GELU_K).mul_(x)
        return u.sigmoid_().mul_(x)


def _is_tanh_gelu(m: nn.Module) -> bool:
    return type(m) is nn.GELU and m.approximate == "tanh"


@dataclass(frozen=True)
class StandIn:
    """A module kind, what replaces it, and the input it is timed on."""

    matches: Callable[[nn.Module], bool]
    make: Callable[[nn.Module], nn.Module]
    sample: Callable[[], torch.Tensor]  # the size a batched planning call gives it
    reference: Callable[[], nn.Module]


STAND_INS: dict[str, StandIn] = {
    "gelu": StandIn(_is_tanh_gelu, lambda m: SigmoidGELU(), lambda: torch.randn(4800, 256),
                    lambda: nn.GELU(approximate="tanh")),
}


def _best_ms(module: nn.Module, x: torch.Tensor, rounds: int = 7) -> float:
    best = math.inf
    with torch.no_grad():
        module(x)
        for _ in range(rounds):
            t = time.perf_counter()
            module(x)
            best = min(best, time.perf_counter() - t)
    return best * 1e3


def measure(name: str, threads: int) -> dict[str, Any]:
    """Time torch's module against the stand-in on this CPU; interleaved, best of several. The
    stand-in is chosen (``use``) only if it is at least ``MARGIN`` faster."""
    spec = STAND_INS[name]
    x = spec.sample()
    torch_ms = _best_ms(spec.reference(), x)
    stand_in_ms = _best_ms(spec.make(spec.reference()), x)
    torch_ms = min(torch_ms, _best_ms(spec.reference(), x))
    return {"torch_ms": round(torch_ms, 3), "stand_in_ms": round(stand_in_ms, 3),
            "use": stand_in_ms < (1.0 - MARGIN) * torch_ms, "input": list(x.shape), "threads": threads}


def machine_key(threads: int) -> str:
    """What a decision holds for: CPU model and vector flags, torch version, thread count."""
    model, flags = platform.machine() or "unknown CPU", ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), model)
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    vector = " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c"))))
    return f"{model} | {vector} | torch {torch.__version__} | {threads} threads"


def cache_file() -> Path:
    folder = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wm-harness"
    return Path(folder) / "inference.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    """Atomically, and never an error: without a writable cache each process decides anew."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".inference.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass


@functools.cache
def decide(name: str, threads: int) -> dict[str, Any]:
    """This machine's decision for one stand-in: read back from the cache file, or measured now
    and stored there (once per process, machine key and thread count)."""
    path, key = cache_file(), machine_key(threads)
    cached = _read_cache(path).get(key, {}).get(name)
    if isinstance(cached, dict) and {"torch_ms", "stand_in_ms", "use"} <= set(cached):
        return {**cached, "decided": f"read back from {path}"}
    timing = measure(name, threads)
    data = _read_cache(path)  # again: another process may have written meanwhile
    data.setdefault(key, {})[name] = timing
    _write_cache(path, data)
    return {**timing, "decided": "measured now"}


def _swap(module: nn.Module, spec: StandIn) -> int:
    n = 0
    for name, child in module.named_children():
        if spec.matches(child):
            setattr(module, name, spec.make(child))
            n += 1
        else:
            n += _swap(child, spec)
    return n


def prepare_for_inference(network: nn.Module) -> dict[str, Any]:
    """Swap in each stand-in that measured faster here; returns what runs and why."""
    if os.environ.get(ENV_SWITCH, "").lower() == "torch":
        return {"path": "torch modules", "why": f"{ENV_SWITCH}=torch"}
    record: dict[str, Any] = {"path": "torch modules", "stand_ins": {}}
    for name, spec in STAND_INS.items():
        if not any(spec.matches(m) for m in network.modules()):
            continue
        timing = decide(name, torch.get_num_threads())
        swapped = _swap(network, spec) if timing["use"] else 0
        record["stand_ins"][name] = {**timing, "swapped": swapped}
        if swapped:
            record["path"] = "torch modules with measured stand-ins"
    record["why"] = "; ".join(
        f"{n}: stand-in {t['stand_in_ms']} ms vs torch {t['torch_ms']} ms on {'x'.join(map(str, t['input']))}"
        f" ({t['decided']}) -> {'stand-in' if t['use'] else 'torch'}" for n, t in record["stand_ins"].items()
    ) or "nothing to swap"
    return record

