"""Every benchmark in one run, one table of ratios measured side by side.

    .venv/bin/python benchmarks/run_all.py [--quick] [--threads 1] [--only wm,cem,overhead,workers,memory,peer]
                                           [--peer-python /path/to/venv/bin/python]
                                           [--json results.json] [--profile]

Rows (docs/benchmarks.md says what each one measures):

- Meta-World simulator steps/s (one 128 px camera) vs ``WorldModelEnv`` env-steps/s of the
  embedded ``minivae_dit_tiny`` (frameskip 4, decoded to 128 px) at batch 1 and batch 64
  (targets: >= 1x at batch 1, >= 20x per env-step at batch 64);
- CEM plan time per control step (presets ``cpu`` and ``dino_wm``), one 300-candidate
  iteration batched vs a per-candidate loop (target >= 20x), and a ``cpu``-preset plan with the
  harness's inference path vs torch's own modules (target: not slower);
- ``harness eval --workers 2`` vs ``--workers 1`` episodes/s;
- the harness's own overhead: ``run_episode`` vs a bare ``policy.act`` + ``env.step`` loop
  (target <= 10%), and the whole in-process ``run_eval`` vs the bare loop;
- peak RSS of an in-process eval, simulator only and with the world model (child processes);
- with ``--peer-python``: a DINO-WM-budget plan vs stable-worldmodel's CEM over a predictor of
  the same parameter count (benchmarks/bench_peer_cem.py).

``--quick`` shrinks every size (1-2 minutes on 2 shared cores); the default takes 4-5 minutes on
a quiet machine, about 12 when others keep both cores busy. Timings alternate between the things compared and keep the best of each (the overhead
rows: the median), so load from other users of the machine hits both alike; the ratios within one
run are the meaningful figures.
``--threads`` sets torch's threads (default 1: on a busy 2-core machine torch's default of 2
makes each tiny world-model call several times slower). If the run_episode overhead misses its
target, a cProfile of an in-process eval is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the bench_* modules next to this file
    sys.path.insert(0, str(HERE))

SECTIONS = ("wm", "cem", "overhead", "workers", "memory", "peer")
OVERHEAD_TARGET = ("<=", 1.10)  # harness time / bare-loop time: at most 10% more


@dataclass(frozen=True)
class Row:
    """One measurement. ``ratio = value / baseline``; ``target`` is a condition on the ratio,
    e.g. ``(">=", 20.0)``; rows without a baseline or target show "-"."""

    measure: str
    value: float | None
    unit: str
    baseline: float | None = None
    target: tuple[str, float] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        op, threshold = self.target
        if op == ">=":
            return self.ratio >= threshold
        if op == "<=":
            return self.ratio <= threshold
        raise ValueError(f"target operator must be '>=' or '<=', got {op!r}")


def fmt_num(x: float | None) -> str:
    if x is None:
        return "-"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_target(target: tuple[str, float] | None) -> str:
    return "-" if target is None else f"{target[0]} {target[1]:g}x"


def format_table(rows: list[Row]) -> str:
    """The markdown table: measure | value | baseline | ratio | target | met?"""
    lines = ["| measure | value | baseline | ratio | target | met? |", "|---|---:|---:|---:|---:|:---:|"]
    for r in rows:
        unit = f" {r.unit}" if r.unit else ""
        met = {None: "-", True: "yes", False: "NO"}[r.met]
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.measure}{note} | {fmt_num(r.value)}{unit} | "
                     f"{fmt_num(r.baseline)}{unit if r.baseline is not None else ''} | "
                     f"{'-' if r.ratio is None else fmt_num(r.ratio) + 'x'} | {fmt_target(r.target)} | {met} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; ``QUICK`` and ``FULL`` below."""

    sim_steps: int = 150  # simulator steps timed per round
    wm_b1_steps: int = 96  # control steps of WorldModelEnv at batch 1 per round
    wm_b64_steps: int = 16  # control steps of the 64-env WorldModelVectorEnv per round
    rounds: int = 3  # sim/WM timings alternate this many times, best kept
    cem_samples: int = 300
    cem_loop_samples: int | None = None  # None: time the whole per-candidate loop
    cem_dino_iterations: int | None = None  # None: time all 30 iterations of a dino_wm plan
    overhead_steps: int = 150
    overhead_repeats: int = 6
    state_steps: int = 500  # the state-only (no rendering) overhead row
    state_repeats: int = 15
    eval_episodes: int = 4
    eval_steps: int = 150
    eval_repeats: int = 3
    workers_episodes: int = 4  # per task (2 tasks)
    workers_steps: int = 150
    workers_rounds: int = 2
    memory_episodes: int = 2
    memory_steps: int = 60


FULL = Sizes()
QUICK = Sizes(sim_steps=60, wm_b1_steps=32, wm_b64_steps=8, rounds=1, cem_loop_samples=40, cem_dino_iterations=2,
              overhead_steps=60, overhead_repeats=3, state_steps=200, state_repeats=8, eval_episodes=2,
              eval_steps=40, eval_repeats=1, workers_episodes=1, workers_steps=40, workers_rounds=1,
              memory_episodes=1, memory_steps=20)


# sections ----------------------------------------------------------------------------------------
def wm_rows(sizes: Sizes, state: dict) -> list[Row]:
    """Simulator vs WorldModelEnv of the embedded world model, alternating, best of rounds."""
    import torch
    from bench_world_model import (
        EMBEDDED_WM,
        embedded_world_model,
        sim_steps_per_s,
        wm_env_steps_per_s,
    )

    from world_models.distill import DISTILLED_DIR

    wm = embedded_world_model()
    distilled = (wm.folder / DISTILLED_DIR / "config.json").is_file()  # harness distill-decoder's output
    sim = b1 = b64 = b64_bf16 = b64_dist = b64_dist_bf16 = 0.0
    bf16 = {"decode_dtype": torch.bfloat16, "predict_dtype": torch.bfloat16}
    for _ in range(sizes.rounds):
        rate, frame = sim_steps_per_s(size=128, steps=sizes.sim_steps)
        sim = max(sim, rate)
        b1 = max(b1, wm_env_steps_per_s(wm, frame, 1, sizes.wm_b1_steps, image_size=128))
        b64 = max(b64, wm_env_steps_per_s(wm, frame, 64, sizes.wm_b64_steps, image_size=128))
        b64_bf16 = max(b64_bf16, wm_env_steps_per_s(wm, frame, 64, sizes.wm_b64_steps, image_size=128, **bf16))
        if distilled:
            b64_dist = max(b64_dist, wm_env_steps_per_s(wm, frame, 64, sizes.wm_b64_steps, image_size=128,
                                                        decoder="distilled"))
            b64_dist_bf16 = max(b64_dist_bf16, wm_env_steps_per_s(wm, frame, 64, sizes.wm_b64_steps, image_size=128,
                                                                  decoder="distilled", **bf16))
    state.update(wm=wm, frame=frame)
    f = wm.frameskip
    rows = [
        Row("Meta-World sim, 1 camera 128 px", sim, "steps/s"),
        Row(f"WorldModelEnv {EMBEDDED_WM} (frameskip {f}) vs sim, batch 1", b1, "steps/s", sim, (">=", 1.0)),
        Row(f"WorldModelEnv {EMBEDDED_WM} vs sim, batch 64 (env-steps of all 64)", b64, "steps/s", sim, (">=", 20.0)),
        Row(f"WorldModelEnv {EMBEDDED_WM} vs sim, batch 64, --wm-precision bfloat16 (prediction and decoding)",
            b64_bf16, "steps/s", sim,
            (">=", 20.0)),
    ]
    if distilled:
        rows += [
            Row(f"WorldModelEnv {EMBEDDED_WM} vs sim, batch 64, --wm-decoder distilled", b64_dist, "steps/s", sim,
                (">=", 20.0)),
            Row(f"WorldModelEnv {EMBEDDED_WM} vs sim, batch 64, --wm-decoder distilled --wm-precision bfloat16",
                b64_dist_bf16, "steps/s", sim, (">=", 20.0)),
        ]
    threads, default = state.get("threads"), state.get("default_threads")
    if threads and default and default != threads:
        # what `harness eval` gets: it leaves torch at its default thread count
        import torch

        torch.set_num_threads(default)
        try:
            # few steps: on a busy machine this runs ~50x slower than with one thread
            b1_default = wm_env_steps_per_s(wm, frame, 1, min(sizes.wm_b1_steps, 16), image_size=128)
        finally:
            torch.set_num_threads(threads)
        rows.append(Row(f"WorldModelEnv batch 1 at torch's default {default} threads vs {threads}", b1_default,
                        "steps/s", b1, note="one timing, not best-of"))
    return rows


def loop_times_note(r: dict, samples: int) -> str:
    """Per-candidate loop time in each precision timed (fastest over thread counts), for a note."""
    best: dict[str, float] = {}
    for (_, dtype), seconds in r["loop_s_by_config"].items():
        best[dtype] = min(best.get(dtype, seconds), seconds)
    return ", ".join(f"{d} {s / samples * 1e3:.1f} ms" for d, s in best.items())


def cem_rows(sizes: Sizes, state: dict) -> list[Row]:
    import torch
    from bench_cem import allocator_effect, batched_vs_loop, default_vs_torch, plan_time
    from bench_world_model import embedded_world_model, sim_steps_per_s

    wm = state.get("wm") or embedded_world_model()
    frame = state.get("frame")
    if frame is None:
        _, frame = sim_steps_per_s(size=128, steps=5)
    z = wm.encode(frame[None, None])  # (1, 1, N, D): the simulator's reset frame
    ctx = z.expand(-1, wm.history, -1, -1).contiguous()
    goal = z[0, 0] + 0.1 * torch.randn(z.shape[2:], generator=torch.Generator().manual_seed(0))  # speed does not depend on it
    rows = []
    for preset, iterations in (("cpu", None), ("dino_wm", sizes.cem_dino_iterations)):
        p = plan_time(wm, ctx, goal, preset, iterations)
        note = f"{p['samples']} samples x {p['iterations']} it, horizon {p['horizon']}, replan every {p['control_steps']} steps"
        if p["timed_iterations"] != p["iterations"]:
            note += f"; {p['timed_iterations']} it timed"
        rows.append(Row(f"CEM plan time per control step, preset {preset}", p["per_control_step_s"] * 1e3, "ms",
                        note=note))
    S = sizes.cem_samples
    # float32 batched vs a float32 loop: what batching alone buys; the bf16 batched call vs the
    # loop in whichever precision is faster for it
    r = batched_vs_loop(wm, ctx, S, 5, sizes.cem_loop_samples, loop_dtypes=(None,))
    note = "" if r["loop_samples"] == S else f"loop timed on {r['loop_samples']}"
    rows.append(Row(f"CEM iteration, {S} candidates x horizon 5: one batched call vs per-candidate loop",
                    S / r["batched_s"], "cand/s", S / r["loop_s"], (">=", 20.0),
                    f"{note + '; ' if note else ''}loop in {r['loop_dtype']}"))
    r16 = batched_vs_loop(wm, ctx, S, 5, sizes.cem_loop_samples, batched_dtype=torch.bfloat16)
    rows.append(Row("CEM iteration as above, batched call in bfloat16 (precision=bfloat16) vs loop",
                    S / r16["batched_s"], "cand/s", S / r16["loop_s"], (">=", 20.0),
                    f"{note + '; ' if note else ''}loop fastest in {r16['loop_dtype']}: per candidate "
                    f"{loop_times_note(r16, S)}"))
    a = allocator_effect(S, state.get("threads", 1), rounds=min(2, sizes.rounds))
    if a["applied"]:
        for label in ("float32", "bfloat16"):
            rows.append(Row(f"CEM batched call ({label}) with harness.run.allocator.keep_freed_memory vs glibc defaults",
                            S / a[f"{label}_keep"], "cand/s", S / a[f"{label}_default"],
                            note="child processes, alternating, best of each"))
    d = default_vs_torch(wm.folder, ctx, goal, "cpu", rounds=max(2, sizes.rounds))
    rows.append(Row("CEM plan, preset cpu: the harness's inference path vs torch's own modules",
                    1 / d["default_s"], "plans/s", 1 / d["torch_s"], (">=", 1.0),
                    note=f"{d['record']['path']}: {d['record']['why']}; alternating, best of each"))
    threads, default = state.get("threads", 1), state.get("default_threads")
    if default and default != threads:
        # the whole machine, as `harness eval --workers 1` runs CEM (torch's default threads): the
        # batched call at all cores, the loop at whichever of the two thread counts is faster
        repeats = min(2, sizes.rounds)
        for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            r = batched_vs_loop(wm, ctx, S, 5, sizes.cem_loop_samples, batched_dtype=dtype, batched_threads=default,
                                loop_threads=(threads, default), repeats=repeats,
                                loop_dtypes=(None,) if dtype is None else (None, torch.bfloat16))
            rows.append(Row(f"CEM iteration as above on all {default} cores: batched {label} vs loop",
                            S / r["batched_s"], "cand/s", S / r["loop_s"], (">=", 20.0),
                            f"{note + '; ' if note else ''}loop fastest at {r['loop_threads']} thread(s) in "
                            f"{r['loop_dtype']} ({loop_times_note(r, S)} per candidate), best of {repeats}"))
    return rows


def overhead_rows(sizes: Sizes, state: dict) -> list[Row]:
    from bench_overhead import CAMERAS, IMAGE_SIZE, run_eval_vs_bare, runner_vs_bare

    cam = f"{CAMERAS[0]} {IMAGE_SIZE} px"
    rows = []
    # without rendering a step is ~0.3 ms, so the same relative precision takes many more runs
    for label, cameras, size, steps, repeats in (
            (cam, CAMERAS, IMAGE_SIZE, sizes.overhead_steps, sizes.overhead_repeats),
            ("state only (no rendering)", (), None, sizes.state_steps, sizes.state_repeats)):
        r = runner_vs_bare(steps, repeats, cameras=cameras, image_size=size)
        row = Row(f"harness run_episode vs bare act+step loop, {label}", r["runner_step_s"] * 1e3, "ms/step",
                  r["bare_step_s"] * 1e3, OVERHEAD_TARGET, f"median of {repeats}")
        state.setdefault("profile_settings", {})[row.measure] = (cameras, size)
        rows.append(row)
    e = run_eval_vs_bare(sizes.eval_episodes, sizes.eval_steps, sizes.eval_repeats)
    rows.append(Row(f"in-process eval (plan_eval + run_eval, store + fsync, summary) vs bare loop, {cam}",
                    e["eval_s"], "s", e["bare_s"],
                    note=f"{e['episodes']} episodes x {e['steps']} steps, median of {e['repeats']}"))
    return rows


def workers_rows(sizes: Sizes, state: dict) -> list[Row]:
    from bench_workers import workers_throughput

    r = workers_throughput(sizes.workers_episodes, sizes.workers_steps, rounds=sizes.workers_rounds)
    note = (f"{r['episodes']} episodes x {sizes.workers_steps} steps, 128 px, best of {sizes.workers_rounds}; "
            f"{'identical' if r['identical_outcomes'] else 'DIFFERENT'} outcomes")
    return [Row("harness eval --workers 2 vs --workers 1", r["w2_eps"], "episodes/s", r["w1_eps"], note=note)]


def memory_rows(sizes: Sizes, state: dict) -> list[Row]:
    from bench_memory import WM, peak_rss_mb

    threads = state.get("threads", 1)
    sim = peak_rss_mb(None, sizes.memory_episodes, sizes.memory_steps, threads)
    wm = peak_rss_mb(WM, sizes.memory_episodes, sizes.memory_steps, threads)
    note = f"{sizes.memory_episodes} episode(s) x {sizes.memory_steps} steps, BC policy, own process"
    rows = [
        Row("peak RSS of an in-process eval, simulator only", sim["peak_rss_mb"], "MB", note=note),
        Row(f"peak RSS of an in-process eval, simulator + {WM} vs simulator only", wm["peak_rss_mb"], "MB",
            sim["peak_rss_mb"]),
    ]
    default = state.get("default_threads")
    if default and default != threads:
        # `harness eval` leaves torch at its default thread count: the same eval that way
        slow = peak_rss_mb(WM, sizes.memory_episodes, sizes.memory_steps, default)
        rows.append(Row(f"wall time of that eval (sim + {WM}) at torch's default {default} threads vs {threads}",
                        slow["wall_s"], "s", wm["wall_s"], note="higher = slower; one timing each"))
    return rows


def peer_rows(sizes: Sizes, state: dict) -> list[Row]:
    """A DINO-WM-budget plan against stable-worldmodel's CEM over a predictor of the same
    parameter count (benchmarks/bench_peer_cem.py), where ``--peer-python`` names its venv."""
    from bench_peer_cem import peer_vs_ours

    r = peer_vs_ours(state.get("peer_python"), sizes.cem_dino_iterations or 30, state.get("threads", 1))
    if r["peer"] is None:
        return [Row("DINO-WM-budget CEM plan vs stable-worldmodel's CEM", None, "plans/s",
                    note=f"not measured: {r['reason']}")]
    o, p = r["ours"], r["peer"]
    return [Row(f"DINO-WM-budget CEM plan, embedded world model ({o['params']:,} params) vs stable-worldmodel "
                f"{p['version']} CEM over its DINO-WM-style predictor (depth {p['depth']}, {p['params']:,} params)",
                1 / o["plan_s"], "plans/s", 1 / p["plan_s"], (">=", 1.0),
                note=f"{o['timed_iterations']} of 30 iterations timed on each side")]


SECTION_FUNCS = {"wm": wm_rows, "cem": cem_rows, "overhead": overhead_rows, "workers": workers_rows,
                 "memory": memory_rows, "peer": peer_rows}
DEFAULT_SECTIONS = ("wm", "cem", "overhead", "workers", "memory")  # peer: with --peer-python


def machine_line() -> str:
    """CPU model, cores usable, load average."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"CPU: {model}, {cores} cores usable, vector flags: {cpu_flags()}; load average {load}"


def cpu_flags() -> str:
    """The CPU's vector extensions that decide which code is fast here (AVX2/FMA, AVX512, AMX)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = sorted(f for f in set(flags) if f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx")))
    return " ".join(wanted) or "none of avx/avx2/fma/avx512/amx"


def run(sections: tuple[str, ...], sizes: Sizes, threads: int, log=print, state: dict | None = None) -> list[Row]:
    import torch

    state = {} if state is None else state
    state.update(threads=threads, default_threads=torch.get_num_threads())
    torch.set_num_threads(threads)
    rows: list[Row] = []
    for name in sections:
        t = time.perf_counter()
        rows += SECTION_FUNCS[name](sizes, state)
        log(f"[{name}] done in {time.perf_counter() - t:.0f} s")
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole table in 1-2 minutes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in this process and the memory children")
    ap.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all; "
                                                 "peer only with --peer-python)")
    ap.add_argument("--peer-python", default=None,
                    help="python of a venv with stable-worldmodel (benchmarks/bench_peer_cem.py): adds the peer row")
    ap.add_argument("--json", default=None, help="also write the rows and the machine line to this JSON file")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of an in-process eval in any case")
    args = ap.parse_args(argv)
    default = DEFAULT_SECTIONS + (("peer",) if args.peer_python else ())
    sections = default if args.only is None else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    import torch

    sizes = QUICK if args.quick else FULL

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    header = [machine_line(), f"python {platform.python_version()}, torch {torch.__version__}, "
                              f"torch threads {args.threads} (torch default here: {torch.get_num_threads()}); "
                              f"sizes: {'quick' if args.quick else 'full'}"]
    for line in header:
        log(line)
    from harness.run.allocator import keep_freed_memory

    keep_freed_memory()  # as the harness CLI does (its effect: a row of the cem section)
    state: dict = {"peer_python": args.peer_python}
    rows = run(sections, sizes, args.threads, log, state)
    torch.set_num_threads(args.threads)
    print("\n".join(header))
    print(f"(all rows measured in this run, {time.perf_counter() - start:.0f} s; timings are best-of or median on a "
          f"shared machine: compare within the run)\n")
    print(format_table(rows))
    settings = state.get("profile_settings", {})  # overhead row -> (cameras, image size)
    missed = [r for r in rows if r.measure in settings and r.met is False]
    if missed or args.profile:
        from bench_overhead import profile_run_eval

        for row in missed:
            cameras, size = settings[row.measure]
            print(f"\n{row.measure}: overhead {100 * (row.ratio - 1):+.1f}% misses its target; where an in-process "
                  f"eval with the same settings spends its time (cProfile):")
            print(profile_run_eval(sizes.eval_episodes, sizes.eval_steps, cameras=cameras, image_size=size))
        if args.profile and not missed:
            print("\nwhere an in-process eval spends its time (cProfile):")
            print(profile_run_eval(sizes.eval_episodes, sizes.eval_steps))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": header, "rows": [asdict(r) | {"ratio": r.ratio, "met": r.met}
                                                                             for r in rows]}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
