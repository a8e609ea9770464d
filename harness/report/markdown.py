"""`harness report RUN`: the run's results as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.run.store import RESULTS, RunStore
from harness.stats.summary import summarize


def load_results(run: Path) -> dict[str, Any]:
    """results.json, or a summary rebuilt from episodes.jsonl when the run was cut short."""
    run = Path(run)
    path = run / RESULTS
    if path.exists():
        try:
            results = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HarnessError(f"{path} is not valid JSON ({getattr(exc, 'msg', exc)}); delete it and re-run the "
                               "eval to rebuild it") from None
        problem = _layout_problem(results)
        if problem:
            raise HarnessError(f"{path} is not a harness results file ({problem}); delete it and re-run the eval "
                               "with the same arguments to rebuild it from episodes.jsonl")
        return results
    store = RunStore(run)
    if not store.episodes_path.exists():
        raise HarnessError(f"{run} is not a run folder (no {RESULTS} or episodes.jsonl): pass the --out of an eval")
    return {"results": summarize(store.load()), "complete": None}


BLOCK_KEYS = ("success_rate", "ci95", "valid", "errors", "mean_length")


def _layout_problem(results: Any) -> str | None:
    """What keeps ``results`` from being a summary this module can print; None when it can."""
    if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
        return "no 'results' mapping at the top"
    for policy, backends in results["results"].items():
        if not isinstance(backends, dict):
            return f"results[{policy!r}] is not a mapping of backends"
        for backend, block in backends.items():
            where = f"results[{policy!r}][{backend!r}]"
            if not isinstance(block, dict) or not isinstance(block.get("tasks"), dict) \
                    or not isinstance(block.get("overall"), dict):
                return f"{where} lacks 'tasks' or 'overall'"
            for name, b in [*block["tasks"].items(), ("overall", block["overall"])]:
                if not isinstance(b, dict) or any(k not in b for k in BLOCK_KEYS):
                    return f"{where} {name!r} lacks one of {', '.join(BLOCK_KEYS)}"
    if not isinstance(results.get("comparison") or {}, dict):
        return "'comparison' is not a mapping"
    return None


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
    for backend, block in (results.get("comparison") or {}).items():
        lines += ["", *agreement_markdown(backend, block)]
    return "\n".join(lines)


def _ci_opt(ci: list[float | None]) -> str:
    return "-" if ci[0] is None else _ci(ci)


def agreement_markdown(backend: str, block: dict[str, Any]) -> list[str]:
    """The world-model-vs-simulator block: per policy, per episode, ranking, judge check."""
    lines = [f"## World model vs simulator: {backend} (judge: {block.get('judge') or '-'})", "",
             "| policy | in the world model | simulator success | world-model success | episode agreement | kappa |",
             "|---|---|---:|---:|---:|---:|"]
    for policy, p in block["policies"].items():
        a = p["agreement"]
        lines.append(f"| {policy} | {p['mode'] if isinstance(p['mode'], str) else ', '.join(p['mode'])} | "
                     f"{_pct(p['sim']['success_rate'])} {_ci_opt(p['sim']['ci95'])} | "
                     f"{_pct(p['wm']['success_rate'])} {_ci_opt(p['wm']['ci95'])} | "
                     f"{_pct(a.get('accuracy'))} | {_num(a.get('cohen_kappa'), '.2f')} |")
    e = block["episodes"]
    if e.get("n"):
        c = e["confusion"]
        lines += ["", f"- Per episode ({e['n']} pairs, {block['errors']} with an error left out): agreement "
                      f"{_pct(e['accuracy'])}, Cohen's kappa {e['cohen_kappa']:.2f}; confusion (simulator = truth): "
                      f"both succeed {c['tp']}, world model only {c['fp']}, simulator only {c['fn']}, both fail {c['tn']}."]
    r = block["ranking"]
    if "pearson_r" in r:
        lines.append(f"- Across {len(r['policies'])} policies: Pearson r {r['pearson_r']:.2f}, Spearman rho "
                     f"{r['spearman_rho']:.2f}, MMRV {r['mmrv']:.3f} (0 = the world model ranks the policies as the "
                     f"simulator does).")
    else:
        lines.append(f"- Ranking: {r.get('note', '-')}.")
    j = block.get("judge_on_sim") or {}
    if j.get("n"):
        lines.append(f"- The judge on the simulator's own rollouts ({j['n']}): agreement with the oracle "
                     f"{_pct(j['accuracy'])}, kappa {j['cohen_kappa']:.2f} (the judge's own error, apart from the "
                     f"world model's).")
    d = block.get("latent_divergence") or {}
    if d.get("mean"):
        m = d["mean"]
        picks = sorted({1, len(m) // 2, len(m) - 1} & set(range(1, len(m))))
        if picks:
            lines.append("- Latent divergence (normalised MSE, world model vs encoded simulator): " +
                         ", ".join(f"step {k}: {m[k]:.3f}" for k in picks) + ".")
    return lines
