"""OpenVLA's action tokenizer and its action (un-)normalisation, in numpy.

OpenVLA writes each action dimension, normalised to [-1, 1] with the training set's 1st and 99th
percentiles, as one of 256 uniform bins, and spells bin ``k`` as the token ``vocab_size - k``: the
last 256 ids of the Llama-2 vocabulary (the least used ones) become action tokens. Decoding maps a
token back to its bin centre and un-normalises with the same percentiles (``norm_stats`` of the
checkpoint, chosen by ``unnorm_key``). Dimensions whose ``mask`` is false (the gripper) were never
normalised and are passed through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError

N_BINS = 256


class ActionTokenizer:
    """Continuous actions in [-1, 1] <-> the last ``n_bins`` token ids of a ``vocab_size`` vocabulary."""

    def __init__(self, vocab_size: int, n_bins: int = N_BINS, low: float = -1.0, high: float = 1.0):
        if n_bins < 2 or vocab_size < n_bins:
            raise ValueError(f"need 2 <= n_bins <= vocab_size, got n_bins={n_bins}, vocab_size={vocab_size}")
        self.vocab_size, self.n_bins, self.low, self.high = int(vocab_size), int(n_bins), float(low), float(high)
        self.bins = np.linspace(low, high, n_bins)  # n_bins edges -> n_bins - 1 intervals
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0

    @property
    def token_ids(self) -> range:
        """Every id an action can be spelled with: the last ``n_bins`` ids of the vocabulary."""
        return range(self.vocab_size - self.n_bins, self.vocab_size)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """Normalised actions (..., D) -> token ids (..., D). np.digitize gives 1..n_bins."""
        clipped = np.clip(np.asarray(actions, dtype=np.float64), self.low, self.high)
        return (self.vocab_size - np.digitize(clipped, self.bins)).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """Token ids (..., D) -> normalised actions (..., D) at the bin centres.

        Digitising yields n_bins indices for n_bins - 1 intervals, so the top index shares the
        last interval; ids outside the action range clip to the nearest end, as OpenVLA does.
        """
        index = self.vocab_size - np.asarray(token_ids, dtype=np.int64) - 1
        return self.bin_centers[np.clip(index, 0, len(self.bin_centers) - 1)]


@dataclass(frozen=True)
class ActionStats:
    """Per-dimension action percentiles of a training set, and which dimensions were normalised."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray  # bool; False = not normalised (OpenVLA: the gripper)

    @classmethod
    def from_dict(cls, stats: Mapping[str, Any], where: str = "norm_stats") -> ActionStats:
        try:
            q01 = np.asarray(stats["q01"], dtype=np.float64)
            q99 = np.asarray(stats["q99"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise HarnessError(f"action statistics in {where} lack numeric q01/q99 lists ({exc}): the checkpoint's norm_stats are not OpenVLA's") from None
        mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        if q01.ndim != 1 or q01.shape != q99.shape or mask.shape != q01.shape:
            raise HarnessError(f"action statistics in {where} have mismatched shapes q01 {q01.shape}, q99 {q99.shape}, mask {mask.shape}")
        return cls(q01, q99, mask)

    @property
    def dim(self) -> int:
        return int(self.q01.shape[0])

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """[-1, 1] -> [q01, q99] on masked dimensions; the others unchanged."""
        n = np.asarray(normalized, dtype=np.float64)
        return np.where(self.mask, 0.5 * (n + 1.0) * (self.q99 - self.q01) + self.q01, n)

    def normalize(self, actions: np.ndarray) -> np.ndarray:
        """The training-time inverse (clipped to [-1, 1]); 1e-8 guards a zero range as OpenVLA's loader does."""
        a = np.asarray(actions, dtype=np.float64)
        scaled = np.clip(2.0 * (a - self.q01) / (self.q99 - self.q01 + 1e-8) - 1.0, -1.0, 1.0)
        return np.where(self.mask, scaled, a)


def load_norm_stats(folder: str | Path) -> dict[str, Any]:
    """A checkpoint's dataset statistics: ``norm_stats`` of config.json, overridden per key by
    dataset_statistics.json (what OpenVLA's fine-tuning writes next to the weights)."""
    folder = Path(folder)
    stats: dict[str, Any] = {}
    config = folder / "config.json"
    if config.is_file():
        stats.update(_read_json(config).get("norm_stats") or {})
    extra = folder / "dataset_statistics.json"
    if extra.is_file():
        stats.update(_read_json(extra))
    return stats


def resolve_unnorm_key(norm_stats: Mapping[str, Any], unnorm_key: str | None, where: str) -> str:
    """The statistics key to un-normalise with. None picks the only key; a LIBERO suite name also
    finds its ``<suite>_no_noops`` statistics (the fine-tunes were trained on no-op-filtered data)."""
    keys = sorted(norm_stats)
    if not keys:
        raise HarnessError(f"{where} has no action statistics (no norm_stats in config.json, no dataset_statistics.json): it is not an OpenVLA checkpoint")
    if unnorm_key is None:
        if len(keys) > 1:
            raise HarnessError(f"{where} holds statistics of {len(keys)} datasets: pick one with unnorm_key=..., e.g. one of {', '.join(keys[:12])}")
        return keys[0]
    if unnorm_key not in norm_stats and f"{unnorm_key}_no_noops" in norm_stats:
        return f"{unnorm_key}_no_noops"
    if unnorm_key not in norm_stats:
        import difflib

        close = difflib.get_close_matches(unnorm_key, keys, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise HarnessError(f"unnorm_key {unnorm_key!r} is not in the statistics of {where}.{hint} Available: {', '.join(keys[:25])}")
    return unnorm_key


def action_stats(norm_stats: Mapping[str, Any], key: str, where: str) -> ActionStats:
    entry = norm_stats[key]
    if not isinstance(entry, Mapping) or not isinstance(entry.get("action"), Mapping):
        raise HarnessError(f"statistics {key!r} of {where} have no 'action' block")
    return ActionStats.from_dict(entry["action"], f"{where} [{key}]")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise HarnessError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data
