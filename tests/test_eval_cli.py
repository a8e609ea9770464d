"""The harness's basic promises through the real CLI: a run folder, resume, one-line errors,
error records, kill -9 and Ctrl-C."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, outcomes, read_jsonl, requires_metaworld, run_cli

pytestmark = requires_metaworld


def test_scripted_reach_writes_results_records_and_videos(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("eval", "--env", "metaworld/reach-v3", "--policy", "scripted", "--episodes", "5",
                   "--out", str(out), "--video", "first:2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    block = res["results"]["scripted"]["sim"]
    assert block["overall"]["success_rate"] >= 0.9
    assert block["tasks"]["metaworld/reach-v3"]["valid"] == 5
    lo, hi = block["overall"]["ci95"]
    assert 0 < lo <= block["overall"]["success_rate"] <= hi <= 1
    assert res["complete"] and res["env_options"]["metaworld/reach-v3"]["max_episode_steps"] == 500
    assert res["versions"]["metaworld"] and res["versions"]["mujoco"] and "commit" in res["git"]
    assert res["seeds"]["base_seed"] == 0
    recs = read_jsonl(out / "episodes.jsonl")
    assert sorted(r["init_state"] for r in recs) == [0, 1, 2, 3, 4]
    assert len({r["seed"] for r in recs}) == 5
    videos = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))
    assert videos == [r["video"] for r in sorted(recs, key=lambda r: r["init_state"]) if r["video"]]
    assert len(videos) == 2
    import imageio.v2 as imageio

    frames = [f for f in imageio.get_reader(out / videos[0])]
    rec0 = next(r for r in recs if r["init_state"] == 0)
    assert len(frames) == rec0["length"] + 1  # the reset frame plus one per step
    assert "| scripted | sim | metaworld/reach-v3 |" in proc.stdout
    report = run_cli("report", str(out))
    assert report.returncode == 0 and "| **scripted** | sim | **all** |" in report.stdout


def test_noise_grades_policies_and_random_fails_pick_place(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("eval", "--env", "metaworld/pick-place-v3", "-p", "scripted", "-p", "noisy:scale=1.0",
                   "-p", "random", "--episodes", "8", "--out", str(out), "--video", "none",
                   "--camera", "none", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())["results"]
    rate = {p: res[p]["sim"]["overall"]["success_rate"] for p in res}
    assert rate["scripted"] >= 0.9
    assert rate["noisy:scale=1.0"] <= rate["scripted"] - 0.3
    assert rate["random"] <= 0.125


def _identical_runs(tmp_path, extra):
    args = ["eval", "--env", "metaworld/reach-v3,metaworld/drawer-open-v3", "-p", "scripted", "-p",
            "noisy:scale=0.5", "--episodes", "3", "--video", "none", "--no-progress", "--image-size", "64"]
    a, b = tmp_path / "a", tmp_path / "b"
    pa = run_cli(*args, "--out", str(a))
    pb = run_cli(*args, "--out", str(b), *extra)
    assert pa.returncode == 0 and pb.returncode == 0, pa.stderr + pb.stderr
    return outcomes(read_jsonl(a / "episodes.jsonl")), outcomes(read_jsonl(b / "episodes.jsonl")), read_jsonl(b / "episodes.jsonl")


def test_two_workers_give_the_same_outcomes(tmp_path):
    one, two, recs = _identical_runs(tmp_path, ["--workers", "2"])
    assert len(one) == 12 and one == two
    assert {r["worker"] for r in recs} != {"main"}  # really ran in worker processes


def test_kill_9_then_resume_gives_exactly_the_uninterrupted_records(tmp_path):
    args = [sys.executable, "-m", "harness", "eval", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.3",
            "--episodes", "20", "--video", "none", "--no-progress", "--image-size", "64"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log = killed / "episodes.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_jsonl(log)
    assert 5 <= len(partial) < 20
    resumed = subprocess.run([*args, "--out", str(killed)], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    subprocess.run([*args, "--out", str(clean)], cwd=ROOT, check=True, capture_output=True)
    recs = read_jsonl(log)
    assert len(recs) == 20 and len({r["init_state"] for r in recs}) == 20
    assert outcomes(recs) == outcomes(read_jsonl(clean / "episodes.jsonl"))
    # re-running a finished run does nothing and keeps the records
    again = run_cli(*args[3:], "--out", str(killed))
    assert again.returncode == 0 and read_jsonl(log) == recs


def test_collect_then_replay_reproduces_the_episodes(tmp_path):
    data = tmp_path / "demos.h5"
    proc = run_cli("collect", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.2", "--episodes", "3",
                   "--out", str(data), "--image-size", "32", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    from harness.data.dataset import list_demos, read_demo

    demos = list_demos(data)
    assert [a["init_state"] for _, a in demos] == [0, 1, 2]
    ep = read_demo(data, "demo_1")
    T = ep.length
    assert ep.obs["corner2_rgb"].shape == (T, 32, 32, 3) and ep.final_obs["state"].shape == (1, 39)
    assert ep.attrs["instruction"] == "reach the goal position" and ep.attrs["policy"] == "noisy:scale=0.2"
    assert ep.success[-1] == bool(ep.attrs["success"])
    out = tmp_path / "replay"
    proc = run_cli("eval", "--env", "metaworld/reach-v3", "-p", f"replay:path={data}", "--episodes", "3",
                   "--out", str(out), "--image-size", "32", "--video", "none", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    for r in read_jsonl(out / "episodes.jsonl"):
        attrs = dict(demos)[f"demo_{r['init_state']}"]
        assert r["success"] == bool(attrs["success"])
        assert r["length"] == attrs["num_samples"]  # open-loop replay is exact: same success step


BAD_INPUTS = [
    (["eval", "--env", "metaworld/reach-v2", "-p", "scripted"], "Did you mean"),
    (["eval", "--env", "metaworld/reach-v3", "-p", "scriptd"], "unknown policy"),
    (["eval", "--env", "metaworld/reach-v3", "--episodes", "0"], "--episodes 0"),
    (["eval", "--env", "metaworld/reach-v3", "--episodes", "-2"], "--episodes -2"),
    (["eval", "--env", "metaworld/reach-v3", "--episodes", "many"], "Invalid value for '--episodes'"),
    (["eval", "--env", "metaworld/reach-v3", "--camera", "corner9"], "camera 'corner9' does not exist"),
    (["eval", "--env", "metaworld/reach-v3", "--image-size", "4"], "out of range"),
    (["eval", "--env", "metaworld/reach-v3", "--image-size", "100000"], "out of range"),
    (["eval", "--env", "metaworld/reach-v3", "--video", "sometimes"], "video mode"),
    (["eval", "--env", "metaworld/reach-v3", "-p", "noisy:scale=-1"], ">= 0"),
    (["eval", "--env", "metaworld/reach-v3", "--out", "/proc/forbidden/run"], "cannot write"),
    (["eval"], "--env is required"),
    (["eval", "--env", "metaworld/reach-v3", "--camera", "none", "--video", "all"], "needs a camera"),
    (["eval", "--env", "metaworld/reach-v3", "-p", "scripted", "-p", "scripted"], "same policy twice"),
    (["list", "robots"], "cannot list"),
    (["report", "/nonexistent/run"], "not a run folder"),
    (["collect", "--env", "metaworld/reach-v3", "--out", "x.txt"], ".h5"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    proc = run_cli(*args, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written


def test_bad_input_never_touches_an_existing_run(tmp_path):
    out = tmp_path / "run"
    ok = run_cli("eval", "--env", "metaworld/reach-v3", "--episodes", "2", "--out", str(out), "--video", "none",
                 "--no-progress", "--camera", "none")
    assert ok.returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (["--episodes", "3"], ["--episodes", "0"], ["-p", "random"], ["--camera", "corner9"]):
        proc = run_cli("eval", "--env", "metaworld/reach-v3", "--out", str(out), "--video", "none",
                       "--no-progress", "--camera", "none", *args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_live_run_folder_is_refused_and_a_torn_tail_is_cut_on_resume(tmp_path):
    from harness.run.store import RunStore

    out = tmp_path / "run"
    args = ("eval", "--env", "metaworld/reach-v3", "--episodes", "2", "--out", str(out), "--video", "none",
            "--no-progress", "--camera", "none")
    assert run_cli(*args).returncode == 0
    log = out / "episodes.jsonl"
    full = log.read_bytes()
    with RunStore(out).lock():  # another eval is writing there
        proc = run_cli(*args)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: another `harness eval` is writing"), proc.stderr
    assert log.read_bytes() == full
    lines = full.splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # killed while writing the last record
    assert run_cli(*args).returncode == 0  # resumes: the torn line is cut, the episode re-run
    assert outcomes(read_jsonl(log)) == outcomes([json.loads(x) for x in lines])
    assert len(log.read_bytes().splitlines()) == 2


def test_missing_extra_is_one_line(tmp_path):
    """With Meta-World hidden from the import system, eval names the extra to install."""
    code = ("import sys, importlib.util as u; real = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n.split('.')[0] == 'metaworld' else real(n, *a); "
            "from harness.cli import main; sys.exit(main(['eval', '--env', 'metaworld/reach-v3']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: Meta-World is not installed (no module 'metaworld'): pip install -e \".[metaworld]\""


RAY = pytest.param(["--executor", "ray", "--workers", "2"], id="ray", marks=[
    pytest.mark.slow,  # ~20 s: starts and stops its own Ray cluster
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray not installed: pip install -e ".[distributed]"')])


@pytest.mark.parametrize("workers", [["--workers", "1"], ["--workers", "2"], RAY], ids=["1", "2", "ray"])
def test_ctrl_c_saves_finished_episodes_and_the_summary(tmp_path, workers):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "harness", "eval", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.5",
            "--episodes", "20", "--video", "none", "--no-progress", "--camera", "none", "--max-steps", "400",
            "--no-stop-on-success", *workers, "--out", str(out)]
    # a shell that runs this suite in the background starts it with SIGINT ignored, which children
    # inherit (and Python then never raises KeyboardInterrupt): give the run a terminal's default
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / "episodes.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    recs = read_jsonl(log)
    res = json.loads((out / "results.json").read_text())
    assert res["interrupted"] and not res["complete"] and res["episodes_recorded"] == len(recs) < 20
    assert len({r["init_state"] for r in recs}) == len(recs)
    assert "Traceback" not in err


def test_a_failing_episode_is_an_error_record_and_the_run_goes_on(tmp_path):
    data = tmp_path / "two.h5"
    assert run_cli("collect", "--env", "metaworld/reach-v3", "--episodes", "2", "--out", str(data),
                   "--camera", "none", "--no-progress").returncode == 0
    out = tmp_path / "run"
    proc = run_cli("eval", "--env", "metaworld/reach-v3", "-p", f"replay:path={data}", "--episodes", "3",
                   "--out", str(out), "--camera", "none", "--video", "none", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    recs = {r["init_state"]: r for r in read_jsonl(out / "episodes.jsonl")}
    assert [recs[i]["outcome"] for i in range(3)] == ["success", "success", "error"]
    assert "no episode of metaworld/reach-v3 with init_state 2" in recs[2]["error"]
    assert "Traceback" in recs[2]["traceback"]
    overall = json.loads((out / "results.json").read_text())["results"][f"replay:path={data}"]["sim"]["overall"]
    # the error is a failure: 2 successes of 3 episodes, 1 of them an error
    assert (overall["episodes"], overall["valid"], overall["errors"], overall["successes"]) == (3, 2, 1, 2)
    assert overall["success_rate"] == pytest.approx(2 / 3)
