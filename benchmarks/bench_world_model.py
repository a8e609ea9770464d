"""World-model speed on this CPU, every figure against a baseline measured in the same run.

1. Training throughput (samples/s) of the DiT sizes tiny and S (flow-matching steps, batch 8,
   H=2 + K=1 frames of 16 tokens x 16 dims, the embedded minivae latent shape).
2. Sampling cost per predicted frame vs the number of Euler steps (tiny, batch 1), as a ratio
   to one step.
3. WorldModelEnv steps/s (tiny DiT + minivae decoder to 128 px) at batch 1 and batch 64 vs the
   Meta-World simulator with one 128 px camera: one prediction per control step (frameskip 1),
   and the embedded configuration (frameskip 4: one prediction per 4 control steps).

    python benchmarks/bench_world_model.py [--threads 1] [--sim-steps 150] [--embedded]

Weights are random (speed does not depend on them), except with ``--embedded``, which times the
shipped ``checkpoints/minivae_dit_tiny`` instead of the random frameskip-4 model.
``benchmarks/run_all.py`` imports ``sim_steps_per_s``, ``wm_env_steps_per_s`` and
``embedded_world_model`` from here.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

EMBEDDED_WM = "minivae_dit_tiny"
CAMERA = "corner2"


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Mean seconds per call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def best_of(fn, repeats: int, warmup: int = 1) -> float:
    """Lowest seconds of one call of ``fn`` over ``repeats`` calls, after ``warmup`` untimed ones
    (on a shared machine the least disturbed call is the best estimate)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def random_world_model(frameskip: int = 1, sampler_steps: int = 4, size: str = "tiny"):
    """A minivae + DiT world model of the embedded shape (16 tokens x 16 dims) with random weights."""
    import torch

    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import ENCODERS
    from world_models.world_model import SamplerConfig, WorldModel

    enc = ENCODERS.build("minivae").eval()
    N, D, A = enc.num_tokens, enc.dim, 4
    dit = DiT(DiTConfig.from_size(size, latent_dim=D, num_tokens=N, action_dim=frameskip * A)).eval()
    return WorldModel(enc, dit, None, torch.zeros(D), torch.ones(D), SamplerConfig(steps=sampler_steps),
                      {"camera": CAMERA, "frameskip": frameskip}, torch.zeros(D), torch.ones(D))


def embedded_world_model(name: str = EMBEDDED_WM):
    """The shipped embedded world model (``checkpoints/<name>``), in eval mode."""
    from world_models import load_world_model

    wm = load_world_model(name)
    wm.eval()
    return wm


def sim_steps_per_s(task: str = "pick-place-v3", size: int = 128, steps: int = 150,
                    camera: str = CAMERA) -> tuple[float, np.ndarray]:
    """Meta-World env steps/s with one ``size`` px camera (the harness's env, random actions), and
    the reset frame (uint8 (size, size, 3)) to start world models from."""
    from envs import make_env

    sim = make_env(f"metaworld/{task}", cameras=(camera,), image_size=size, render="fast")  # as the embedded models saw
    try:
        obs, _ = sim.reset(seed=0, options={"init_state": 0})
        rng = np.random.default_rng(0)
        steps = min(steps, sim.max_episode_steps - 6)  # stepping past the episode's end raises
        t = timed(lambda: sim.step(rng.uniform(-1, 1, 4).astype(np.float32)), steps, warmup=5)
    finally:
        sim.close()
    return 1.0 / t, obs["pixels"][camera]


def wm_env_steps_per_s(wm, context: np.ndarray, batch: int, steps: int, image_size: int = 128,
                       camera: str = CAMERA, decode_dtype=None, predict_dtype=None, decoder: str = "full") -> float:
    """Environment steps/s of ``wm`` behind the Gymnasium interface: ``WorldModelEnv`` at batch 1,
    ``WorldModelVectorEnv`` (one batched call per step) otherwise; ``batch * steps / time``.
    ``steps`` is rounded up to whole world-model steps (``frameskip`` control steps each), and one
    whole world-model step is run first as warm-up. ``decode_dtype`` / ``predict_dtype``
    torch.bfloat16 run the decoder / the transition network in bf16 (both: ``--wm-precision
    bfloat16``). ``decoder`` "distilled": pixels through the distilled decoder (``--wm-decoder``)."""
    from world_models.env import WorldModelEnv, WorldModelVectorEnv

    f = wm.frameskip
    steps = -(-steps // f) * f
    rng = np.random.default_rng(0)
    if batch == 1:
        env = WorldModelEnv(wm, camera, image_size=image_size, context=context, decode_dtype=decode_dtype,
                            predict_dtype=predict_dtype, decoder=decoder)
        env.reset(seed=0)
        t = timed(lambda: env.step(rng.uniform(-1, 1, 4).astype(np.float32)), steps, warmup=f)
    else:
        venv = WorldModelVectorEnv(wm, camera, batch, image_size=image_size, decode_dtype=decode_dtype,
                                   predict_dtype=predict_dtype, decoder=decoder)
        venv.reset(seed=0, options={"context": context})
        t = timed(lambda: venv.step(rng.uniform(-1, 1, (batch, 4)).astype(np.float32)), steps, warmup=f)
    return batch / t


def training_rates(sizes: tuple[tuple[str, int], ...] = (("tiny", 10), ("S", 2))) -> dict[str, float]:
    """Flow-matching training samples/s per DiT size (batch 8, H=2 + K=1 frames of 16 x 16)."""
    import torch

    from world_models.dit import DiT, DiTConfig
    from world_models.flow_matching import flow_matching_loss

    N, D, A = 16, 16, 4
    rates = {}
    for size, reps in sizes:
        dit = DiT(DiTConfig.from_size(size, latent_dim=D, num_tokens=N, action_dim=A))
        opt = torch.optim.AdamW(dit.parameters(), lr=1e-4)
        ctx, tgt, act = torch.randn(8, 2, N, D), torch.randn(8, 1, N, D), torch.randn(8, 1, A)

        def step(dit=dit, opt=opt, ctx=ctx, tgt=tgt, act=act):
            loss = flow_matching_loss(dit, ctx, tgt, act)
            opt.zero_grad()
            loss.backward()
            opt.step()

        rates[size] = 8 / timed(step, reps)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine 2 threads make tiny calls ~10x slower)")
    ap.add_argument("--sim-steps", type=int, default=150)
    ap.add_argument("--sampler-steps", type=int, default=4)
    ap.add_argument("--embedded", action="store_true", help="time the shipped minivae_dit_tiny checkpoint")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    torch.manual_seed(0)

    # 1. training throughput ------------------------------------------------------------------
    rates = training_rates()
    for size, r in rates.items():
        print(f"train DiT-{size:<4}: {r:8.1f} samples/s")
    print(f"  ratio tiny / S: {rates['tiny'] / rates['S']:.1f}x")

    # 2. sampling cost vs Euler steps ------------------------------------------------------------
    wm = random_world_model(frameskip=1, sampler_steps=args.sampler_steps)
    z = torch.randn(1, 2, wm.encoder.num_tokens, wm.encoder.dim)
    a = torch.zeros(1, 1, wm.action_dim)
    base = None
    for steps in (1, 2, 4, 8, 16):
        t = timed(lambda s=steps: wm.predict(z, a, steps=s), 20)
        base = base or t
        print(f"sample 1 frame, {steps:>2} Euler steps: {t * 1e3:7.2f} ms  ({t / base:4.1f}x one step)")

    # 3. WorldModelEnv vs the simulator -------------------------------------------------------------
    sim_rate, ctx = sim_steps_per_s(size=128, steps=args.sim_steps)
    print(f"Meta-World sim, one 128 px camera: {sim_rate:8.1f} steps/s (baseline)")
    wm4 = embedded_world_model() if args.embedded else random_world_model(frameskip=4, sampler_steps=args.sampler_steps)
    for label, model in (("frameskip 1", wm), (f"frameskip {wm4.frameskip}" + (" (embedded)" if args.embedded else ""), wm4)):
        b1 = wm_env_steps_per_s(model, ctx, 1, 48)
        b64 = wm_env_steps_per_s(model, ctx, 64, 8)
        print(f"WorldModelEnv tiny, {label}, batch 1 : {b1:8.1f} env-steps/s = {b1 / sim_rate:5.2f}x the simulator (goal >= 1x)")
        print(f"WorldModelEnv tiny, {label}, batch 64: {b64:8.1f} env-steps/s = {b64 / sim_rate:5.2f}x the simulator (goal >= 20x)")
    lat = 64 / timed(lambda: wm.predict(torch.randn(64, 2, z.shape[2], z.shape[3]), torch.zeros(64, 1, wm.action_dim)), 5)
    print(f"  latent-only prediction (no pixel decode), batch 64: {lat:8.1f} steps/s = {lat / sim_rate:5.2f}x")


if __name__ == "__main__":
    main()
