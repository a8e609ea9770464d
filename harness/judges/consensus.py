"""Several judges, one verdict, and how far they agree with each other.

``consensus:vote=mean,judges=vlm:path=A,frames=4+vlm:path=B+latent_classifier:path=C`` — the raters
follow ``judges=`` (the last parameter), separated by ``+``. Per episode every rater scores the
episode; the consensus score is their mean probability (``vote=mean``) or the share of raters whose
verdict is success (``vote=majority``). The raters' verdicts are kept for every episode judged, so
``rater_agreement()`` reports the pairwise Cohen's kappa between raters, as "Reconstruction or
Semantics?" reports it for its two VLM raters: high kappa means the raters see the same thing;
low kappa means the consensus is averaging disagreement.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.stats.agreement import accuracy, cohen_kappa

from .base import check_threshold, verdict

SEPARATOR = "+"
VOTES = ("mean", "majority")


def _check_vote(vote: Any) -> str:
    if vote not in VOTES:
        raise HarnessError(f"consensus: vote must be one of {', '.join(VOTES)}, got {vote!r}")
    return vote


def _check_count(n: int) -> None:
    if n < 2:
        raise HarnessError(f"consensus needs at least 2 raters, got {n}; separate rater specs with '{SEPARATOR}', "
                           f"e.g. judges=vlm:path=A{SEPARATOR}vlm:path=B")


class ConsensusJudge:
    spec_tail = "judges"  # parse_judge_spec: `judges=` takes the rest of the spec

    def __init__(self, judges: str | Sequence[Any], vote: str = "mean", threshold: float = 0.5, encoder: Any = None):
        from . import make_judge

        self.vote, self.threshold = _check_vote(vote), check_threshold(threshold, "consensus")
        if isinstance(judges, str):
            context = {} if encoder is None else {"encoder": encoder}
            self.raters = [make_judge(s, **context) for s in self.rater_specs(judges)]
        else:
            self.raters = list(judges)
            _check_count(len(self.raters))
        self.labels = [getattr(r, "label", type(r).__name__) for r in self.raters]
        self.needs_latents = any(r.needs_latents for r in self.raters)
        self.needs_success = any(r.needs_success for r in self.raters)
        self.history: list[list[bool]] = []  # per episode judged: each rater's verdict
        self.scores: list[list[float]] = []
        self.label = "consensus"

    @staticmethod
    def rater_specs(judges: str, **_: Any) -> list[str]:
        """The raters' specs in ``judges=``: at least two, none empty (checked before a run starts)."""
        specs = [s.strip() for s in str(judges).split(SEPARATOR)]
        if not all(specs):
            raise HarnessError(f"consensus: empty rater in judges={judges!r}; separate rater specs with "
                               f"'{SEPARATOR}', e.g. judges=vlm:path=A{SEPARATOR}vlm:path=B")
        _check_count(len(specs))
        return specs

    @classmethod
    def check(cls, judges: str, vote: str = "mean", threshold: float = 0.5, **_: Any) -> None:
        """Its own options, before a run starts (each rater is checked by the caller)."""
        _check_vote(vote)
        check_threshold(threshold, "consensus")
        cls.rater_specs(judges)

    def score(self, frames: np.ndarray, instruction: str, latents: np.ndarray | None = None, *,
              success: Sequence[bool] | None = None) -> float:
        results = [verdict(r, frames, instruction, latents, success=success) for r in self.raters]
        self.scores.append([p for p, _ in results])
        self.history.append([v for _, v in results])
        if self.vote == "mean":
            return float(np.mean([p for p, _ in results]))
        return float(np.mean([v for _, v in results]))

    def rater_agreement(self) -> dict[str, Any]:
        """Pairwise Cohen's kappa (and raw agreement) between the raters' verdicts over every
        episode judged so far; ``mean_kappa`` averages the pairs."""
        pairs = []
        if self.history:
            votes = np.array(self.history)  # (episodes, raters)
            for i, j in itertools.combinations(range(len(self.raters)), 2):
                a, b = votes[:, i].tolist(), votes[:, j].tolist()
                pairs.append({"a": self.labels[i], "b": self.labels[j], "kappa": cohen_kappa(a, b),
                              "agreement": accuracy(a, b), "episodes": len(a)})
        defined = [p["kappa"] for p in pairs if p["kappa"] is not None]  # undefined where two raters never vary
        return {"raters": self.labels, "episodes": len(self.history), "pairs": pairs,
                "mean_kappa": float(np.mean(defined)) if defined else None}
