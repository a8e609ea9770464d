"""`harness report RUN`: the run's results as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.store import RESULTS, RunStore
from harness.summary import summarize


def load_results(run: Path) -> dict[str, Any]:
    """results.json, or a summary rebuilt from episodes.jsonl when the run was cut short."""
    run = Path(run)
    path = run / RESULTS
    if path.exists():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise HarnessError(f"{path} is not valid JSON ({exc.msg}); delete it and re-run the eval to rebuild it") from None
    store = RunStore(run)
    if not store.episodes_path.exists():
        raise HarnessError(f"{run} is not a run folder (no {RESULTS} or episodes.jsonl): pass the --out of an eval")
    return {"results": summarize(store.load()), "complete": None}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| policy | backend | task | success | 95% CI | n | errors | mean length |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for policy, backends in results["results"].items():
        for backend, block in backends.items():
            for env_id, b in block["tasks"].items():
                lines.append(f"| {policy} | {backend} | {env_id} | {_pct(b['success_rate'])} | {_ci(b['ci95'])} | "
                             f"{b['valid']} | {b['errors']} | {_num(b['mean_length'])} |")
            o = block["overall"]
            lines.append(f"| **{policy}** | {backend} | **all** | **{_pct(o['success_rate'])}** | {_ci(o['ci95'])} | "
                         f"{o['valid']} | {o['errors']} | {_num(o['mean_length'])} |")
    return "\n".join(lines)
