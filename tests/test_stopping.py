"""Stopping a run, and nothing lost that finished, through the CLI with a slow policy
(``tests/slow_harness.py``): each record reaches episodes.jsonl the moment its episode ends, also
inside a chunk of several; SIGINT to the process group (Ctrl-C) and SIGTERM to the driver stop a
two-worker run within 10 s in the middle of long episodes, leaving no process of the run, and the
resume completes it with every episode once; the workers of a driver killed with ``kill -9`` exit
by themselves within 10 s; a resume with nothing left to do says so and keeps the run's
measurements. The same for runs on Ray actors (slow: each test starts a Ray cluster)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, read_jsonl, requires_metaworld

pytestmark = requires_metaworld

SLOW_HARNESS = str(ROOT / "tests" / "slow_harness.py")
STOP_S = 10.0  # the longest we allow from the signal to the last process of the run gone
# six episodes: init states 0 and 1 fast, 2..5 each 60 steps x 0.5 s = 30 s when slowed
EVAL = ["eval", "--env", "metaworld/reach-v3", "-p", "slow:slow_from=2", "--episodes", "6", "--max-steps", "60",
        "--no-stop-on-success", "--camera", "none", "--video", "none", "--no-progress"]
requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason='Ray not installed: pip install -e ".[distributed]"')


def start(args: list[str], out: Path, delay: float) -> subprocess.Popen:
    """``harness`` (with the slow policy) in a session of its own, as a terminal's foreground job
    runs it: SIGINT at its default (a shell that runs this suite in the background starts it
    ignored, and children inherit that)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SLOW_POLICY_DELAY": str(delay)}
    with open(out.parent / f"{out.name}.stderr", "a") as err:
        return subprocess.Popen([sys.executable, SLOW_HARNESS, *args, "--out", str(out)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stderr_of(out: Path) -> str:
    return (out.parent / f"{out.name}.stderr").read_text()


def run(args: list[str], out: Path, delay: float = 0.0, timeout: float = 300) -> subprocess.Popen:
    proc = start(args, out, delay)
    proc.wait(timeout=timeout)
    return proc


def wait_for_records(log: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not (log.exists() and len(log.read_text().splitlines()) >= n):
        assert proc.poll() is None, f"the run ended before {n} records were written"
        assert time.time() < deadline, f"fewer than {n} records after {timeout} s"
        time.sleep(0.05)


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            out[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return out


def of_run(driver: int) -> set[int]:
    """The driver's descendants (forkserver, worker processes; Ray's processes) and the members of
    its session, but not the driver."""
    table = processes()
    found = {p for p, (_, sid, _) in table.items() if sid == driver}
    front = {driver}
    while front:
        front = {p for p, (ppid, _, _) in table.items() if ppid in front} - found
        found |= front
    return found - {driver}


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie has ended: it only waits to be reaped)."""
    table = processes()
    return {p for p in pids if p in table and table[p][2] != "Z"}


def wait_gone(pids: set[int], deadline: float) -> set[int]:
    while alive(pids) and time.time() < deadline:
        time.sleep(0.1)
    return alive(pids)


def kill_all(pids: set[int]) -> None:
    for p in alive(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def keys(records: list[dict]) -> list[tuple]:
    return sorted((r["policy"], r["backend"], r["env_id"], r["init_state"]) for r in records)


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def stop_mid_episode(tmp_path: Path, extra: list[str], signum: int, to_group: bool) -> Path:
    """Start a two-worker run, signal it while both workers are in 30 s episodes, and check that
    within STOP_S it has exited with 128 + signum, its summary saved, and that none of its
    processes is left. Returns the run folder."""
    out = tmp_path / "run"
    proc = start([*EVAL, *extra], out, delay=0.5)
    log = out / "episodes.jsonl"
    try:
        wait_for_records(log, 2, proc)  # init states 0 and 1 done: the workers are in 2 and 3
        time.sleep(1.0)
        run_pids = of_run(proc.pid)
        assert run_pids, "no processes of the run found"
        signalled = time.time()
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        proc.wait(timeout=60)
        exited = time.time() - signalled
        left = wait_gone(run_pids, signalled + STOP_S)
        assert exited < STOP_S, f"the run took {exited:.1f} s to stop"
        assert not left, f"processes of the run still running {time.time() - signalled:.1f} s after the signal"
    finally:
        proc.kill()
        kill_all(of_run(proc.pid))
    assert proc.returncode == 128 + signum, stderr_of(out)
    assert "Traceback" not in stderr_of(out)
    recs = read_jsonl(log)
    assert [r["init_state"] for r in sorted(recs, key=lambda r: r["init_state"])] == [0, 1]  # 2..5 were in flight
    summary = json.loads((out / "results.json").read_text())
    assert summary["interrupted"] and not summary["complete"] and summary["episodes_recorded"] == 2
    return out


def resume_completes(args: list[str], out: Path) -> None:
    """The same command again (at full speed) adds exactly the missing episodes."""
    before = (out / "episodes.jsonl").read_text().splitlines()
    proc = run(args, out)
    assert proc.returncode == 0, stderr_of(out)
    recs = read_jsonl(out / "episodes.jsonl")
    assert (out / "episodes.jsonl").read_text().splitlines()[:len(before)] == before
    assert keys(recs) == [("slow:slow_from=2", "sim", "metaworld/reach-v3", i) for i in range(6)]  # each once
    assert json.loads((out / "results.json").read_text())["complete"]


RAY = pytest.param(["--executor", "ray", "--workers", "2"], id="ray",
                   marks=[pytest.mark.slow, requires_ray])  # ~15-30 s: starts and stops a Ray cluster


@pytest.mark.parametrize("executor", [["--workers", "2"], RAY], ids=["local", "ray"])
@pytest.mark.parametrize("signum,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["sigint-to-the-process-group", "sigterm-to-the-driver"])
def test_a_signal_stops_a_two_worker_run_in_the_middle_of_long_episodes_and_the_resume_completes_it(
        tmp_path, executor, signum, to_group):
    out = stop_mid_episode(tmp_path, executor, signum, to_group)
    resume_completes([*EVAL, *executor], out)


def test_the_workers_of_a_driver_killed_with_kill_9_exit_by_themselves(tmp_path):
    out = tmp_path / "run"
    proc = start([*EVAL, "--workers", "2"], out, delay=0.5)
    try:
        wait_for_records(out / "episodes.jsonl", 2, proc)
        time.sleep(1.0)  # both workers in 30 s episodes
        run_pids = of_run(proc.pid)
        assert len(run_pids) >= 3  # the forkserver and two workers
        killed = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        left = wait_gone(run_pids, killed + STOP_S)
        assert not left, f"{len(left)} process(es) of the run outlived the driver by {STOP_S:g} s"
    finally:
        proc.kill()
        kill_all(of_run(proc.pid))
    assert len(read_jsonl(out / "episodes.jsonl")) == 2


# --- a chunk of several episodes (--wm-batch) --------------------------------------------------

WM_EVAL = ["eval", "--env", "metaworld/reach-v3", "-p", "slow:slow_from=1", "--episodes", "3", "--max-steps", "20",
           "--no-stop-on-success", "--wm", "minivae_dit_tiny", "--wm-batch", "3", "--camera", "corner2",
           "--image-size", "64", "--video", "none", "--no-progress", "--workers", "2"]


@pytest.fixture(scope="module")
def chunked_run(tmp_path_factory):
    """One chunk of three matched episodes on one worker process, simulator episodes 1 and 2
    slowed to 20 x 0.2 s: (run folder, the time each record appeared after the first one)."""
    if not (ROOT / "checkpoints" / "minivae_dit_tiny" / "judge").exists():
        pytest.skip("the embedded world model checkpoints/minivae_dit_tiny (with its judge) is absent")
    out = tmp_path_factory.mktemp("chunk") / "run"
    proc = start(WM_EVAL, out, delay=0.2)
    log = out / "episodes.jsonl"
    seen: list[float] = []
    try:
        while proc.poll() is None:
            n = len(log.read_text().splitlines()) if log.exists() else 0
            seen += [time.time()] * (n - len(seen))
            time.sleep(0.02)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr_of(out)
    return out, [t - seen[0] for t in seen]


def test_a_chunk_of_several_episodes_sends_each_record_the_moment_its_episode_ends(chunked_run):
    out, appeared = chunked_run
    recs = read_jsonl(out / "episodes.jsonl")
    assert len(appeared) == len(recs) == 6
    assert [(r["backend"], r["init_state"]) for r in recs[:3]] == [("sim", 0), ("sim", 1), ("sim", 2)]
    assert {r["worker"] for r in recs} == {"worker-1"}  # one chunk, one worker process
    # the simulator record of init state 0 was saved while 1 and 2 (4 s each) still ran, and
    # those of the world-model batch after them
    assert appeared[1] > 3.0 and appeared[2] - appeared[1] > 3.0
    assert all(r["backend"] == "wm:minivae_dit_tiny" for r in recs[3:])


def test_a_resume_with_nothing_left_to_do_says_so_and_keeps_the_run_measurements(chunked_run):
    out, _ = chunked_run
    before = json.loads((out / "results.json").read_text())
    log = (out / "episodes.jsonl").read_bytes()
    proc = run(WM_EVAL, out)
    assert proc.returncode == 0, stderr_of(out)
    assert f"nothing left to do: all 6 episodes are recorded in {out}" in stderr_of(out).splitlines()
    after = json.loads((out / "results.json").read_text())
    assert before["wall_time_s"] > 1.0 and after["wall_time_s"] == before["wall_time_s"]
    for field in ("world_model_inference", "versions", "git", "results", "comparison"):
        assert after.get(field) == before.get(field), field
    inference = [r["wm_inference"] for r in read_jsonl(out / "episodes.jsonl") if r["backend"] != "sim"]
    assert len(inference) == 3 and all(x["path"].startswith("torch modules") for x in inference)
    assert sum(x["episodes"] for x in after["world_model_inference"]) == 3  # where each worker measured
    assert (out / "episodes.jsonl").read_bytes() == log


@pytest.mark.slow  # ~13 s: starts a Ray cluster
@requires_ray
def test_the_ray_actors_of_a_driver_killed_with_kill_9_exit_by_themselves(tmp_path):
    """The actors, that is: Ray's own agents of a local cluster outlive its driver by up to a minute
    (idle, in a call to the dead cluster with Ray's fixed 60 s timeout)."""
    out = tmp_path / "run"
    proc = start([*EVAL, "--executor", "ray", "--workers", "2"], out, delay=0.5)
    try:
        wait_for_records(out / "episodes.jsonl", 2, proc)
        time.sleep(1.0)
        actors = {p for p in of_run(proc.pid) if cmdline(p).startswith(b"ray::SlowActor")}
        assert len(actors) == 2
        killed = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert not wait_gone(actors, killed + STOP_S)
    finally:
        proc.kill()
        kill_all(of_run(proc.pid))
