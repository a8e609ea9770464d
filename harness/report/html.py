"""`harness report RUN [RUN...]`: report.md and a self-contained report.html.

The HTML page needs no server and no other file: plots are inline PNGs (matplotlib, Agg) and
the first side-by-side videos are inline mp4 data (later ones are linked). Per run: success per
policy and backend, the world-model-vs-simulator agreement block with a success scatter across
policies (identity line = perfect agreement), the confusion matrix, the latent divergence per
world-model step; per probe folder (``probe.json`` from ``harness probe``): R^2 bars per
dimension group and layer-wise curves.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.run.store import atomic_write_text, check_writable
from harness.stats.agreement import shown

INLINE_VIDEOS = 6  # per run; more are linked, so the page stays a few MB
MAX_INLINE_VIDEO_BYTES = 3_000_000


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def success_bars(results: dict[str, Any]) -> str:
    plt = _plt()
    policies = list(results["results"])
    backends = sorted({b for p in results["results"].values() for b in p})
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(policies) * len(backends)), 3.2))
    width = 0.8 / max(1, len(backends))
    for j, backend in enumerate(backends):
        xs, ys, err = [], [], [[], []]
        for i, policy in enumerate(policies):
            block = results["results"][policy].get(backend)
            if block is None or block["overall"]["success_rate"] is None:
                continue
            o = block["overall"]
            xs.append(i + j * width)
            ys.append(o["success_rate"])
            err[0].append(max(0.0, o["success_rate"] - o["ci95"][0]))  # rounding can put the rate a hair outside
            err[1].append(max(0.0, o["ci95"][1] - o["success_rate"]))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=backend)
    ax.set_xticks([i + width * (len(backends) - 1) / 2 for i in range(len(policies))],
                  [short_label(p) for p in policies], rotation=20,
                  ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    if backends:  # an empty run (no episode yet) has nothing to label
        ax.legend(fontsize=8)
    return _png(fig)


def short_label(policy: str) -> str:
    """'bc:path=checkpoints/policies/bc_metaworld/step_000250' -> 'bc:step_000250' for plot labels."""
    name, _, params = policy.partition(":")
    if "/" in params and len(policy) > 24:
        return f"{name}:{params.rstrip('/').split('/')[-1]}"
    return policy


def _err(block: dict[str, Any]) -> list[list[float]]:
    """Error-bar lengths of a rate and its interval (never negative: bootstrap rounding)."""
    r, (lo, hi) = block["success_rate"], block["ci95"]
    return [[max(0.0, r - lo)], [max(0.0, hi - r)]]


def agreement_scatter(block: dict[str, Any], backend: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.8, 3.8))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="identity (perfect agreement)")
    for policy, p in block["policies"].items():
        s, w = p["sim"], p["wm"]
        if s["success_rate"] is None or w["success_rate"] is None:
            continue
        ax.errorbar(s["success_rate"], w["success_rate"], xerr=_err(s), yerr=_err(w), fmt="o", capsize=2, ms=6)
        ax.annotate(short_label(policy), (s["success_rate"], w["success_rate"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    r = block["ranking"]
    title = backend
    if "pearson_r" in r:
        title += f"\nPearson r {r['pearson_r']:.2f}, MMRV {r['mmrv']:.3f}"
    ax.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="simulator success", ylabel="world-model success",
           title=title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def confusion_matrix(c: dict[str, int]) -> list[list[int]]:
    """Rows: world-model success, failure (the plot's y labels); columns: simulator success,
    failure (its x labels)."""
    return [[c["tp"], c["fp"]], [c["fn"], c["tn"]]]


def confusion_plot(block: dict[str, Any]) -> str | None:
    e = block["episodes"]
    if not e.get("n"):
        return None
    plt = _plt()
    c = e["confusion"]
    m = confusion_matrix(c)
    fig, ax = plt.subplots(figsize=(3.2, 3.0))
    ax.imshow(m, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(m[i][j]), ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], ["sim success", "sim failure"])
    ax.set_yticks([0, 1], ["WM success", "WM failure"])
    ax.set_title(f"per episode: agreement {100 * e['accuracy']:.0f}%, kappa {shown(e['cohen_kappa'])}", fontsize=9)
    return _png(fig)


def divergence_plot(block: dict[str, Any]) -> str | None:
    d = block.get("latent_divergence") or {}
    if not d.get("mean"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.0))
    ax.plot(range(len(d["mean"])), d["mean"], marker=".")
    ax.set(xlabel="world-model step", ylabel="normalised latent MSE",
           title="open-loop replays: world model vs encoded simulator")
    ax.title.set_fontsize(9)
    return _png(fig)


def _mean(v: Any) -> float | None:
    return v.get("mean") if isinstance(v, dict) else v


def probe_plots(probe: dict[str, Any]) -> list[str]:
    """From a probe.json (``harness probe``): R^2 per dimension group for each (source, latents,
    k) on clean frames next to the random-projection baseline, and R^2 per layer (curves)."""
    plt = _plt()
    rows = [r for r in probe.get("results") or [] if r.get("corruption") in (None, "none")]
    out = []
    groups = list(probe.get("groups") or sorted({g for r in rows for g in (r.get("r2_groups") or {})}))
    bars = [r for r in rows if r.get("layer") is None]
    if bars:
        labels = [f"{r['source']} {r.get('latents', '')} k={r['k']} {r.get('probe', '')}".strip() for r in bars]
        series = ["overall", *groups, "random projection"]
        fig, ax = plt.subplots(figsize=(max(4.5, 0.45 * len(bars) * len(series)), 3.4))
        width = 0.8 / len(series)
        for j, g in enumerate(series):
            if g == "overall":
                vals = [_mean(r.get("r2")) for r in bars]
            elif g == "random projection":
                vals = [_mean((r.get("baselines") or {}).get("random_projection", {}).get("r2")) for r in bars]
            else:
                vals = [_mean((r.get("r2_groups") or {}).get(g)) for r in bars]
            ax.bar([i + j * width for i in range(len(bars))], [v if v is not None else 0.0 for v in vals], width,
                   label=g, color="0.7" if g == "random projection" else None)
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(bars))], labels, rotation=20, ha="right",
                      fontsize=7)
        ax.axhline(0, color="0.4", lw=0.8)
        ax.set_ylabel("action R^2 (held-out episodes)")
        ax.legend(fontsize=7)
        out.append(_png(fig))
    layered = [r for r in rows if r.get("layer") is not None]
    if layered:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        curves: dict[str, list] = {}
        for r in layered:
            curves.setdefault(f"{r['source']} k={r['k']} {r.get('probe', '')}", []).append((r["layer"], _mean(r.get("r2"))))
        for name, pts in curves.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set(xlabel="encoder layer", ylabel="action R^2", title="layer-wise probe")
        ax.legend(fontsize=7)
        out.append(_png(fig))
    return out


def probe_table(probe: dict[str, Any]) -> list[str]:
    """Markdown rows: R^2 / Pearson r per (source, layer, latents, k, corruption, probe)."""
    groups = list(probe.get("groups") or [])
    lines = ["| source | layer | latents | k | corruption | probe | R^2 | Pearson r | " +
             " | ".join(f"R^2 {g}" for g in groups) + " | random proj. R^2 |",
             "|---|---|---|---:|---|---|---:|---:|" + "---:|" * len(groups) + "---:|"]

    def f(v: Any) -> str:
        m = _mean(v)
        return "-" if m is None else f"{m:.3f}"

    for r in probe.get("results") or []:
        rp = (r.get("baselines") or {}).get("random_projection", {})
        lines.append(f"| {r['source']} | {'-' if r.get('layer') is None else r['layer']} | {r.get('latents', '-')} | "
                     f"{r['k']} | {r.get('corruption', 'none')} | {r.get('probe', '-')} | {f(r.get('r2'))} | "
                     f"{f(r.get('pearson'))} | " + " | ".join(f((r.get('r2_groups') or {}).get(g)) for g in groups) +
                     f" | {f(rp.get('r2'))} |")
    return lines


def _video_tags(run: Path, records: list[dict[str, Any]]) -> list[str]:
    tags, inline = [], 0
    seen = set()
    for r in records:
        v = r.get("video")
        if not v or v in seen:
            continue
        seen.add(v)
        path = run / v
        if not path.exists():
            continue
        caption = html.escape(f"{r['policy']} · {r['env_id']} #{r['init_state']}")
        if inline < INLINE_VIDEOS and path.stat().st_size <= MAX_INLINE_VIDEO_BYTES:
            data = base64.b64encode(path.read_bytes()).decode()
            src = f"data:video/mp4;base64,{data}"
            inline += 1
        else:
            src = html.escape(str(v))
        tags.append(f'<figure><video controls muted loop width="480" src="{src}"></video>'
                    f"<figcaption>{caption}</figcaption></figure>")
    return tags


def _md_to_html_table(lines: list[str]) -> str:
    """The report's Markdown tables and bullet lines as HTML (no Markdown dependency)."""
    out, table = [], []

    def flush():
        if table:
            head, body = table[0], table[2:]
            cells = lambda row, tag: "".join(f"<{tag}>{html.escape(c.strip()).replace('**', '')}</{tag}>"  # noqa: E731
                                             for c in row.strip("|").split("|"))
            out.append("<table><tr>" + cells(head, "th") + "</tr>" +
                       "".join("<tr>" + cells(r, "td") + "</tr>" for r in body) + "</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h3>{html.escape(line[3:])}</h3>")
        elif line.startswith("- "):
            out.append(f"<p>{html.escape(line[2:])}</p>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2),td:nth-child(3){text-align:left}th{background:#f3f3f3}
.plots img{margin:6px;border:1px solid #eee}figure{display:inline-block;margin:6px}figcaption{font-size:12px}
.note{background:#fff8e0;padding:8px;border-left:4px solid #e0b000}"""


def write_report(runs: list[Path], out: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html for eval run folders and probe folders; returns both paths."""
    from harness.report.markdown import agreement_markdown, load_results, markdown, success_table
    from harness.run.store import RunStore

    if not runs:
        raise HarnessError("harness report needs at least one run folder (the --out of an eval or a probe)")
    out = Path(out) if out else Path(runs[0])
    md_parts, body = [], []
    for run in map(Path, runs):
        probe_file = run / "probe.json"
        if probe_file.exists() and not (run / "episodes.jsonl").exists():
            try:
                probe = json.loads(probe_file.read_text())
                table = probe_table(probe)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise HarnessError(f"{probe_file} is not a probe result written by `harness probe` "
                                   f"({type(exc).__name__}: {str(exc)[:80]}); re-run the probe into a new --out") from None
            md_parts.append(f"# Probe: {run}\n\n" + "\n".join(table) + "\n")
            body.append(f"<h2>Action probe: {html.escape(str(run))}</h2>" + _md_to_html_table(table) +
                        "<div class='plots'>" + "".join(probe_plots(probe)) + "</div>")
            continue
        results = load_results(run)
        records = RunStore(run).load() if (run / "episodes.jsonl").exists() else []
        md = markdown(results)
        md_parts.append(f"# Run: {run}\n\n{md}\n")
        section = [f"<h2>Run: {html.escape(str(run))}</h2>"]
        cfg = results.get("config") or {}
        if cfg:
            section.append(f"<p>env {html.escape(str(cfg.get('env')))}, {cfg.get('episodes')} episodes per task, "
                           f"policies {html.escape(', '.join(cfg.get('policies') or []))}"
                           + (f", world model {html.escape(str(cfg.get('wm')))}" if cfg.get("wm") else "") + "</p>")
        for backend, block in (results.get("comparison") or {}).items():
            section.append(_md_to_html_table(agreement_markdown(backend, block)))
            plots = [agreement_scatter(block, backend), confusion_plot(block), divergence_plot(block)]
            section.append("<div class='plots'>" + "".join(p for p in plots if p) + "</div>")
            r = block.get("ranking", {})
            if "pearson_r" in r and len(r["policies"]) < 4:
                section.append(f"<p class='note'>Only {len(r['policies'])} policies: Pearson r and MMRV over so few "
                               f"points are fragile; evaluate more policies for a ranking claim.</p>")
        section.append("<h3>Success per policy, backend and task</h3>")
        section.append(_md_to_html_table(success_table(results)))
        section.append(f"<div class='plots'>{success_bars(results)}</div>")
        videos = _video_tags(run, records)
        if videos:
            section.append("<h3>Videos (simulator | world model)</h3>" + "".join(videos))
        body.append("\n".join(section))
    md_path, html_path = out / "report.md", out / "report.html"
    check_writable(out)
    atomic_write_text(md_path, "\n".join(md_parts))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wm-harness report</title><style>{CSS}</style>"
            f"</head><body><h1>wm-harness report</h1>{''.join(body)}</body></html>")
    atomic_write_text(html_path, page)
    return md_path, html_path
