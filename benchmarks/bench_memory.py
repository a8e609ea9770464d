"""Peak memory (max RSS) of an in-process evaluation, simulator only and with the embedded world
model, each in a fresh child process so the two peaks are separate (``ru_maxrss`` is a
high-water mark: it never goes down within a process).

    python benchmarks/bench_memory.py [--episodes 2] [--max-steps 60]

The eval is the embedded one's shape (configs/eval/embedded.yaml): Meta-World reach, camera
corner2 at 64 px, the top BC checkpoint, no video; with ``--wm`` the same episodes also run in
``minivae_dit_tiny`` judged by its success classifier. ``benchmarks/run_all.py`` imports
``peak_rss_mb`` from here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV_ID = "metaworld/reach-v3"
POLICY = "bc:path=checkpoints/policies/bc_metaworld/step_000250"
WM = "minivae_dit_tiny"


def max_rss_mb(who: int | None = None) -> float:
    """``getrusage(who).ru_maxrss`` in MB (Linux reports KiB; macOS bytes)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF if who is None else who).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def peak_rss_mb(wm: str | None, episodes: int = 2, max_steps: int = 60, threads: int = 1,
                policy: str = POLICY, timeout: float = 600) -> dict[str, float]:
    """Run one in-process eval in a child process (this file with ``--child``); its peak RSS in
    MB, its RSS at start (torch imported), and its wall seconds."""
    cmd = [sys.executable, str(HERE / "bench_memory.py"), "--child", "--episodes", str(episodes),
           "--max-steps", str(max_steps), "--threads", str(threads), "--policy", policy]
    if wm:
        cmd += ["--wm", wm]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    sys.path.insert(0, str(HERE))
    from bench_overhead import in_process_eval

    from harness.run.allocator import keep_freed_memory

    keep_freed_memory()  # as `harness eval` does
    torch.set_num_threads(args.threads)
    floor = max_rss_mb()
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        summary = in_process_eval(Path(tmp) / "run", args.episodes, args.max_steps, ENV_ID, args.policy,
                                  ("corner2",), 64, wm=args.wm)
    print(json.dumps({"peak_rss_mb": max_rss_mb(), "start_rss_mb": floor, "wall_s": time.perf_counter() - t,
                      "records": summary["episodes_recorded"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--policy", default=POLICY)
    ap.add_argument("--wm", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    sim = peak_rss_mb(None, args.episodes, args.max_steps, args.threads, args.policy)
    wm = peak_rss_mb(WM, args.episodes, args.max_steps, args.threads, args.policy)
    print("| eval | peak RSS MB | at start (torch imported) MB | wall s |\n|---|---:|---:|---:|")
    for label, r in (("simulator only", sim), (f"simulator + {WM}", wm)):
        print(f"| {label} | {r['peak_rss_mb']:.0f} | {r['start_rss_mb']:.0f} | {r['wall_s']:.1f} |")
    print(f"ratio: {wm['peak_rss_mb'] / sim['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
