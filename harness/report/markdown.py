"""`harness report RUN`: the run's results as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.run.store import RESULTS, RunStore
from harness.stats.agreement import shown
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


BLOCK_KEYS = ("success_rate", "ci95", "episodes", "errors", "mean_length")


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
    """The verdict and the world-model comparison first (what a reader came for), then success
    per policy, backend and task."""
    lines = []
    for backend, block in (results.get("comparison") or {}).items():
        lines += [*agreement_markdown(backend, block), ""]
    if lines:
        lines.append("## Success per policy, backend and task")
        lines.append("")
    return "\n".join(lines + success_table(results))


def success_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| policy | backend | task | success | 95% CI | n | of them errors | mean length |",
        "|---|---|---|---:|---|---:|---:|---:|",
    ]
    for policy, backends in results["results"].items():
        for backend, block in backends.items():
            for env_id, b in block["tasks"].items():
                lines.append(f"| {policy} | {backend} | {env_id} | {_pct(b['success_rate'])} | {_ci(b['ci95'])} | "
                             f"{b['episodes']} | {b['errors']} | {_num(b['mean_length'])} |")
            o = block["overall"]
            lines.append(f"| **{policy}** | {backend} | **all** | **{_pct(o['success_rate'])}** | {_ci(o['ci95'])} | "
                         f"{o['episodes']} | {o['errors']} | {_num(o['mean_length'])} |")
    return lines


def verdict(block: dict[str, Any]) -> str:
    """One sentence: can this world model rank these policies? Demanding: the lower end of
    Pearson r's 95% interval at least 0.8 and MMRV at most 0.05 for a yes."""
    r = block.get("ranking") or {}
    if "pearson_r" not in r:
        return f"Verdict: no ranking to judge ({r.get('note', 'fewer than 2 policies')})."
    n = len(r["policies"])
    lo = (r.get("pearson_r_ci95") or [None])[0]
    if lo is not None and lo >= 0.8 and r["mmrv"] <= 0.05:
        return (f"Verdict: this world model ranks these {n} policies as the simulator does (Pearson r "
                f"{r['pearson_r']:.2f}, interval from {lo:.2f}; MMRV {r['mmrv']:.3f}).")
    if r["spearman_rho"] >= 0.8:
        return (f"Verdict: this world model orders these {n} policies roughly as the simulator does (Spearman "
                f"rho {r['spearman_rho']:.2f}), but not reliably enough to rank them: Pearson r's interval reaches "
                f"down to {_num(lo, '.2f')} and MMRV is {r['mmrv']:.3f} (a yes needs >= 0.8 and <= 0.05).")
    return (f"Verdict: this world model cannot be trusted to rank these {n} policies (Spearman rho "
            f"{r['spearman_rho']:.2f}, MMRV {r['mmrv']:.3f}).")


def _ci95(ci: list[float | None] | None, spec: str = ".2f", pct: bool = False) -> str:
    """' [lo, hi]' of an interval, '' when there is none."""
    if not ci or ci[0] is None:
        return ""
    return f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if pct else f" [{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _ci_opt(ci: list[float | None]) -> str:
    return "-" if ci[0] is None else _ci(ci)


def agreement_markdown(backend: str, block: dict[str, Any]) -> list[str]:
    """The world-model-vs-simulator block: per policy, per episode, ranking, judge check."""
    lines = [f"## World model vs simulator: {backend} (judge: {block.get('judge') or '-'})", "", verdict(block), "",
             "| policy | in the world model | simulator success | world-model success | episode agreement | kappa "
             "| McNemar p (sim vs WM) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for policy, p in block["policies"].items():
        a = p["agreement"]
        lines.append(f"| {policy} | {p['mode'] if isinstance(p['mode'], str) else ', '.join(p['mode'])} | "
                     f"{_pct(p['sim']['success_rate'])} {_ci_opt(p['sim']['ci95'])} | "
                     f"{_pct(p['wm']['success_rate'])} {_ci_opt(p['wm']['ci95'])} | "
                     f"{_pct(a.get('accuracy'))} | {shown(a['cohen_kappa']) if 'cohen_kappa' in a else '-'} | "
                     f"{_num((p.get('mcnemar_sim_vs_wm') or {}).get('p_value'), '.3f')} |")
    e = block["episodes"]
    if e.get("n"):
        c = e["confusion"]
        lines += ["", f"- Per episode ({e['n']} pairs, {block['errors']} with an error, counted as a failure): agreement "
                      f"{_pct(e['accuracy'])}{_ci95(e.get('accuracy_ci95'), pct=True)}, Cohen's kappa "
                      f"{shown(e['cohen_kappa'])}{_ci95(e.get('cohen_kappa_ci95'))}; confusion (simulator = truth): "
                      f"both succeed {c['tp']}, world model only {c['fp']}, simulator only {c['fn']}, both fail {c['tn']}."]
    r = block["ranking"]
    if "pearson_r" in r:
        lines.append(f"- Across {len(r['policies'])} policies: Pearson r {r['pearson_r']:.2f}"
                     f"{_ci95(r.get('pearson_r_ci95'))}, Spearman rho {r['spearman_rho']:.2f}"
                     f"{_ci95(r.get('spearman_rho_ci95'))}, MMRV {r['mmrv']:.3f}{_ci95(r.get('mmrv_ci95'), '.3f')} (0 = "
                     f"the world model ranks the policies as the simulator does).")
        b = block.get("bootstrap")
        if b and r.get("pearson_r_ci95"):
            lines.append(f"- Intervals: 95% percentile bootstrap, {b['resamples']} resamples of the episodes within "
                         f"each {b['within']} (seed {b['seed']}); success rates: Wilson.")
    else:
        lines.append(f"- Ranking: {r.get('note', '-')}.")
    j = block.get("judge_on_sim") or {}
    if j.get("n"):
        lines.append(f"- The judge on the simulator's own rollouts ({j['n']}): agreement with the oracle "
                     f"{_pct(j['accuracy'])}, kappa {shown(j['cohen_kappa'])} (the judge's own error, apart from the "
                     f"world model's).")
    d = block.get("latent_divergence") or {}
    if d.get("mean"):
        m = d["mean"]
        picks = sorted({1, len(m) // 2, len(m) - 1} & set(range(1, len(m))))
        if picks:
            lines.append(f"- Open-loop latent divergence (normalised MSE, world model vs encoded simulator, "
                         f"{d['episodes'][1]} episodes replayed under the simulator's actions): " +
                         ", ".join(f"step {k}: {m[k]:.3f}" for k in picks) + ".")
    return lines
