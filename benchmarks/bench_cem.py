"""CEM planning speed on this CPU, as ratios measured in the same run.

1. One CEM iteration with all candidates in ONE batched world-model call vs the same candidates
   scored one world-model call each (a per-candidate loop). Acceptance: >= 20x.
2. Plan time per MPC step for the presets (cpu, vjepa2_ac, dino_wm), with the embedded tiny
   world-model shape (minivae 64 px -> 16 tokens x 16 dims, DiT tiny, frameskip 4).

    python benchmarks/bench_cem.py [--threads 1] [--samples 300] [--full] [--embedded]

``--full`` also times a whole dino_wm plan (30 iterations). Weights are random (speed does not
depend on them) unless ``--embedded`` (the shipped minivae_dit_tiny). ``benchmarks/run_all.py``
imports ``batched_vs_loop`` and ``plan_time`` from here.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def batched_vs_loop(wm, context, samples: int = 300, horizon: int = 5, loop_samples: int | None = None,
                    sampler_steps: int = 2, batched_dtype=None) -> dict[str, float]:
    """Seconds for one CEM iteration's ``samples`` candidates (``horizon`` world-model steps each)
    scored in ONE batched ``predict`` call vs one call per candidate. ``loop_samples`` < samples
    times the loop over that many candidates and scales linearly (each call is independent).
    ``batched_dtype`` torch.bfloat16 runs the batched call in bf16 (CEM ``precision=bfloat16``);
    the loop stays float32, its faster precision at batch 1.
    Returns ``batched_s``, ``loop_s`` (for all ``samples``) and ``speedup``."""
    import torch

    cand = torch.rand(samples, horizon, wm.action_dim, generator=torch.Generator().manual_seed(0)) * 2 - 1
    g = torch.Generator()
    n_loop = samples if loop_samples is None else max(1, min(loop_samples, samples))

    def batched():
        g.manual_seed(0)
        wm.predict(context, cand, generator=g, steps=sampler_steps, temperature=0.0, dtype=batched_dtype)

    def loop():
        for i in range(n_loop):
            g.manual_seed(0)
            wm.predict(context, cand[i:i + 1], generator=g, steps=sampler_steps, temperature=0.0)

    batched()  # warm-up
    t = time.perf_counter()
    batched()
    tb = time.perf_counter() - t
    wm.predict(context, cand[:1], generator=g, steps=sampler_steps, temperature=0.0)  # warm-up
    t = time.perf_counter()
    loop()
    tl = (time.perf_counter() - t) * samples / n_loop
    return {"batched_s": tb, "loop_s": tl, "speedup": tl / tb, "loop_samples": n_loop}


def plan_time(wm, context, goal, preset: str, iterations: int | None = None) -> dict[str, float]:
    """Seconds per ``cem_plan`` with a preset from ``policies.cem.CEM_PRESETS``, and per control
    step (a plan is executed for ``execute * frameskip`` control steps before replanning).
    ``iterations`` < the preset's times that many and scales linearly (every iteration does the
    same work: one batched call of ``samples`` candidates)."""
    from policies.cem import CEM_PRESETS, cem_plan

    cfg = CEM_PRESETS[preset]
    run = cfg if iterations is None or iterations >= cfg.iterations else replace(cfg, iterations=iterations)
    t = time.perf_counter()
    _, diag = cem_plan(wm, context, goal, run)
    dt = (time.perf_counter() - t) * cfg.iterations / run.iterations
    control_steps = cfg.execute * wm.frameskip
    return {"plan_s": dt, "per_control_step_s": dt / control_steps, "control_steps": control_steps,
            "calls_per_iteration": diag["calls"] / run.iterations, "timed_iterations": run.iterations,
            "iterations": cfg.iterations, "samples": cfg.samples, "horizon": cfg.horizon}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--embedded", action="store_true", help="time the shipped minivae_dit_tiny checkpoint")
    args = ap.parse_args()
    import torch
    from bench_world_model import embedded_world_model, random_world_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wm = embedded_world_model() if args.embedded else random_world_model(frameskip=4)
    N, D, f = wm.encoder.num_tokens, wm.encoder.dim, wm.frameskip
    ctx, goal = torch.randn(1, 2, N, D), torch.randn(N, D)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tiny DiT over {N} tokens x {D} dims, "
          f"frameskip {f}{' (embedded weights)' if args.embedded else ' (random weights)'}")

    # 1. batched vs loop, one iteration of S candidates, horizon 5 (DINO-WM's)
    r = batched_vs_loop(wm, ctx, args.samples, 5)
    print(f"one CEM iteration, {args.samples} candidates x horizon 5: batched {r['batched_s'] * 1e3:.0f} ms, "
          f"per-candidate loop {r['loop_s'] * 1e3:.0f} ms -> batched is {r['speedup']:.1f}x faster")

    # 2. plan time per MPC step per preset
    for name in ("cpu", "vjepa2_ac", "dino_wm"):
        p = plan_time(wm, ctx, goal, name, iterations=None if args.full or name != "dino_wm" else 3)
        note = "" if p["timed_iterations"] == p["iterations"] else f" (extrapolated from {p['timed_iterations']} iterations; --full times it)"
        print(f"preset {name:9s} ({p['samples']} samples, {p['iterations']} it, horizon {p['horizon']}): "
              f"{p['plan_s']:.2f} s per plan, {p['calls_per_iteration']:.0f} world-model call(s) per iteration, "
              f"{p['per_control_step_s'] * 1e3:.0f} ms per control step{note}")


if __name__ == "__main__":
    main()
