"""World-model speed on this CPU, every figure against a baseline measured in the same run.

1. Training throughput (samples/s) of the DiT sizes tiny and S (flow-matching steps, batch 8,
   H=2 + K=1 frames of 16 tokens x 16 dims, the embedded minivae latent shape).
2. Sampling cost per predicted frame vs the number of Euler steps (tiny, batch 1), as a ratio
   to one step.
3. WorldModelEnv steps/s (tiny DiT + minivae decoder to 128 px) at batch 1 and batch 64 vs the
   Meta-World simulator with one 128 px camera: one prediction per control step (frameskip 1),
   and the embedded configuration (frameskip 4: one prediction per 4 control steps).

    python benchmarks/bench_world_model.py [--threads 2] [--sim-steps 150]

Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def timed(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sim-steps", type=int, default=150)
    ap.add_argument("--sampler-steps", type=int, default=4)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import ENCODERS
    from world_models.env import WorldModelEnv, WorldModelVectorEnv
    from world_models.flow_matching import flow_matching_loss
    from world_models.world_model import SamplerConfig, WorldModel

    print(f"torch {torch.__version__}, {args.threads} threads")
    torch.manual_seed(0)
    N, D, A = 16, 16, 4

    # 1. training throughput ------------------------------------------------------------------
    rates = {}
    for size, reps in (("tiny", 10), ("S", 2)):
        dit = DiT(DiTConfig.from_size(size, latent_dim=D, num_tokens=N, action_dim=A))
        opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
        ctx, tgt, act = torch.randn(8, 2, N, D), torch.randn(8, 1, N, D), torch.randn(8, 1, A)

        def step(dit=dit, opt=opt, ctx=ctx, tgt=tgt, act=act):
            loss = flow_matching_loss(dit, ctx, tgt, act)
            opt.zero_grad()
            loss.backward()
            opt.step()

        rates[size] = 8 / timed(step, reps)
        params = sum(p.numel() for p in dit.parameters()) / 1e6
        print(f"train DiT-{size:<4} ({params:5.1f} M params): {rates[size]:8.1f} samples/s")
    print(f"  ratio tiny / S: {rates['tiny'] / rates['S']:.1f}x")

    # 2. sampling cost vs Euler steps ------------------------------------------------------------
    enc = ENCODERS.build("minivae").eval()
    dit = DiT(DiTConfig.from_size("tiny", latent_dim=D, num_tokens=N, action_dim=A)).eval()
    wm = WorldModel(enc, dit, None, torch.zeros(D), torch.ones(D), SamplerConfig(steps=args.sampler_steps),
                    {"camera": "corner2"}, torch.zeros(D), torch.ones(D))
    z = torch.randn(1, 2, N, D)
    a = torch.zeros(1, 1, A)
    base = None
    for steps in (1, 2, 4, 8, 16):
        t = timed(lambda s=steps: wm.predict(z, a, steps=s), 20)
        base = base or t
        print(f"sample 1 frame, {steps:>2} Euler steps: {t * 1e3:7.2f} ms  ({t / base:4.1f}x one step)")

    # 3. WorldModelEnv vs the simulator -------------------------------------------------------------
    from envs import make_env

    sim = make_env("metaworld/pick-place-v3", cameras=("corner2",), image_size=128)
    obs, _ = sim.reset(seed=0, options={"init_state": 0})
    rng = np.random.default_rng(0)
    sim_t = timed(lambda: sim.step(rng.uniform(-1, 1, 4).astype(np.float32)), args.sim_steps, warmup=5)
    sim_rate = 1 / sim_t
    ctx = obs["pixels"]["corner2"]
    sim.close()
    print(f"Meta-World sim, one 128 px camera: {sim_rate:8.1f} steps/s (baseline)")

    env = WorldModelEnv(wm, "corner2", image_size=128, context=ctx)
    env.reset(seed=0)
    b1 = 1 / timed(lambda: env.step(rng.uniform(-1, 1, 4).astype(np.float32)), 50, warmup=3)
    print(f"WorldModelEnv tiny, batch 1 : {b1:8.1f} env-steps/s = {b1 / sim_rate:5.2f}x the simulator (goal >= 1x)")
    venv = WorldModelVectorEnv(wm, "corner2", 64, image_size=128)
    venv.reset(seed=0, options={"context": ctx})
    t64 = timed(lambda: venv.step(rng.uniform(-1, 1, (64, 4)).astype(np.float32)), 5, warmup=1)
    b64 = 64 / t64
    print(f"WorldModelEnv tiny, batch 64: {b64:8.1f} env-steps/s = {b64 / sim_rate:5.2f}x the simulator (goal >= 20x)")
    lat = 64 / timed(lambda: wm.predict(torch.randn(64, 2, N, D), torch.zeros(64, 1, A)), 5)
    print(f"  latent-only prediction (no pixel decode), batch 64: {lat:8.1f} steps/s = {lat / sim_rate:5.2f}x")

    # the embedded configuration: frameskip 4 (one prediction + decode per 4 control steps), as
    # shipped in checkpoints/minivae_dit_tiny (random weights of the same shape when absent)
    f = 4
    dit4 = DiT(DiTConfig.from_size("tiny", latent_dim=D, num_tokens=N, action_dim=f * A)).eval()
    wm4 = WorldModel(enc, dit4, None, torch.zeros(D), torch.ones(D), SamplerConfig(steps=args.sampler_steps),
                     {"camera": "corner2", "frameskip": f}, torch.zeros(D), torch.ones(D))
    env4 = WorldModelEnv(wm4, "corner2", image_size=128, context=ctx)
    env4.reset(seed=0)
    c1 = 1 / timed(lambda: env4.step(rng.uniform(-1, 1, 4).astype(np.float32)), 48, warmup=4)
    print(f"WorldModelEnv tiny, frameskip {f}, batch 1 : {c1:8.1f} env-steps/s = {c1 / sim_rate:5.2f}x the simulator")
    venv4 = WorldModelVectorEnv(wm4, "corner2", 64, image_size=128)
    venv4.reset(seed=0, options={"context": ctx})
    c64 = 64 / timed(lambda: venv4.step(rng.uniform(-1, 1, (64, 4)).astype(np.float32)), 8, warmup=4)
    print(f"WorldModelEnv tiny, frameskip {f}, batch 64: {c64:8.1f} env-steps/s = {c64 / sim_rate:5.2f}x the simulator")


if __name__ == "__main__":
    main()
