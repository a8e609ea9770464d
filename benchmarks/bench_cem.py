"""CEM planning speed on this CPU, as ratios measured in the same run.

1. One CEM iteration with all candidates in ONE batched world-model call vs the same candidates
   scored one world-model call each (a per-candidate loop). Acceptance: >= 20x.
2. Plan time per MPC step for the presets (cpu, vjepa2_ac, dino_wm), with the embedded tiny
   world-model shape (minivae 64 px -> 16 tokens x 16 dims, DiT tiny, frameskip 4).

    python benchmarks/bench_cem.py [--threads 2] [--samples 300] [--full]

``--full`` also times a whole dino_wm plan (30 iterations; minutes on 2 cores). Weights are
random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--full", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from policies.cem import CEM_PRESETS, cem_plan
    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import ENCODERS
    from world_models.world_model import SamplerConfig, WorldModel

    torch.manual_seed(0)
    enc = ENCODERS.build("minivae")
    N, D, f, A = enc.num_tokens, enc.dim, 4, 4
    dit = DiT(DiTConfig.from_size("tiny", latent_dim=D, num_tokens=N, action_dim=f * A))
    wm = WorldModel(enc, dit, None, torch.zeros(D), torch.ones(D), SamplerConfig(steps=4),
                    {"camera": "corner2", "frameskip": f}, torch.zeros(D), torch.ones(D)).eval()
    ctx, goal = torch.randn(1, 2, N, D), torch.randn(N, D)
    print(f"torch {torch.__version__}, {args.threads} threads; tiny DiT over {N} tokens x {D} dims, frameskip {f}")

    # 1. batched vs loop, one iteration of S candidates, horizon 5 (DINO-WM's)
    S, K = args.samples, 5
    cand = torch.rand(S, K, f * A) * 2 - 1
    g = torch.Generator()

    def batched():
        g.manual_seed(0)
        wm.predict(ctx, cand, generator=g, steps=2, temperature=0.0)

    def loop():
        for i in range(S):
            g.manual_seed(0)
            wm.predict(ctx, cand[i:i + 1], generator=g, steps=2, temperature=0.0)

    batched()
    t = time.perf_counter()
    batched()
    tb = time.perf_counter() - t
    t = time.perf_counter()
    loop()
    tl = time.perf_counter() - t
    print(f"one CEM iteration, {S} candidates x horizon {K}: batched {tb * 1e3:.0f} ms, per-candidate loop "
          f"{tl * 1e3:.0f} ms -> batched is {tl / tb:.1f}x faster")

    # 2. plan time per MPC step per preset
    for name in ("cpu", "vjepa2_ac") + (("dino_wm",) if args.full else ()):
        cfg = CEM_PRESETS[name]
        t = time.perf_counter()
        _, diag = cem_plan(wm, ctx, goal, cfg)
        dt = time.perf_counter() - t
        per_ctrl = dt / (cfg.execute * f)
        print(f"preset {name:9s} ({cfg.samples} samples, top {cfg.elites}, {cfg.iterations} it, horizon {cfg.horizon}, "
              f"execute {cfg.execute}): {dt:.2f} s per plan, {diag['calls']} world-model calls, "
              f"{per_ctrl * 1e3:.0f} ms per control step")
    if not args.full:
        cfg = replace(CEM_PRESETS["dino_wm"], iterations=3)
        t = time.perf_counter()
        cem_plan(wm, ctx, goal, cfg)
        dt = (time.perf_counter() - t) / 3 * 30
        print(f"preset dino_wm   (300 samples, top 30, 30 it, horizon 5, execute 5): ~{dt:.1f} s per plan "
              f"(extrapolated from 3 iterations; --full times it)")


if __name__ == "__main__":
    main()
