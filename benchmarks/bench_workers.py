"""`harness eval --workers 2` vs `--workers 1` on an image-rendering run: throughput ratio and a
check that both give the same per-episode outcomes.

    python benchmarks/bench_workers.py [--episodes 6] [--max-steps 150]

Each run is the real command (``python -m harness eval ...``) in a child process; episodes/s is
taken from the run's own wall time in ``results.json`` (the executor's time, worker start-up
included, interpreter start-up not) and from the whole command. ``benchmarks/run_all.py``
imports ``workers_throughput`` from here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENVS = "metaworld/reach-v3,metaworld/drawer-open-v3"
FIELDS = ("wall_s", "rollout_s", "steps_per_s", "video", "worker")


def run(out: Path, workers: int, episodes: int, max_steps: int = 150, image_size: int = 128) -> dict[str, float]:
    """One ``harness eval`` with ``workers`` workers: command and in-run wall seconds, episodes."""
    cmd = [sys.executable, "-m", "harness", "eval", "--env", ENVS, "-p", "noisy:scale=0.5",
           "--episodes", str(episodes), "--image-size", str(image_size), "--video", "none",
           "--no-stop-on-success", "--max-steps", str(max_steps), "--no-progress", "--workers", str(workers),
           "--out", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    command_s = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    summary = json.loads((out / "results.json").read_text())
    return {"command_s": command_s, "run_s": summary["wall_time_s"], "episodes": summary["episodes_recorded"]}


def outcomes(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "episodes.jsonl").read_text().splitlines()]
    return {(r["env_id"], r["init_state"]): {k: v for k, v in r.items() if k not in FIELDS} for r in recs}


def workers_throughput(episodes: int = 6, max_steps: int = 150, image_size: int = 128,
                       rounds: int = 1) -> dict[str, float]:
    """Episodes/s of ``--workers 1`` and ``--workers 2`` on the same small eval (2 Meta-World
    tasks x ``episodes``), their ratio, and whether the per-episode outcomes are identical.
    With ``rounds`` > 1 the two alternate and the fastest run of each is kept."""
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(rounds):
            one, two = Path(tmp) / f"w1-{i}", Path(tmp) / f"w2-{i}"
            runs[1].append(run(one, 1, episodes, max_steps, image_size))
            runs[2].append(run(two, 2, episodes, max_steps, image_size))
            same = same and outcomes(one) == outcomes(two)
    r1, r2 = (min(runs[w], key=lambda r: r["run_s"]) for w in (1, 2))
    n = r1["episodes"]
    return {"episodes": n, "w1_run_s": r1["run_s"], "w2_run_s": r2["run_s"], "w1_command_s": r1["command_s"],
            "w2_command_s": r2["command_s"], "w1_eps": n / r1["run_s"], "w2_eps": n / r2["run_s"],
            "speedup": r1["run_s"] / r2["run_s"], "identical_outcomes": same}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=1, help="alternate 1 and 2 workers this often, keep the best")
    args = ap.parse_args()
    r = workers_throughput(args.episodes, args.max_steps, rounds=args.rounds)
    print("| workers | run s | command s | episodes/s | speedup |\n|---:|---:|---:|---:|---:|")
    print(f"| 1 | {r['w1_run_s']:.1f} | {r['w1_command_s']:.1f} | {r['w1_eps']:.2f} | 1.00x |")
    print(f"| 2 | {r['w2_run_s']:.1f} | {r['w2_command_s']:.1f} | {r['w2_eps']:.2f} | {r['speedup']:.2f}x |")
    print(f"identical per-episode outcomes: {r['identical_outcomes']}")


if __name__ == "__main__":
    main()
