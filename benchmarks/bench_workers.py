"""`harness eval --workers 2` vs `--workers 1` on an image-rendering run: wall time ratio and a
check that both give the same per-episode outcomes.

    python benchmarks/bench_workers.py [--episodes 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIELDS = ("wall_s", "rollout_s", "steps_per_s", "video", "worker")


def run(out: Path, workers: int, episodes: int) -> float:
    cmd = [sys.executable, "-m", "harness", "eval", "--env", "metaworld/reach-v3,metaworld/drawer-open-v3",
           "-p", "noisy:scale=0.5", "--episodes", str(episodes), "--image-size", "128", "--video", "none",
           "--no-stop-on-success", "--max-steps", "150", "--no-progress", "--workers", str(workers), "--out", str(out)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def outcomes(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    return {(r["env_id"], r["init_state"]): {k: v for k, v in r.items() if k not in FIELDS} for r in recs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "w1", Path(tmp) / "w2"
        t1 = run(one, 1, args.episodes)
        t2 = run(two, 2, args.episodes)
        same = outcomes(one) == outcomes(two)
    n = 2 * args.episodes
    print("| workers | wall s | episodes/s | speedup |\n|---:|---:|---:|---:|")
    print(f"| 1 | {t1:.1f} | {n / t1:.2f} | 1.00x |")
    print(f"| 2 | {t2:.1f} | {n / t2:.2f} | {t1 / t2:.2f}x |")
    print(f"identical per-episode outcomes: {same}")


if __name__ == "__main__":
    main()
