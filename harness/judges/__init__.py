"""Judges: who decides whether an episode succeeded. One registry, spec strings like policies.

A judge spec is ``name`` or ``name:key=value,key=value``::

    oracle                                   the simulator's own success flags (simulator rollouts only)
    vlm:path=/models/Qwen2.5-VL-3B-Instruct,frames=8,samples=3
    consensus:vote=mean,judges=vlm:path=A,frames=4+vlm:path=B
    latent_classifier:path=checkpoints/judge-reach

``consensus`` takes its raters in ``judges=``, which must be its **last** parameter: everything
after ``judges=`` is the list of rater specs separated by ``+`` (so a rater's own ``,`` and ``:``
stay inside it). A ``+`` inside a rater's path therefore cannot be written in a spec.

``make_judge(spec, **context)`` builds a judge; ``context`` carries what the caller has and a judge
may use (``encoder=``: the frozen encoder whose latents the judge will see, e.g. the world model's).
Each factory receives only the context entries it names as parameters.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from harness.registry import Registry, parse_spec

from .base import Judge, as_env_judge, verdict

JUDGES: Registry = Registry("judge")

JUDGES.register("oracle", "harness.judges.oracle:OracleJudge",
                description="the simulator's own success oracle (ground truth; simulator rollouts only)")
JUDGES.register("vlm", "harness.judges.vlm:VLMJudge",
                description="vision-language model (transformers, chat template): P(yes) from answer-token logits, "
                            "several samples, majority vote")
JUDGES.register("consensus", "harness.judges.consensus:ConsensusJudge",
                description="several judges combined (mean probability or majority) with their pairwise Cohen's kappa")
JUDGES.register("latent_classifier", "harness.judges.latent_classifier:LatentClassifierJudge",
                description="success classifier on frozen encoder latents (`harness train-judge`); the embedded default")

CONTEXT_KEYS = ("encoder",)


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    params: dict[str, Any]
    text: str  # as the user wrote it; the judge's label in results

    def __str__(self) -> str:
        return self.text


def parse_judge_spec(text: str) -> JudgeSpec:
    """``name:key=value,...`` -> JudgeSpec, checking the name and the parameter names; a judge
    that combines others names the parameter taking the rest of the spec (``spec_tail``)."""
    tail = getattr(JUDGES.get(text.strip().partition(":")[0]), "spec_tail", None) \
        if text.strip().partition(":")[0] in JUDGES else None
    name, params = parse_spec(text, JUDGES, example="vlm:path=DIR,frames=8", skip=CONTEXT_KEYS, tail=tail)
    return JudgeSpec(name, params, text.strip())


def make_judge(spec: str | JudgeSpec, **context: Any) -> Judge:
    """Build a judge from its spec; ``context`` entries reach the factories that name them."""
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"make_judge: unknown context {unknown}; known: {list(CONTEXT_KEYS)}")
    if isinstance(spec, str):
        spec = parse_judge_spec(spec)
    factory = JUDGES.get(spec.name)
    accepted = inspect.signature(factory).parameters
    extra = {k: v for k, v in context.items() if k in accepted}
    judge = JUDGES.build(spec.name, **spec.params, **extra)
    judge.label = spec.text
    return judge


__all__ = ["JUDGES", "Judge", "JudgeSpec", "as_env_judge", "make_judge", "parse_judge_spec", "verdict"]
