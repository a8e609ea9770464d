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

import yaml

from harness.errors import HarnessError
from harness.registry import Registry

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


def _value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _tail_parameter(factory: Any) -> str | None:
    """The parameter that takes the rest of the spec (``consensus``'s ``judges``), if any."""
    return getattr(factory, "spec_tail", None)


def parse_judge_spec(text: str) -> JudgeSpec:
    """``name:key=value,...`` -> JudgeSpec, checking the name and the parameter names."""
    text = text.strip()
    name, sep, rest = text.partition(":")
    if not name:
        raise HarnessError(f"empty judge name in {text!r}: write e.g. 'oracle' or 'vlm:path=DIR'")
    if name not in JUDGES:
        raise HarnessError(JUDGES.unknown_message(name))
    factory = JUDGES.get(name)
    params: dict[str, Any] = {}
    tail = _tail_parameter(factory)
    if sep and tail:  # the first `tail=` takes the rest of the spec, nested commas and colons included
        marker = f"{tail}="
        if rest.startswith(marker):
            rest, params[tail] = "", rest[len(marker):]
        elif "," + marker in rest:
            rest, _, params[tail] = rest.partition("," + marker)
    if sep:
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise HarnessError(f"judge parameter {item!r} in {text!r} is not key=value: write e.g. "
                                   f"'vlm:path=DIR,frames=8'")
            params[key.strip()] = _value(value.strip())
    allowed = [p for p in inspect.signature(factory).parameters if p not in CONTEXT_KEYS]
    for key in params:
        if key not in allowed:
            raise HarnessError(f"judge {name!r} has no parameter {key!r}; its parameters: {', '.join(allowed) or '(none)'}")
    return JudgeSpec(name, params, text)


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
