"""A DINO-WM-budget CEM plan: the embedded world model here vs stable-worldmodel's CEM, one run.

Both sides plan at DINO-WM's budget (300 samples, top 30, 30 iterations, horizon 5, unit initial
std), with the same number of torch threads, on this CPU:

- ours: ``policies.cem.cem_plan`` with ``CEM_PRESETS["dino_wm"]`` over the shipped embedded
  world model ``minivae_dit_tiny`` (16 tokens x 16 dims, DiT width 64, history 2, frameskip 4:
  16 action numbers per world-model step; 2 Euler steps per predicted frame while planning).
- peer: stable-worldmodel's ``CEMSolver`` (``stable_worldmodel.solver.cem``) over its
  DINO-WM-style world model, ``PreJEPA`` (``stable_worldmodel.wm.prejepa.prejepa``) with a
  ``CausalPredictor`` (``stable_worldmodel.wm.prejepa.module``) over 16 patch tokens x 64 dims
  (54 latent dims + DINO-WM's 10-dim action embedding, concatenated per token as DINO-WM does),
  random weights, at the depth whose parameter count is closest to our transition model's.
  It runs in a child process with the peer's own python (stable-worldmodel and its pins live in a
  separate venv), started by running this file with ``--child``.

Action dimension: the peer's solver is configured with the env's 4-D action space and
``PlanConfig(action_block=4)``, so it searches over 4 x 4 = 16 numbers per planning step, the same
as ours (``wm.action_dim``: frameskip 4 x 4). The peer's observed history is one frame, so its
horizon-5 rollout predicts 5 frames from 5 actions as ours does; its predictor attends to the last
2 frames (``history_size``, our ``history``). The frozen image encoder is replaced by an identity
(the peer embeds the start and goal frames once per plan and caches them), so the timing is the
solver plus the predictor. Both processes apply ``harness.run.allocator.keep_freed_memory`` (as the
harness CLI does) so that the allocator is not a difference between them.

    python benchmarks/bench_peer_cem.py --peer-python /tmp/swm-venv/bin/python \\
        [--iterations 30] [--threads 1] [--depth auto] [--rounds 1]

``--iterations`` < 30 times that many iterations on both sides and scales linearly to 30 (every
iteration does the same work). ``--rounds`` > 1 alternates the two measurements and keeps the
best of each. Prints the CPU model and vector flags, both plan times and parameter counts, and
``peer_s / ours_s`` (> 1: ours is faster). Making the peer venv:

    python3 -m venv /tmp/swm-venv && echo torch==2.13.0 > /tmp/swm-c.txt
    /tmp/swm-venv/bin/pip install -c /tmp/swm-c.txt torch==2.13.0
    /tmp/swm-venv/bin/pip install -c /tmp/swm-c.txt stable-worldmodel==0.1.1 opencv-python-headless imageio

``benchmarks/run_all.py`` can call ``peer_vs_ours``; it reports no peer number (``peer`` None and
a ``reason``) when the peer python is absent or stable-worldmodel does not import.

This file's top level imports only the standard library: the peer's python runs it too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BUDGET = {"samples": 300, "elites": 30, "iterations": 30, "horizon": 5}  # DINO-WM's planning defaults
PEER_TOKENS = 16
PEER_DIM = 64  # predictor width: latent dims + action embedding
PEER_ACTION_EMB = 10  # DINO-WM's action_emb_dim
PEER_HEADS, PEER_DIM_HEAD, PEER_MLP = 4, 16, 256  # as our DiT-tiny: 4 heads over width 64, MLP ratio 4
PEER_DEPTHS = range(1, 13)
CHILD_TIMEOUT_S = 3600


def cpu_info() -> dict[str, object]:
    """CPU model name and the vector flags that decide which kernels are fast here."""
    model, flags = "unknown CPU", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": model, "flags": []}
    for line in text.splitlines():
        if line.startswith("model name") and model == "unknown CPU":
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = line.split(":", 1)[1].split()
    wanted = sorted(f for f in set(flags) if f in ("avx2", "fma") or f.startswith(("avx512", "amx")))
    return {"model": model, "flags": wanted}


def _keep_freed_memory() -> bool:
    """harness.run.allocator.keep_freed_memory, loaded from its file so that the peer's python (which
    does not have this repository installed) applies the same setting without importing harness."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_wm_harness_allocator", ROOT / "harness" / "run" / "allocator.py")
    if spec is None or spec.loader is None:
        return False
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return bool(mod.keep_freed_memory())


# ---------------------------------------------------------------------------------------------
# ours (this process, the project's venv)

def load_ours():
    """The embedded world model and its transition model's parameter count."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from bench_world_model import embedded_world_model

    wm = embedded_world_model()
    return wm, sum(p.numel() for p in wm.transition.parameters())


def ours_plan(wm, iterations: int) -> dict[str, object]:
    """Seconds of one dino_wm-preset ``cem_plan`` over ``wm`` (``iterations`` < 30: scaled),
    after a one-iteration warm-up."""
    import torch

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from bench_cem import plan_time

    g = torch.Generator().manual_seed(0)
    N, D = wm.encoder.num_tokens, wm.encoder.dim
    ctx, goal = torch.randn(1, wm.history, N, D, generator=g), torch.randn(N, D, generator=g)
    plan_time(wm, ctx, goal, "dino_wm", iterations=1)  # first-call costs (allocations, lazy init)
    return plan_time(wm, ctx, goal, "dino_wm", iterations=iterations)


# ---------------------------------------------------------------------------------------------
# peer (the child process, stable-worldmodel's venv)

def _torchvision_ops_shim(torch) -> None:
    """stable-worldmodel imports torchvision at import; PyPI's torchvision wheel is a CUDA build
    whose compiled ops do not load with a CPU torch, and its import then fails registering fake
    kernels for ``torchvision::nms``/``qnms``. Defining those two schemas first lets the import
    through; nothing here calls them."""
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    so = Path(spec.origin).parent / "_C.so"
    try:
        torch.ops.load_library(str(so))
        return  # a matching build: its own ops are there
    except Exception:  # noqa: BLE001 - any load failure means the ops are missing
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_ops_shim.lib = lib  # the schemas live as long as the Library object


def _peer_model(depth: int, history: int, action_dim: int):
    """stable-worldmodel's DINO-WM-style world model: PreJEPA + CausalPredictor over
    PEER_TOKENS x PEER_DIM tokens, random weights, an identity in place of the image encoder."""
    import types

    import torch
    from stable_worldmodel.wm.prejepa.module import CausalPredictor, Embedder
    from stable_worldmodel.wm.prejepa.prejepa import PreJEPA

    class IdentityBackbone(torch.nn.Module):
        """(B, P, d) latents -> a HuggingFace-style output with a CLS token (PreJEPA drops it)."""

        def forward(self, x, **_):
            cls = x.new_zeros(x.shape[0], 1, x.shape[2])
            return types.SimpleNamespace(last_hidden_state=torch.cat([cls, x], dim=1))

    predictor = CausalPredictor(num_patches=PEER_TOKENS, num_frames=history, dim=PEER_DIM, depth=depth,
                                heads=PEER_HEADS, dim_head=PEER_DIM_HEAD, mlp_dim=PEER_MLP)
    action_encoder = Embedder(in_chans=action_dim, emb_dim=PEER_ACTION_EMB)
    model = PreJEPA(IdentityBackbone(), predictor, extra_encoders=torch.nn.ModuleDict({"action": action_encoder}),
                    history_size=history, num_pred=1)
    return model.eval()


def _count(model) -> int:
    """The transition part's parameters: predictor + action embedding (the encoder is frozen and
    not counted, as our count covers the DiT transition model only)."""
    return sum(p.numel() for m in (model.predictor, model.extra_encoders) for p in m.parameters())


def peer_child(iterations: int, threads: int, depth: int | None, target_params: int, history: int,
               env_action_dim: int, frameskip: int, seed: int = 0) -> dict[str, object]:
    """In the peer's python: build the predictor at ``depth`` (None: the depth with the parameter
    count closest to ``target_params``) and time one CEMSolver plan at the DINO-WM budget
    (``iterations`` < 30: scaled), after a one-iteration warm-up. ``iterations`` 0: only import,
    count parameters and pick the depth (a probe, so that a broken peer costs no timing)."""
    import contextlib
    import importlib.metadata

    import torch

    torch.set_num_threads(threads)
    applied = _keep_freed_memory()
    _torchvision_ops_shim(torch)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optional envs (ale-py, ...) warn at import
        from gymnasium.spaces import Box
        from stable_worldmodel.policy import PlanConfig
        from stable_worldmodel.solver.cem import CEMSolver
    try:
        from loguru import logger

        logger.remove()  # the solver logs nothing we time; keep stderr for errors
    except ImportError:
        pass

    action_dim = env_action_dim * frameskip
    by_depth = {d: _count(_peer_model(d, history, action_dim)) for d in PEER_DEPTHS}
    if depth is None:
        depth = min(by_depth, key=lambda d: abs(by_depth[d] - target_params))
    about = {"depth": depth, "params": by_depth[depth], "params_by_depth": by_depth, "action_dim": action_dim,
             "threads": torch.get_num_threads(), "torch": torch.__version__,
             "version": importlib.metadata.version("stable-worldmodel"), "allocator_applied": applied}
    if iterations < 1:  # a probe: the import works, and which depth
        return about
    torch.manual_seed(seed)
    model = _peer_model(depth, history, action_dim)
    calls = [0]
    get_cost = model.get_cost

    def counted(info, cand):
        calls[0] += 1
        return get_cost(info, cand)

    model.get_cost = counted
    latent = PEER_DIM - PEER_ACTION_EMB
    g = torch.Generator().manual_seed(seed)
    info = {"pixels": torch.randn(1, 1, PEER_TOKENS, latent, generator=g),  # one observed frame
            "goal": torch.randn(1, 1, PEER_TOKENS, latent, generator=g),
            "action": torch.zeros(1, 1, action_dim),
            "id": torch.zeros(1, dtype=torch.long), "step_idx": torch.zeros(1, dtype=torch.long)}
    # the env's per-step action space with frameskip as action_block: 4 x 4 = 16 numbers per step
    space = Box(-1.0, 1.0, shape=(1, env_action_dim))
    config = PlanConfig(horizon=BUDGET["horizon"], receding_horizon=BUDGET["horizon"], history_len=1,
                        action_block=frameskip)

    def solve(n_steps: int) -> float:
        solver = CEMSolver(model, num_samples=BUDGET["samples"], topk=BUDGET["elites"], n_steps=n_steps,
                           var_scale=1.0, device="cpu", seed=seed)
        solver.configure(action_space=space, n_envs=1, config=config)
        fresh = {k: v.clone() for k, v in info.items()}
        with contextlib.redirect_stdout(sys.stderr):  # the solver prints its own timing line
            t = time.perf_counter()
            out = solver.solve(fresh)
            dt = time.perf_counter() - t
        if tuple(out["actions"].shape) != (1, BUDGET["horizon"], action_dim):
            raise RuntimeError(f"peer plan has shape {tuple(out['actions'].shape)}")
        return dt

    solve(1)  # warm-up: first-call costs and the cached start/goal embeddings
    calls[0] = 0
    timed = min(iterations, BUDGET["iterations"])
    dt = solve(timed)
    return {"plan_s": dt * BUDGET["iterations"] / timed, "timed_iterations": timed,
            "calls_per_iteration": calls[0] / timed, **about}


def run_peer(peer_python: str, iterations: int, threads: int, depth: int | None, target_params: int,
             history: int, env_action_dim: int, frameskip: int) -> dict[str, object]:
    """Run ``peer_child`` with the peer's python; its result, or ``{"error": ...}``."""
    args = {"iterations": iterations, "threads": threads, "depth": depth, "target_params": target_params,
            "history": history, "env_action_dim": env_action_dim, "frameskip": frameskip}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the peer's own packages only
    try:
        proc = subprocess.run([peer_python, str(Path(__file__).resolve()), "--child", json.dumps(args)],
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=str(HERE), env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"peer process failed to run: {e}"}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if isinstance(result, dict) and (proc.returncode == 0 or "error" in result):
        return result
    return {"error": f"peer process exited {proc.returncode}: {proc.stderr.strip()[-1500:]}"}


# ---------------------------------------------------------------------------------------------

def peer_vs_ours(peer_python: str | None, iterations: int = BUDGET["iterations"], threads: int = 1,
                 depth: int | None = None, rounds: int = 1) -> dict[str, object]:
    """One DINO-WM-budget plan with the embedded world model (this process) and with
    stable-worldmodel's CEM over a predictor of about the same parameter count (``peer_python``),
    the same torch threads on both sides, alternating ``rounds`` times, best of each.

    Returns ``cpu``, ``threads``, ``ours`` (plan_time's dict plus ``params``), ``peer`` (the
    child's dict) and ``ratio`` = peer plan_s / ours plan_s (> 1: ours faster). Where the peer's
    python is absent or its run fails (stable-worldmodel not importing, ...), ``peer`` and
    ``ratio`` are None and ``reason`` says why (ours is timed only once the peer has imported and
    picked its depth, in a probe run first)."""
    import torch

    out: dict[str, object] = {"cpu": cpu_info(), "threads": threads, "ours": None, "peer": None, "ratio": None}
    if not peer_python:
        return {**out, "reason": "no peer python given (--peer-python: a venv with stable-worldmodel)"}
    if not (Path(peer_python).is_file() and os.access(peer_python, os.X_OK)):
        return {**out, "reason": f"peer python {peer_python} is not an executable file"}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # before loading: the load measures its stand-ins at this count
    try:
        applied = _keep_freed_memory()
        wm, params = load_ours()
        if wm.action_dim % wm.frameskip:
            raise ValueError(f"action_dim {wm.action_dim} is not frameskip {wm.frameskip} x an env action")
        peer_args = dict(threads=threads, depth=depth, target_params=params, history=wm.history,
                         env_action_dim=wm.action_dim // wm.frameskip, frameskip=wm.frameskip)
        probe = run_peer(peer_python, 0, **peer_args)  # before timing anything: does the peer import?
        if "error" in probe:
            return {**out, "reason": probe["error"]}
        peer_args["depth"] = probe["depth"]  # the same predictor in every round
        ours = peer = None
        for _ in range(max(1, rounds)):
            o = ours_plan(wm, iterations)
            if ours is None or o["plan_s"] < ours["plan_s"]:
                ours = o
            p = run_peer(peer_python, iterations, **peer_args)
            if "error" in p:
                return {**out, "ours": {**ours, "params": params}, "reason": p["error"]}
            if peer is None or p["plan_s"] < peer["plan_s"]:
                peer = p
    finally:
        torch.set_num_threads(before)
    ours = {**ours, "params": params, "frameskip": wm.frameskip, "action_dim": wm.action_dim,
            "history": wm.history, "tokens": wm.encoder.num_tokens, "latent_dim": wm.encoder.dim,
            "inference_path": wm.inference.get("path"), "allocator_applied": applied,
            "torch": torch.__version__}
    return {**out, "ours": ours, "peer": peer, "ratio": peer["plan_s"] / ours["plan_s"]}


def report(r: dict[str, object]) -> str:
    cpu = r["cpu"]
    lines = [f"CPU: {cpu['model']}; vector flags: {' '.join(cpu['flags']) or 'none of avx2/fma/avx512/amx'}; "
             f"torch threads {r['threads']} on both sides",
             f"budget: {BUDGET['samples']} samples, top {BUDGET['elites']}, {BUDGET['iterations']} iterations, "
             f"horizon {BUDGET['horizon']}"]
    o, p = r["ours"], r["peer"]
    if o is not None and "plan_s" in o:
        extra = (f", {o['frameskip']} x {o['action_dim'] // o['frameskip']} = {o['action_dim']} action numbers per "
                 f"step, {o['tokens']} tokens x {o['latent_dim']} dims, history {o['history']}, "
                 f"{o['inference_path']}" if "frameskip" in o else "")
        lines.append(f"ours: cem_plan (dino_wm) over the embedded minivae_dit_tiny, transition {o['params']:,} params"
                     f"{extra}: {o['plan_s']:.2f} s per plan ({o['calls_per_iteration']:.0f} world-model call(s) "
                     f"per iteration; timed {o['timed_iterations']} iterations, scaled to {o['iterations']})")
    if p is None:
        lines.append(f"peer: no number ({r.get('reason')})")
        return "\n".join(lines)
    lines.append(f"peer: stable-worldmodel {p['version']} (torch {p['torch']}) CEMSolver over PreJEPA + CausalPredictor "
                 f"depth {p['depth']}, {p['params']:,} params ({PEER_TOKENS} tokens x {PEER_DIM} dims, "
                 f"{p['action_dim']} action numbers per step): {p['plan_s']:.2f} s per plan "
                 f"({p['calls_per_iteration']:.0f} model call(s) per iteration; timed {p['timed_iterations']} "
                 f"iterations, scaled to {BUDGET['iterations']})")
    lines.append("  peer params by depth: " + ", ".join(f"{d}: {n:,}" for d, n in p["params_by_depth"].items()))
    lines.append(f"ratio peer_s / ours_s = {r['ratio']:.2f} ({'ours faster' if r['ratio'] > 1 else 'peer faster'})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--peer-python", default=None, help="python of a venv with stable-worldmodel installed")
    ap.add_argument("--iterations", type=int, default=BUDGET["iterations"],
                    help="CEM iterations timed on each side (scaled to 30)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--depth", default="auto", help="peer predictor depth, or auto: closest parameter count")
    ap.add_argument("--rounds", type=int, default=1, help="alternating measurements; best of each")
    ap.add_argument("--json", default=None, help="also write the result here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        try:
            result = peer_child(**json.loads(args.child))
        except ImportError as e:
            print(json.dumps({"error": f"stable-worldmodel does not import in the peer python: {e!r}"}))
            sys.exit(2)
        print(json.dumps(result))
        return
    if args.iterations < 1 or args.threads < 1 or args.rounds < 1:
        ap.error("--iterations, --threads and --rounds must be >= 1")
    depth = None if args.depth == "auto" else int(args.depth)
    r = peer_vs_ours(args.peer_python, args.iterations, args.threads, depth, args.rounds)
    print(report(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str))
    if r["peer"] is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
