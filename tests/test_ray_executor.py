"""The Ray executor against a real local Ray cluster (no mocks): same outcomes as the local
executor, resume, actor death and retry, Ctrl-C, and one-line errors for a bad address."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import HAS_METAWORLD, ROOT, outcomes, read_jsonl, run_cli

HAS_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray not installed: pip install -e ".[distributed]"')
requires_metaworld = pytest.mark.skipif(not HAS_METAWORLD, reason='Meta-World not installed: pip install -e ".[metaworld]"')

EVAL = ["eval", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.3", "--episodes", "6", "--video", "none",
        "--image-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def cluster():
    """One 2-CPU local cluster for this module: in-process executors reuse it, CLI runs connect
    to it by address (as to a remote cluster)."""
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plan_items(tmp_path: Path, episodes: int, **overrides):
    """The work items and run settings of a small Meta-World eval, built as run_eval builds them."""
    from harness.run.config import EvalConfig
    from harness.run.evaluate import plan_eval, work_items
    from harness.run.runner import RunSettings

    cfg = EvalConfig(env="metaworld/reach-v3", policies=("noisy:scale=0.3",), episodes=episodes, video="none",
                     out=str(tmp_path / "run"), **overrides)
    plan = plan_eval(cfg)
    settings = RunSettings(cameras=cfg.cameras, image_size=cfg.image_size, stop_on_success=cfg.stop_on_success)
    return work_items(plan, set()), settings


def local_records(items, settings) -> list[dict]:
    from harness.run.executors import LocalExecutor

    return list(LocalExecutor(settings, workers=1).map(items))


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    from harness.errors import HarnessError
    from harness.run.executors import EXECUTORS
    from harness.run.runner import RunSettings

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like
    with pytest.raises(HarnessError) as err:
        EXECUTORS.build("ray", settings=RunSettings(cameras=None, image_size=None), workers=2)
    assert str(err.value) == "Ray is not installed (no module 'ray'): pip install -e \".[distributed]\""


@requires_ray
def test_unreachable_or_malformed_address_is_one_line_and_fast(tmp_path):
    from harness.errors import HarnessError
    from harness.run.ray_executor import RayExecutor, host_port
    from harness.run.runner import RunSettings

    assert host_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_port("ray://head:10001") == ("head", 10001)
    assert host_port("auto") is None
    settings = RunSettings(cameras=None, image_size=None)
    port = closed_port()
    start = time.perf_counter()
    with pytest.raises(HarnessError, match=rf"cannot reach a Ray cluster at 127.0.0.1:{port} .*ray start --head"):
        RayExecutor(settings, workers=2, address=f"127.0.0.1:{port}")
    assert time.perf_counter() - start < 5
    with pytest.raises(HarnessError, match="is not auto, local, HOST:PORT"):
        RayExecutor(settings, address="head-node")
    if HAS_METAWORLD:  # and through the CLI: one line, exit 2, no traceback
        proc = run_cli(*EVAL, "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(tmp_path / "r"))
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot reach a Ray cluster at 127.0.0.1:{port}") and "Traceback" not in proc.stderr


@requires_ray
@requires_metaworld
def test_two_ray_workers_match_one_local_worker_and_resume(tmp_path, cluster):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli(*EVAL, "--workers", "1", "--out", str(one))
    # no --ray-address: the executor starts (and stops) its own 2-CPU local cluster
    p2 = run_cli(*EVAL, "--executor", "ray", "--workers", "2", "--out", str(two))
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    ref, recs = read_jsonl(one / "episodes.jsonl"), read_jsonl(two / "episodes.jsonl")
    assert len(recs) == 6 and outcomes(recs) == outcomes(ref)
    assert {r["worker"] for r in recs} == {"ray-actor-1", "ray-actor-2"}  # both actors ran episodes
    # resume: drop the last three records, as if the run had been killed; the rerun (on the
    # shared cluster, by address) runs only those three
    log = two / "episodes.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3]))
    p3 = run_cli(*EVAL, "--executor", "ray", "--workers", "2", "--ray-address", cluster, "--out", str(two))
    assert p3.returncode == 0, p3.stderr
    resumed = read_jsonl(log)
    assert resumed[:3] == recs[:3] and len(resumed) == 6
    assert outcomes(resumed) == outcomes(ref)  # no duplicates: 6 distinct keys, same outcomes
    assert json.loads((two / "results.json").read_text())["complete"]
    # a finished run does nothing (and starts no cluster)
    p4 = run_cli(*EVAL, "--executor", "ray", "--workers", "2", "--out", str(two))
    assert p4.returncode == 0 and read_jsonl(log) == resumed


@requires_ray
@requires_metaworld
def test_a_dead_actor_is_replaced_and_its_chunk_retried_once(tmp_path, cluster):
    from harness.run.ray_executor import EpisodeActor, RayExecutor

    items, settings = plan_items(tmp_path, 5, cameras=("none",))
    markers = str(tmp_path / "markers")
    os.makedirs(markers)

    class CrashingActor(EpisodeActor):
        """Its process exits while running init state 1 the first time (a marker file, shared by
        all actor processes, records that it did) and on every attempt at init state 2."""

        def run_batch(self, chunk):
            for item in chunk:
                state = item.episode.init_state
                marker = os.path.join(markers, f"died-{state}-{time.time_ns()}")
                died_before = any(name.startswith(f"died-{state}-") for name in os.listdir(markers))
                if state == 2 or (state == 1 and not died_before):
                    open(marker, "w").close()
                    os._exit(1)
            return super().run_batch(chunk)

    class CrashingExecutor(RayExecutor):
        actor_class = CrashingActor

    executor = CrashingExecutor(settings, workers=2)
    recs = list(executor.map(items))
    expected = outcomes(local_records(items, settings))
    got = {r["init_state"]: r for r in recs}
    assert len(recs) == 5 and sorted(got) == [0, 1, 2, 3, 4]
    for state in (0, 1, 3, 4):  # retried init state 1 gives the same record as a clean run
        assert outcomes([got[state]]) == {k: v for k, v in expected.items() if k[3] == state}
    assert got[1]["worker"] not in ("ray-actor-1", "ray-actor-2")  # ran on a replacement
    assert got[2]["outcome"] == "error" and got[2]["error"].startswith("WorkerDied: Ray actor ray-actor-")
    assert got[2]["error"].endswith("on each of 2 attempts running this episode")
    assert len(os.listdir(markers)) == 3  # 1 died once, 2 twice: exactly three deaths, no more attempts
    assert executor._spawned == 5  # two actors plus one replacement per death


@requires_ray
def test_an_actor_that_cannot_start_stops_the_run_with_one_line(tmp_path, cluster):
    from harness.errors import HarnessError
    from harness.run.episodes import Episode, WorkItem
    from harness.run.ray_executor import EpisodeActor, RayExecutor
    from harness.run.runner import RunSettings

    class MissingProject(EpisodeActor):  # what a node without the project installed looks like
        def __init__(self, settings, name):
            raise ModuleNotFoundError("No module named 'harness'")

    class Executor(RayExecutor):
        actor_class = MissingProject

    items = [WorkItem("random", ("sim",), Episode("metaworld/reach-v3", "reach-v3", "reach", i, i, 10)) for i in range(3)]
    with pytest.raises(HarnessError, match=r"a Ray actor could not start \(ModuleNotFoundError: No module named 'harness'\)"):
        list(Executor(RunSettings(cameras=None, image_size=None), workers=2).map(items))


@pytest.mark.slow  # ~20 s; actor death and retry are also covered by the test above
@requires_ray
@requires_metaworld
def test_sigkill_of_running_actors_loses_nothing(tmp_path, cluster):
    from harness.run.ray_executor import RayExecutor

    # 500 steps each (~0.4 s without a camera): long enough to be killed mid-episode
    items, settings = plan_items(tmp_path, 4, cameras=("none",), stop_on_success=False)
    executor = RayExecutor(settings, workers=2)
    stream = executor.map(items)
    recs = [next(stream)]
    pids = executor.actor_pids()
    assert set(pids) == {"ray-actor-1", "ray-actor-2"}
    for pid in pids.values():  # both are busy: the first with its second chunk, the other with its first
        os.kill(pid, signal.SIGKILL)
    recs += list(stream)
    assert outcomes(recs) == outcomes(local_records(items, settings))
    assert len(recs) == 4 and all(r["outcome"] != "error" for r in recs)
    assert {r["worker"] for r in recs} - {"ray-actor-1", "ray-actor-2"}  # replacements finished the run


@pytest.mark.slow
@requires_ray
@requires_metaworld
def test_world_model_episodes_batched_per_actor_match_the_local_run(tmp_path, cluster):
    if not (ROOT / "checkpoints" / "minivae_dit_tiny").exists():
        pytest.skip("the embedded world model checkpoint checkpoints/minivae_dit_tiny is absent")
    args = ["eval", "--env", "metaworld/reach-v3", "--wm", "minivae_dit_tiny", "--camera", "corner2",
            "--image-size", "64", "--max-steps", "20", "-p", "random", "--episodes", "4", "--video", "none",
            "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli(*args, "--out", str(one))
    p2 = run_cli(*args, "--executor", "ray", "--workers", "2", "--wm-batch", "2", "--ray-address", cluster,
                 "--out", str(two))
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    ref, recs = read_jsonl(one / "episodes.jsonl"), read_jsonl(two / "episodes.jsonl")
    assert len(recs) == 8 and {r["backend"] for r in recs} == {"sim", "wm:minivae_dit_tiny"}
    assert outcomes(recs) == outcomes(ref)
    assert {r["worker"] for r in recs} == {"ray-actor-1", "ray-actor-2"}  # one chunk of 2 episodes each


@pytest.mark.slow
@requires_ray
@requires_metaworld
def test_a_cluster_started_with_ray_start_is_used_by_address(tmp_path):
    """What docs/distributed.md tells users: `ray start --head` on the head node, then
    --ray-address HOST:PORT (token authentication on, as Ray sets it up by default)."""
    port = closed_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.urandom(16).hex()}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--block"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and head.poll() is None, "ray start --head did not come up"
                time.sleep(0.5)
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "harness", *EVAL, "--episodes", "4", "--executor", "ray",
                               "--workers", "2", "--ray-address", f"127.0.0.1:{port}", "--out", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        recs = read_jsonl(out / "episodes.jsonl")
        assert sorted(r["init_state"] for r in recs) == [0, 1, 2, 3]
        assert {r["worker"] for r in recs} == {"ray-actor-1", "ray-actor-2"}
    finally:
        head.terminate()  # `ray start --block` stops the processes it started on SIGTERM
        head.wait(timeout=60)
