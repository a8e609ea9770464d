from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from envs import ENV_SETS, ENVS, env_meta, expand_env_spec, make_env
from envs import libero_tasks as lt
from harness.errors import HarnessError
from tests.conftest import ROOT, read_jsonl, run_cli

HAS_LIBERO = importlib.util.find_spec("libero") is not None
requires_libero = pytest.mark.skipif(not HAS_LIBERO, reason='LIBERO not installed: pip install -e ".[libero]"')

SIZE = 64


# ---------------------------------------------------------------------------- no simulator
def test_ids_sets_and_meta_without_libero():
    assert len(lt.TASKS) == 5 and {s: len(t) for s, t in lt.TASKS.items()} == {
        "libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}
    assert expand_env_spec("libero") == [f"libero/{s}/{i}" for s in lt.STANDARD_SUITES for i in range(10)]
    assert expand_env_spec("libero/libero_90")[-1] == "libero/libero_90/89"
    assert len(ENV_SETS.get("libero/libero_90")) == 90
    meta = env_meta("libero/libero_goal/0")
    assert meta["instruction"] == "open the middle drawer of the cabinet"
    assert (meta["max_episode_steps"], meta["action_dim"], meta["default_image_size"]) == (300, 7, 256)
    assert (meta["default_episodes"], meta["num_init_states"]) == (50, 50)
    assert meta["cameras"] == ("agentview", "eye_in_hand") and meta["requires"] == ("libero", "LIBERO", "libero")
    assert [env_meta(f"libero/{s}/0")["max_episode_steps"] for s in lt.SUITES] == [220, 280, 300, 520, 400]
    assert ENVS.entry("libero/libero_10/3").description == lt.TASKS["libero_10"][3][1]
    with pytest.raises(HarnessError, match="Did you mean 'libero/libero_spatial/1'"):
        expand_env_spec("libero/libero_spatial/10")
    with pytest.raises(HarnessError, match="unknown env 'libero/libero_100/0'"):
        expand_env_spec("libero/libero_100/0")


def test_list_envs_shows_instructions_and_never_imports_libero():
    code = ("import sys; from harness.cli import main; rc = main(['list', 'envs']); "
            "assert 'libero' not in sys.modules and 'robosuite' not in sys.modules, 'imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "libero/libero_spatial/0" in out.stdout
    assert "pick up the black bowl between the plate and the ramekin and place it on the plate" in out.stdout


def test_cli_rejects_unknown_suites_and_tasks(tmp_path):
    for spec, hint in (("libero/libero_spatial/12", "unknown env"), ("libero/libero_foo", "unknown env")):
        res = run_cli("eval", "--env", spec, "--policy", "random", "--episodes", "1", "--out", str(tmp_path / "r"))
        assert res.returncode == 2, res.stderr
        assert hint in res.stderr and "Traceback" not in res.stderr
    res = run_cli("eval", "--env", "libero/libero_goal/2", "--policy", "random", "--episodes", "51", "--out", str(tmp_path / "r"))
    assert res.returncode == 2 and "50 fixed initial states" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()


def test_axis_angle():
    from envs.libero import quat_to_axis_angle

    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    half = np.pi / 4  # 90 degrees about z
    assert np.allclose(quat_to_axis_angle(np.array([0.0, 0.0, np.sin(half), np.cos(half)])), [0, 0, np.pi / 2])
    # a half turn about x (w = 0): axis-angle magnitude pi
    assert np.allclose(quat_to_axis_angle(np.array([1.0, 0.0, 0.0, 0.0])), [np.pi, 0, 0])


# ---------------------------------------------------------------------------- real LIBERO
@pytest.fixture(scope="module")
def envs():
    built: dict[str, object] = {}

    def get(suite: str):
        if suite not in built:
            # fast rendering: these tests are about the protocol, not the shading (cheaper frames)
            built[suite] = make_env(f"libero/{suite}/0", cameras=("agentview", "eye_in_hand"), image_size=SIZE,
                                    render="fast")
        return built[suite]

    yield get
    for env in built.values():
        env.close()


@requires_libero
def test_task_table_matches_the_installed_package():
    assert lt.read_installed_tasks() == lt.TASKS


@requires_libero
def test_import_does_not_prompt_or_write_outside_harness_folders(tmp_path):
    """A fresh HOME and closed stdin: importing LIBERO through the harness must neither block
    nor create files anywhere but $WM_HARNESS_HOME (robosuite's /tmp log is switched off)."""
    home, harness_home = tmp_path / "home", tmp_path / "wm"
    home.mkdir()
    log = "/tmp/robosuite.log"
    before = os.path.getmtime(log) if os.path.exists(log) else None
    code = ("from envs.libero import import_libero; L = import_libero(); "
            "import robosuite.macros as m; assert m.FILE_LOGGING_LEVEL is None; print(L.get_libero_path('bddl_files'))")
    env = {**os.environ, "HOME": str(home), "WM_HARNESS_HOME": str(harness_home)}
    env.pop("LIBERO_CONFIG_PATH", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL, env=env)
    assert out.returncode == 0, out.stderr
    assert os.path.isdir(out.stdout.strip().splitlines()[-1])
    assert list(home.iterdir()) == []
    assert (os.path.getmtime(log) if os.path.exists(log) else None) == before
    assert "private macro file" not in out.stderr


def _rows_by_body(env) -> dict[str, float]:
    """Mean image row of each root body's pixels in the agentview image (robosuite's segmentation
    render, oriented exactly as the env's images are)."""
    import mujoco

    u = env.unwrapped
    u._make_current()
    seg = u.sim.render(camera_name="agentview", width=SIZE, height=SIZE, segmentation=True)[::-1, ::-1]
    geoms = np.where(seg[..., 0] == int(mujoco.mjtObj.mjOBJ_GEOM), seg[..., 1], -1)  # (objtype, objid) per pixel
    model = u._model
    rows: dict[str, list] = {}
    for gid in np.unique(geoms[geoms >= 0]):
        root = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, model.body_rootid[model.geom_bodyid[gid]])
        rows.setdefault(root, []).append(np.nonzero(geoms == gid)[0])
    return {k: float(np.concatenate(v).mean()) for k, v in rows.items()}


@requires_libero
@pytest.mark.parametrize("suite", lt.STANDARD_SUITES)
def test_init_state_is_reproducible_upright_and_instructed(envs, suite):
    env = envs(suite)
    first, info = env.reset(options={"init_state": 0})
    from envs.libero import import_libero

    with contextlib.redirect_stdout(io.StringIO()):
        task = import_libero().benchmark.get_benchmark(suite)().get_task(0)
    assert info["instruction"] == lt.TASKS[suite][0][1] == task.language
    assert info["success"] is False and info["init_state"] == 0
    assert (info["render"], info["fixtures"]) == ("fast", "openvla")
    assert first["state"].shape == (8,) and first["state"].dtype == np.float32
    assert {c: i.shape for c, i in first["pixels"].items()} == {"agentview": (SIZE, SIZE, 3), "eye_in_hand": (SIZE, SIZE, 3)}
    for _ in range(3):
        env.step(np.array([0.5, -0.5, 0.3, 0.0, 0.0, 0.2, 1.0]))
    env.reset(options={"init_state": 1})
    again, _ = env.reset(options={"init_state": 0})
    assert np.array_equal(first["state"], again["state"])
    for cam in first["pixels"]:
        assert np.array_equal(first["pixels"][cam], again["pixels"][cam]), cam
    assert first["state"][6] > 0.035 and first["state"][7] < -0.035  # fingers open after the no-op wait
    # Upright: the robot reaches in from the top of the frame, the table (or floor) lies below.
    rows = _rows_by_body(env)
    surface = next(rows[k] for k in ("table", "living_room_table", "kitchen_table", "floor") if k in rows)
    assert rows["robot0_base"] < SIZE / 3 < SIZE / 2 < surface, rows


# ---------------------------------------------------------------------------- OpenVLA's evaluation loop
OPENVLA_SIZE = 256  # run_libero_eval.py: get_libero_env(task, model_family, resolution=256)
OPENVLA_EPISODES = 3


def _openvla_loop(suite: str, task_id: int, episodes: int, camera_size: int, wait: bool):
    """OpenVLA's run_libero_eval.py for one task, its first `episodes` episodes, without a policy:
    set_seed_everywhere(7); OffScreenRenderEnv(bddl_file_name, camera_heights, camera_widths);
    env.seed(0); then per episode env.reset() (a hard reset), set_init_state(initial_states[k])
    and 10 dummy steps. Returns per episode the images it would feed the model
    (obs[...][::-1, ::-1]), the raw agentview image, fixture poses and the MuJoCo state."""
    from envs.libero import import_libero

    L = import_libero()  # prepares robosuite's import before LIBERO's own wrapper is imported
    from libero.libero.envs import OffScreenRenderEnv

    with contextlib.redirect_stdout(io.StringIO()):
        task_suite = L.benchmark.get_benchmark_dict()[suite]()
    task = task_suite.get_task(task_id)
    initial_states = task_suite.get_task_init_states(task_id)
    caller_rng = np.random.get_state()
    np.random.seed(7)  # set_seed_everywhere(cfg.seed) runs before the env is built
    env = OffScreenRenderEnv(bddl_file_name=os.path.join(L.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
                             camera_heights=camera_size, camera_widths=camera_size)

    def make_current():  # other envs of this process own GL contexts; robosuite never switches back
        env.env.sim._render_context_offscreen.gl_ctx.make_current()

    out = []
    try:
        env.seed(0)
        for k in range(episodes):
            make_current()
            env.reset()
            obs = env.set_init_state(initial_states[k])
            for _ in range(lt.NUM_STEPS_WAIT if wait else 0):
                obs, *_ = env.step([0, 0, 0, 0, 0, 0, -1])  # get_libero_dummy_action
            lenv = env.env
            out.append({
                "agentview": obs["agentview_image"][::-1, ::-1].copy(),
                "eye_in_hand": obs["robot0_eye_in_hand_image"][::-1, ::-1].copy(),
                "raw_agentview": obs["agentview_image"].copy(),
                "fixtures": {name: np.concatenate([lenv.sim.model.body_pos[lenv.sim.model.body_name2id(f.root_body)],
                                                   lenv.sim.model.body_quat[lenv.sim.model.body_name2id(f.root_body)]])
                             for name, f in lenv.fixtures_dict.items()},
                "state": env.get_sim_state().copy(),
            })
    finally:
        make_current()
        env.close()
        np.random.set_state(caller_rng)
    return out


@pytest.fixture(scope="module")
def openvla_episodes():
    """libero_spatial/0 episodes 0-2 as run_libero_eval.py runs them (256 px, 10 wait steps)."""
    return _openvla_loop("libero_spatial", 0, OPENVLA_EPISODES, OPENVLA_SIZE, wait=True)


def _assert_same_episode(obs, env, theirs, cameras):
    for cam in cameras:
        diff = np.abs(obs["pixels"][cam].astype(int) - theirs[cam].astype(int))
        assert diff.mean() < 0.5, (cam, diff.mean())
    fixtures = env.unwrapped.fixture_poses()
    assert fixtures.keys() == theirs["fixtures"].keys()
    for name, pose in fixtures.items():
        assert np.allclose(pose, theirs["fixtures"][name], rtol=0, atol=1e-9), (name, pose, theirs["fixtures"][name])
    assert np.allclose(env.unwrapped.get_sim_state(), theirs["state"], rtol=0, atol=1e-9)


@requires_libero
def test_init_state_k_gives_openvlas_episode_k(openvla_episodes, monkeypatch):
    """The acceptance: with the defaults, init state k = the frame, fixtures and state OpenVLA's
    loop gets for episode k."""
    monkeypatch.delenv("WM_HARNESS_RENDER", raising=False)  # the tests' conftest makes fast the default
    env = make_env("libero/libero_spatial/0", cameras=("agentview",), image_size=OPENVLA_SIZE)
    try:
        for k in (0, 1, 2):
            obs, info = env.reset(options={"init_state": k})
            assert (info["init_state"], info["render"], info["fixtures"]) == (k, "faithful", "openvla")
            _assert_same_episode(obs, env, openvla_episodes[k], ("agentview",))
        # the fixtures really move from episode to episode, and the image is not trivially equal
        assert not np.allclose(openvla_episodes[0]["fixtures"]["flat_stove_1"], openvla_episodes[1]["fixtures"]["flat_stove_1"])
        upside_down = np.abs(openvla_episodes[2]["raw_agentview"].astype(int) - obs["pixels"]["agentview"].astype(int))
        assert upside_down.mean() > 10
    finally:
        env.close()


@requires_libero
def test_openvla_episodes_in_any_order_in_a_fresh_process_state(openvla_episodes):
    """Episode 2 before episode 1, both cameras, with no reset history in the process (as in a
    worker that resumes a run): still OpenVLA's episodes."""
    import envs.libero as el

    el._OPENVLA_RESETS.clear()
    env = make_env("libero/libero_spatial/0", cameras=("agentview", "eye_in_hand"), image_size=OPENVLA_SIZE,
                   render="faithful")
    try:
        for k in (2, 1):
            obs, _ = env.reset(options={"init_state": k})
            _assert_same_episode(obs, env, openvla_episodes[k], ("agentview", "eye_in_hand"))
    finally:
        env.close()


@requires_libero
def test_openvla_fixtures_where_hard_resets_change_the_draws():
    """libero_spatial/4 opens a drawer and places bowls on the cabinet's sites: the draws of
    OpenVLA's hard resets depend on how many models were loaded and on where the fixtures stand
    in a fresh model. The env's soft reset reproduces them, in any order."""
    import envs.libero as el

    theirs = _openvla_loop("libero_spatial", 4, 2, 16, wait=False)  # 2 and 3 models loaded
    el._OPENVLA_RESETS.clear()
    env = make_env("libero/libero_spatial/4", cameras=())
    try:
        for k in (1, 0):
            env.unwrapped.reset_to_state(env.unwrapped.init_states[k], episode=k)
            _assert_same_episode({"pixels": {}}, env, theirs[k], ())
    finally:
        env.close()


@requires_libero
def test_fast_render_same_scene_flatter_shading(openvla_episodes):
    env = make_env("libero/libero_spatial/0", cameras=("agentview",), image_size=OPENVLA_SIZE, render="fast")
    try:
        obs, info = env.reset(options={"init_state": 1})
        assert info["render"] == "fast"
        theirs = openvla_episodes[1]
        diff = np.abs(obs["pixels"]["agentview"].astype(int) - theirs["agentview"].astype(int))
        assert 0.5 < diff.mean() < 10, diff.mean()  # shading only: no shadows, reflections, anti-aliasing
        _assert_same_episode({"pixels": {}}, env, theirs, ())  # the same scene and state
        assert np.abs(env.render().astype(int) - obs["pixels"]["agentview"].astype(int)).mean() < 0.5
    finally:
        env.close()


@requires_libero
def test_per_init_state_fixtures_and_the_callers_generator():
    env = make_env("libero/libero_spatial/0", cameras=(), fixtures="per_init_state")
    try:
        np.random.seed(123)
        before = np.random.get_state()
        _, info = env.reset(options={"init_state": 2})
        assert info["fixtures"] == "per_init_state"
        poses = env.unwrapped.fixture_poses()
        env.reset(options={"init_state": 0})
        env.reset(options={"init_state": 2})
        assert all(np.array_equal(p, env.unwrapped.fixture_poses()[n]) for n, p in poses.items())
        after = np.random.get_state()
        assert np.array_equal(before[1], after[1]) and before[2:] == after[2:]  # the caller's draws are untouched
    finally:
        env.close()


def test_render_and_fixtures_choices_are_checked_before_libero_starts():
    from envs.libero import LiberoEnv

    with pytest.raises(ValueError, match="render mode 'pretty'.*faithful, fast"):
        LiberoEnv("libero_spatial", 0, render="pretty")
    with pytest.raises(ValueError, match="fixtures mode 'seeded'.*openvla, per_init_state"):
        LiberoEnv("libero_spatial", 0, fixtures="seeded")


def test_render_modes_match_the_registry():
    from envs import registry

    if not hasattr(registry, "RENDER_MODES"):
        pytest.skip("envs.registry has no RENDER_MODES")
    assert tuple(registry.RENDER_MODES) == lt.RENDER_MODES


@requires_libero
def test_check_env(envs):
    from gymnasium.utils.env_checker import check_env

    env = envs("libero_object")
    check_env(env, skip_render_check=True)
    assert env.render().shape == (SIZE, SIZE, 3)


@requires_libero
def test_success_oracle_fires_on_the_goal_configuration_only(envs):
    """libero_spatial/0's goal is (On akita_black_bowl_1 plate_1): random actions do not reach it;
    putting the bowl on the plate through the simulator does."""
    env = envs("libero_spatial")
    env.reset(options={"init_state": 0})
    rng = np.random.default_rng(0)
    hits = [env.step(rng.uniform(-1, 1, 7))[4]["success"] for _ in range(15)]
    assert not any(hits)

    env.reset(options={"init_state": 0})
    sim, lenv = env.sim, env.libero_env
    bowl, plate = lenv.get_object("akita_black_bowl_1"), "plate_1"
    plate_pos = sim.data.body_xpos[lenv.obj_body_id[plate]].copy()
    qpos = sim.data.get_joint_qpos(bowl.joints[-1]).copy()
    qpos[:3] = plate_pos + np.array([0.0, 0.0, 0.03])
    sim.data.set_joint_qpos(bowl.joints[-1], qpos)
    sim.data.set_joint_qvel(bowl.joints[-1], np.zeros(6))
    sim.forward()
    success = False
    for _ in range(15):  # let it settle onto the plate (contact is part of the predicate)
        success = env.step(np.array(lt.NOOP_ACTION))[4]["success"]
        if success:
            break
    assert success
    assert env.check_success()


@requires_libero
def test_episode_cap_and_bad_actions(envs):
    env = make_env("libero/libero_goal/0", cameras=(), max_episode_steps=2)
    try:
        obs, _ = env.reset(seed=3)
        assert obs["pixels"] == {} and env.unwrapped._init_state == 3
        with pytest.raises(ValueError, match="shape"):
            env.step(np.zeros(4))
        with pytest.raises(ValueError, match="NaN"):
            env.step(np.full(7, np.nan))
        assert env.step(np.zeros(7))[3] is False
        assert env.step(np.zeros(7))[3] is True
        with pytest.raises(RuntimeError, match="episode is over"):
            env.step(np.zeros(7))
        with pytest.raises(ValueError, match="out of range.*50 fixed init states"):
            env.reset(options={"init_state": 50})
    finally:
        env.close()


@requires_libero
def test_eval_cli_writes_results_and_videos(tmp_path):
    out = tmp_path / "run"
    res = run_cli("eval", "--env", "libero/libero_spatial/0", "--policy", "random", "--episodes", "2",
                  "--max-steps", "6", "--image-size", "32", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    records = read_jsonl(out / "episodes.jsonl")
    assert sorted(r["init_state"] for r in records) == [0, 1]
    assert all(r["outcome"] == "failure" and r["length"] == 6 and r["max_steps"] == 6 for r in records)
    assert all(r["video"] and (out / r["video"]).stat().st_size > 0 for r in records)
    summary = json.loads((out / "results.json").read_text())
    assert "libero/libero_spatial/0" in json.dumps(summary)


@requires_libero
@pytest.mark.slow
def test_eval_cli_acceptance_command(tmp_path):
    """A user's first LIBERO command: 2 episodes of 220 steps at 256 px."""
    out = tmp_path / "run"
    res = run_cli("eval", "--env", "libero/libero_spatial/0", "--policy", "random", "--episodes", "2",
                  "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    records = read_jsonl(out / "episodes.jsonl")
    assert [r["max_steps"] for r in records] == [220, 220]
    assert all(r["video"] and (out / r["video"]).exists() for r in records)
