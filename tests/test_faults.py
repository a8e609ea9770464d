"""Faults mid-run: an exception or a NaN in one episode becomes an ``error`` record and the run
goes on; a worker process that dies is replaced and its episode retried once (and recorded as an
error if it dies again); a world-model rollout that goes non-finite ends that episode only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, outcomes, read_jsonl, requires_metaworld

from harness.run.runner import EpisodeWorker

pytestmark = requires_metaworld


class FaultyPolicy:
    """Scripted expert that raises in episode 3 and returns NaN in episode 6 (both at step 5)."""

    def __init__(self, env_info):
        from policies.scripted import ScriptedPolicy

        self.expert = ScriptedPolicy(env_info)

    def reset(self, instruction, *, seed=None, init_state=None):
        self.init_state, self.t = init_state, 0
        self.expert.reset(instruction, seed=seed, init_state=init_state)

    def act(self, observation):
        self.t += 1
        action = self.expert.act(observation)
        if self.t == 5 and self.init_state == 3:
            raise RuntimeError("injected policy failure")
        if self.t == 5 and self.init_state == 6:
            return np.full_like(action, np.nan)
        return action


@pytest.fixture
def faulty_policy():
    from policies import POLICIES

    POLICIES.register("faulty_test", FaultyPolicy)
    yield "faulty_test"
    POLICIES._entries.pop("faulty_test")


def test_an_exception_and_a_nan_in_two_of_ten_episodes_are_two_error_records(faulty_policy, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "run"
    rc = main(["eval", "--env", "metaworld/reach-v3", "-p", faulty_policy, "--episodes", "10", "--camera", "none",
               "--video", "none", "--no-progress", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    recs = {r["init_state"]: r for r in read_jsonl(out / "episodes.jsonl")}
    assert sorted(recs) == list(range(10))
    errors = {i for i, r in recs.items() if r["outcome"] == "error"}
    assert errors == {3, 6}
    assert "RuntimeError: injected policy failure" in recs[3]["error"] and "Traceback" in recs[3]["traceback"]
    assert recs[6]["error"].startswith("FloatingPointError: policy returned a non-finite action at step 4")
    assert all(recs[i]["outcome"] == "success" for i in set(range(10)) - errors)  # the expert solves reach
    overall = json.loads((out / "results.json").read_text())["results"][faulty_policy]["sim"]["overall"]
    # the two errors count as failures: 8 successes of 10 episodes, 2 of them errors
    assert (overall["episodes"], overall["valid"], overall["errors"], overall["successes"]) == (10, 8, 2, 8)
    assert overall["success_rate"] == 0.8


class BrokenSetupPolicy(FaultyPolicy):
    """Raises the same error on every episode until ``fixed`` (as a broken install does)."""

    fixed = False

    def act(self, observation):
        if not BrokenSetupPolicy.fixed:
            raise ImportError("libfoo.so: cannot open shared object file")
        return self.expert.act(observation)


def test_a_run_whose_first_episodes_all_raise_the_same_error_stops_with_it_and_resumes_once_fixed(tmp_path, capsys):
    from harness.cli import main
    from policies import POLICIES

    POLICIES.register("broken_setup_test", BrokenSetupPolicy)
    try:
        out = tmp_path / "run"
        args = ["eval", "--env", "metaworld/reach-v3", "-p", "broken_setup_test", "--episodes", "6", "--camera",
                "none", "--video", "none", "--no-progress", "--out", str(out)]
        BrokenSetupPolicy.fixed = False
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == ("error: the first 3 episodes all raised the same error, last broken_setup_test sim "
                           "metaworld/reach-v3#2: ImportError: libfoo.so: cannot open shared object file; none of "
                           "them was saved: fix the cause and re-run the same command")
        assert not (out / "episodes.jsonl").exists() or read_jsonl(out / "episodes.jsonl") == []
        BrokenSetupPolicy.fixed = True
        assert main(args) == 0
        recs = read_jsonl(out / "episodes.jsonl")
        assert sorted(r["init_state"] for r in recs) == list(range(6))
        assert all(r["outcome"] == "success" for r in recs)
    finally:
        POLICIES._entries.pop("broken_setup_test")


def test_first_errors_are_released_by_a_success_or_a_second_kind_of_error():
    from harness.run.evaluate import FirstErrors

    def rec(i, error=None):
        return {"policy": "p", "backend": "sim", "env_id": "e", "init_state": i,
                "outcome": "error" if error else "success", "error": error}

    gate = FirstErrors(expected=10)
    assert gate.admit(rec(0, "A")) == [] and gate.admit(rec(1, "A")) == []
    assert [r["init_state"] for r in gate.admit(rec(2))] == [0, 1, 2]  # a success: the run goes on
    assert gate.admit(rec(3, "A")) == [rec(3, "A")]
    gate = FirstErrors(expected=10)
    assert gate.admit(rec(0, "A")) == []
    assert [r["init_state"] for r in gate.admit(rec(1, "B"))] == [0, 1]  # two kinds of error: episodes, not setup
    with pytest.raises(Exception, match="the first 2 episodes all raised"):
        gate = FirstErrors(expected=2)
        gate.admit(rec(0, "A"))
        gate.admit(rec(1, "A"))
    assert FirstErrors(expected=1).admit(rec(0, "A")) == [rec(0, "A")]  # one episode: its error record


class DiesOnEpisode2(EpisodeWorker):
    """A worker whose process dies (as in a simulator segfault) whenever it runs init state 2."""

    def run_batch(self, items):
        if any(item.episode.init_state == 2 for item in items):
            os._exit(3)
        return super().run_batch(items)


def test_a_worker_that_dies_is_replaced_and_its_episode_recorded_after_the_retry(tmp_path):
    from harness.run.episodes import WorkItem, build_episodes
    from harness.run.executors import LocalExecutor
    from harness.run.runner import RunSettings

    episodes = build_episodes(["metaworld/reach-v3"], 5, 0, {"metaworld/reach-v3": 150})
    items = [WorkItem("scripted", ("sim",), ep) for ep in episodes]
    settings = RunSettings(cameras=(), image_size=64)
    start = time.perf_counter()
    recs = {r["init_state"]: r for r in LocalExecutor(settings, workers=2, worker=DiesOnEpisode2).map(items)}
    assert time.perf_counter() - start < 120
    assert sorted(recs) == [0, 1, 2, 3, 4]
    assert recs[2]["outcome"] == "error"
    assert recs[2]["error"].startswith("WorkerDied: worker process worker-")
    assert recs[2]["error"].endswith("died (exit code 3) on each of 2 attempts running this episode")
    assert all(recs[i]["outcome"] == "success" for i in (0, 1, 3, 4))
    # the replacement processes ran the rest: 2 original + 2 replacements
    assert {r["worker"] for i, r in recs.items() if i != 2} <= {"worker-1", "worker-2", "worker-3", "worker-4"}


def _grandchildren(pid: int) -> list[int]:
    """Processes whose parent's parent is ``pid`` (forkserver workers: main -> forkserver -> worker)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    children = {p for p, pp in parents.items() if pp == pid}
    return sorted(p for p, pp in parents.items() if pp in children)


def test_kill_9_of_a_worker_mid_run_loses_nothing(tmp_path):
    args = [sys.executable, "-m", "harness", "eval", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.3",
            "--episodes", "12", "--video", "none", "--no-progress", "--camera", "none", "--max-steps", "150",
            "--workers", "2"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log = out / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    workers = _grandchildren(proc.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "died (exit code -9); retrying" in err
    recs = read_jsonl(log)
    assert len(recs) == 12 and len({r["init_state"] for r in recs}) == 12
    assert not [r for r in recs if r["outcome"] == "error"]
    clean = tmp_path / "clean"
    subprocess.run([*args, "--workers", "1", "--out", str(clean)], cwd=ROOT, check=True, capture_output=True)
    assert outcomes(recs) == outcomes(read_jsonl(clean / "episodes.jsonl"))


# --- world-model rollouts: batched, and faults inside them ---------------------------------------

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

BC = str(ROOT / "checkpoints/policies/bc_metaworld/step_000250")


@pytest.fixture(scope="module")
def embedded():
    from harness.judges import make_judge
    from world_models import load_world_model

    wm = load_world_model("minivae_dit_tiny")
    judge = make_judge(f"latent_classifier:path={ROOT / 'checkpoints/minivae_dit_tiny/judge'}", encoder=wm.encoder)
    return wm, judge


def _tasks(n: int, specs: list[str], steps: int = 12):
    """World-model tasks from synthetic simulator trajectories (random frames and actions)."""
    from harness.run.episodes import build_episodes
    from harness.run.matched import WorldModelTask

    rng = np.random.default_rng(0)
    eps = build_episodes(["metaworld/reach-v3"], n, 0, {"metaworld/reach-v3": steps})
    tasks = []
    for i, ep in enumerate(eps):
        obs = [{"pixels": {"corner2": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)}} for _ in range(steps + 1)]
        acts = [rng.uniform(-1, 1, 4).astype(np.float32) for _ in range(steps)]
        spec = specs[i % len(specs)]
        tasks.append(WorldModelTask(ep, spec, obs, acts, closed_loop=spec != "scripted"))
    return tasks


def _policy_cache():
    from policies import EnvInfo, make_policy

    cache = {}

    def policy_for(spec, env_id, slot):
        if (spec, env_id, slot) not in cache:
            cache[spec, env_id, slot] = make_policy(spec, EnvInfo.from_env_id(env_id, ("corner2",), 64))
        return cache[spec, env_id, slot]

    return policy_for


def test_batched_world_model_episodes_equal_one_at_a_time(embedded):
    from harness.run.matched import run_world_model_episodes

    wm, judge = embedded
    specs = ["random", f"bc:path={BC}", "scripted"]  # per-episode instances, one batch instance, replay
    tasks = _tasks(6, specs)
    one = [run_world_model_episodes(wm, [t], _policy_cache(), camera="corner2", judge=judge, stop_on_success=False)[0]
           for t in tasks]
    calls = []
    real = wm.predict
    wm.predict = lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k)
    try:
        batch = run_world_model_episodes(wm, tasks, _policy_cache(), camera="corner2", judge=judge,
                                         stop_on_success=False)
    finally:
        del wm.predict
    assert calls == [6] * 3  # 12 control steps at frameskip 4: one call per prediction for all six
    for a, b in zip(one, batch):
        assert (a.success, a.length, a.mode) == (b.success, b.length, b.mode)
        assert b.judge_score == pytest.approx(a.judge_score, abs=1e-5)
        np.testing.assert_allclose(np.stack(b.latents), np.stack(a.latents), atol=1e-4)
        np.testing.assert_allclose(b.latent_divergence, a.latent_divergence, atol=1e-5)
    assert [b.mode for b in batch] == ["closed_loop", "closed_loop", "open_loop_replay"] * 2


def test_bfloat16_world_model_episodes_run_both_networks_in_bf16_close_to_float32(embedded):
    import torch

    from harness.run.matched import run_world_model_episodes

    wm, judge = embedded
    tasks = _tasks(2, ["random", "scripted"])
    ref = run_world_model_episodes(wm, tasks, _policy_cache(), camera="corner2", judge=judge, stop_on_success=False)
    seen = {"predict": [], "decode": []}
    real_predict, real_decode = wm.predict, wm.decode
    wm.predict = lambda *a, **k: seen["predict"].append(k.get("dtype")) or real_predict(*a, **k)
    wm.decode = lambda *a, **k: seen["decode"].append(k.get("dtype")) or real_decode(*a, **k)
    try:
        low = run_world_model_episodes(wm, tasks, _policy_cache(), camera="corner2", judge=judge,
                                       stop_on_success=False, precision="bfloat16")
    finally:
        del wm.predict, wm.decode
    assert seen["predict"] == [torch.bfloat16] * 3 and set(seen["decode"]) == {torch.bfloat16}
    for a, b in zip(ref, low):
        assert (a.length, a.mode) == (b.length, b.mode)
        # the random episode acts on its own seed, so its actions match; the latents differ by bf16 rounding
        assert np.abs(np.stack(b.latents) - np.stack(a.latents)).max() < 0.1
        assert not np.array_equal(np.stack(b.latents), np.stack(a.latents))


def test_a_failing_episode_leaves_the_rest_of_its_batch_alone(embedded):
    from harness.run.matched import run_world_model_episodes

    wm, judge = embedded
    tasks = _tasks(4, ["random", "scripted"])
    tasks[1].sim_actions[5] = np.full(4, np.nan, np.float32)  # a NaN action in a replayed episode
    clean = run_world_model_episodes(wm, _tasks(4, ["random", "scripted"]), _policy_cache(), camera="corner2",
                                     judge=judge, stop_on_success=False)
    real = wm.predict

    def nan_in_row_0(latents, actions, **kw):  # the model blows up for the first episode only
        z = real(latents, actions, **kw)
        if latents.shape[0] == 3:  # after episode 1 left the batch
            z[0] = float("nan")
        return z

    wm.predict = nan_in_row_0
    try:
        out = run_world_model_episodes(wm, tasks, _policy_cache(), camera="corner2", judge=judge, stop_on_success=False)
    finally:
        del wm.predict
    assert isinstance(out[1], FloatingPointError) and "non-finite action at step 5" in str(out[1])
    assert isinstance(out[0], FloatingPointError) and "non-finite latent at step 8" in str(out[0])
    for i in (2, 3):
        assert out[i].length == 12
        np.testing.assert_allclose(np.stack(out[i].latents), np.stack(clean[i].latents), atol=1e-4)


@pytest.mark.slow
def test_wm_batch_gives_the_same_outcomes_as_one_at_a_time_end_to_end(tmp_path):
    from conftest import run_cli

    base = ["eval", "--env", "metaworld/reach-v3", "-p", "random", "-p", f"bc:path={BC}", "-p", "scripted",
            "--episodes", "3", "--wm", "minivae_dit_tiny", "--camera", "corner2", "--image-size", "64",
            "--max-steps", "24", "--video", "none", "--no-progress"]
    runs = {}
    for b in ("1", "4"):
        proc = run_cli(*base, "--wm-batch", b, "--out", str(tmp_path / b))
        assert proc.returncode == 0, proc.stderr
        runs[b] = {k: {f: v for f, v in r.items() if f not in ("judge_score", "latent_divergence")}
                   for k, r in outcomes(read_jsonl(tmp_path / b / "episodes.jsonl")).items()}
    assert len(runs["1"]) == 18 and runs["1"] == runs["4"]
