"""CEM planning speed on this CPU, as ratios measured in the same run.

1. One CEM iteration with all candidates in ONE batched world-model call vs the same candidates
   scored one world-model call each (a per-candidate loop). Acceptance: >= 20x.
2. Plan time per MPC step for the presets (cpu, vjepa2_ac, dino_wm), with the embedded tiny
   world-model shape (minivae 64 px -> 16 tokens x 16 dims, DiT tiny, frameskip 4).
3. (run_all) a plan with the world model as the harness loads it (world_models/inference.py's
   measured stand-ins) vs torch's own modules (``default_vs_torch``), and the allocator setting's
   effect.

    python benchmarks/bench_cem.py [--threads 1] [--samples 300] [--full] [--embedded]

``--full`` also times a whole dino_wm plan (30 iterations). Weights are random (speed does not
depend on them) unless ``--embedded`` (the shipped minivae_dit_tiny). ``benchmarks/run_all.py``
imports ``batched_vs_loop``, ``plan_time``, ``default_vs_torch`` and ``allocator_effect`` from here.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def batched_vs_loop(wm, context, samples: int = 300, horizon: int = 5, loop_samples: int | None = None,
                    sampler_steps: int = 2, batched_dtype=None, batched_threads: int | None = None,
                    loop_threads: tuple[int, ...] = (), repeats: int = 1,
                    loop_dtypes: tuple = (None, "bfloat16")) -> dict[str, float]:
    """Seconds for one CEM iteration's ``samples`` candidates (``horizon`` world-model steps each)
    scored in ONE batched ``predict`` call vs one call per candidate. ``loop_samples`` < samples
    times the loop over that many candidates and scales linearly (each call is independent).
    ``batched_dtype`` torch.bfloat16 runs the batched call in bf16 (CEM ``precision=bfloat16``).
    ``batched_threads``: torch threads for the batched call (default: as set). ``loop_threads`` /
    ``loop_dtypes``: time the loop at each of these thread counts and precisions (None: float32;
    "bfloat16") and keep the fastest (default: as set; both precisions), so that each side runs in
    its own best configuration of the machine. ``repeats``: best of that many timings.
    Returns ``batched_s``, ``loop_s`` (for all ``samples``), ``speedup`` and the configuration used."""
    import torch
    from bench_world_model import best_of

    cand = torch.rand(samples, horizon, wm.action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator()
    n_loop = samples if loop_samples is None else max(1, min(loop_samples, samples))

    def batched():
        g.manual_seed(0)
        wm.predict(context, cand, generator=g, steps=sampler_steps, temperature=0.0, dtype=batched_dtype)

    def loop(dtype):
        for i in range(n_loop):
            g.manual_seed(0)
            wm.predict(context, cand[i:i + 1], generator=g, steps=sampler_steps, temperature=0.0, dtype=dtype)

    def warm_loop(dtype):
        wm.predict(context, cand[:1], generator=g, steps=sampler_steps, temperature=0.0, dtype=dtype)

    def timed(fn, warm, threads: int) -> float:
        """Best of ``repeats`` timings after a warm-up, at ``threads`` torch threads."""
        torch.set_num_threads(threads)
        try:
            warm()
            return best_of(fn, repeats, warmup=0)
        finally:
            torch.set_num_threads(current)

    current = torch.get_num_threads()
    bt = batched_threads or current
    tb = timed(batched, batched, bt)
    dtypes = {None: None, "float32": None, torch.float32: None, "bfloat16": torch.bfloat16,
              torch.bfloat16: torch.bfloat16}
    loop_times = {}
    for n in loop_threads or (current,):
        for d in loop_dtypes:
            dtype = dtypes[d]
            name = "float32" if dtype is None else "bfloat16"
            loop_times[(n, name)] = timed(lambda d=dtype: loop(d), lambda d=dtype: warm_loop(d), n) * samples / n_loop
    lt, ld = min(loop_times, key=loop_times.get)
    tl = loop_times[(lt, ld)]
    return {"batched_s": tb, "loop_s": tl, "speedup": tl / tb, "loop_samples": n_loop,
            "batched_threads": bt, "loop_threads": lt, "loop_dtype": ld, "loop_s_by_config": loop_times}


def plan_time(wm, context, goal, preset: str, iterations: int | None = None) -> dict[str, float]:
    """Seconds per ``cem_plan`` with a preset from ``policies.cem.CEM_PRESETS``, and per control
    step (a plan is executed for ``execute * frameskip`` control steps before replanning).
    ``iterations`` < the preset's times that many and scales linearly (every iteration does the
    same work: one batched call of ``samples`` candidates). The objective leaves out the proprio
    term (``dino_wm`` weighs it 1): it needs a fitted readout, and what is timed is the search in
    the world model."""
    from policies.cem import CEM_PRESETS, cem_plan

    cfg = replace(CEM_PRESETS[preset], proprio=0.0)
    run = cfg if iterations is None or iterations >= cfg.iterations else replace(cfg, iterations=iterations)
    t = time.perf_counter()
    _, diag = cem_plan(wm, context, goal, run)
    dt = (time.perf_counter() - t) * cfg.iterations / run.iterations
    control_steps = cfg.execute * wm.frameskip
    return {"plan_s": dt, "per_control_step_s": dt / control_steps, "control_steps": control_steps,
            "calls_per_iteration": diag["calls"] / run.iterations, "timed_iterations": run.iterations,
            "iterations": cfg.iterations, "samples": cfg.samples, "horizon": cfg.horizon}


def default_vs_torch(folder, context, goal, preset: str = "cpu", rounds: int = 3,
                     iterations: int | None = None) -> dict:
    """Seconds of one ``cem_plan`` (``preset``) with the world model as the harness loads it
    (``prepare_for_inference``: stand-ins only where they measured faster here) and with torch's
    own modules throughout (``WM_HARNESS_INFERENCE=torch``), alternating ``rounds`` times, best
    of each. Returns ``default_s``, ``torch_s`` and the default path's record."""
    import os

    from world_models.inference import ENV_SWITCH
    from world_models.world_model import WorldModel

    default = WorldModel.load(folder)
    before = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "torch"
    try:
        plain = WorldModel.load(folder)
    finally:
        if before is None:
            os.environ.pop(ENV_SWITCH)
        else:
            os.environ[ENV_SWITCH] = before
    best = {"default_s": float("inf"), "torch_s": float("inf")}
    for _ in range(rounds):
        for key, wm in (("default_s", default), ("torch_s", plain)):
            best[key] = min(best[key], plan_time(wm, context, goal, preset, iterations)["plan_s"])
    return {**best, "record": default.inference}


def allocator_child(keep: bool, samples: int, threads: int, repeats: int = 3) -> dict[str, float]:
    """In this (fresh) process: seconds of the batched call of ``batched_vs_loop`` (random
    weights, float32 and bfloat16, best of ``repeats``), with or without ``keep_freed_memory``."""
    import torch
    from bench_world_model import best_of, random_world_model

    from harness.run.allocator import keep_freed_memory

    applied = keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    wm = random_world_model(frameskip=4)
    ctx = torch.randn(1, wm.history, wm.encoder.num_tokens, wm.encoder.dim, generator=torch.Generator().manual_seed(0))
    cand = torch.rand(samples, 5, wm.action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = {"applied": applied}
    for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        out[name] = best_of(lambda d=dtype: wm.predict(ctx, cand, steps=2, temperature=0.0, dtype=d), repeats)
    return out


def allocator_effect(samples: int = 300, threads: int = 1, rounds: int = 2) -> dict[str, float]:
    """The batched call's seconds in child processes with ``harness.run.allocator.keep_freed_memory``
    and with glibc's defaults (the setting only takes effect process-wide), alternating,
    best of ``rounds`` each. Returns ``{float32,bfloat16}_{keep,default}`` seconds and ``applied``."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    best: dict[str, float] = {}
    applied = False
    for _ in range(rounds):
        for mode in ("keep", "default"):
            proc = subprocess.run([sys.executable, str(here / "bench_cem.py"), "--allocator-child", mode,
                                   "--samples", str(samples), "--threads", str(threads)],
                                  capture_output=True, text=True, timeout=600, cwd=here.parent)
            if proc.returncode != 0:
                raise RuntimeError(f"allocator child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            applied = applied or bool(r["applied"])
            for name in ("float32", "bfloat16"):
                key = f"{name}_{mode}"
                best[key] = min(best.get(key, float("inf")), r[name])
    return {**best, "applied": applied}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="time the shipped minivae_dit_tiny checkpoint")
    ap.add_argument("--allocator-child", choices=("keep", "default"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.allocator_child:
        import json

        print(json.dumps(allocator_child(args.allocator_child == "keep", args.samples, args.threads)))
        return
    import torch
    from bench_world_model import embedded_world_model, random_world_model

    from harness.run.allocator import keep_freed_memory

    keep_freed_memory()  # as the harness CLI does

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wm = embedded_world_model() if args.embedded else random_world_model(frameskip=4)
    N, D, f = wm.encoder.num_tokens, wm.encoder.dim, wm.frameskip
    ctx, goal = torch.randn(1, 2, N, D), torch.randn(N, D)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny DiT over {N} tokens x {D} dims, "
          f"frameskip {f}{' (embedded weights)' if args.embedded else ' (random weights)'}")

    # 1. batched vs loop, one iteration of S candidates, horizon 5 (DINO-WM's)
    r = batched_vs_loop(wm, ctx, args.samples, 5, loop_dtypes=(None,))  # float32 both sides
    print(f"one CEM iteration, {args.samples} candidates x horizon 5: batched {r['batched_s'] * 1e3:.0f} ms, "
          f"per-candidate loop {r['loop_s'] * 1e3:.0f} ms (in {r['loop_dtype']}) -> batched is "
          f"{r['speedup']:.1f}x faster")

    # 2. plan time per MPC step per preset
    for name in ("cpu", "vjepa2_ac", "dino_wm"):
        p = plan_time(wm, ctx, goal, name, iterations=None if args.full or name != "dino_wm" else 3)
        note = "" if p["timed_iterations"] == p["iterations"] else f" (extrapolated from {p['timed_iterations']} iterations; --full times it)"
        print(f"preset {name:9s} ({p['samples']} samples, {p['iterations']} it, horizon {p['horizon']}): "
              f"{p['plan_s']:.2f} s per plan, {p['calls_per_iteration']:.0f} world-model call(s) per iteration, "
              f"{p['per_control_step_s'] * 1e3:.0f} ms per control step{note}")


if __name__ == "__main__":
    main()
