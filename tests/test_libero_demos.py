from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from envs import libero_tasks as lt
from harness.data.dataset import list_demos, read_demo
from harness.data.libero_demos import identify_env, import_demos, is_noop, replay_demos
from harness.errors import HarnessError
from tests.conftest import run_cli

HAS_LIBERO = importlib.util.find_spec("libero") is not None
requires_libero = pytest.mark.skipif(not HAS_LIBERO, reason='LIBERO not installed: pip install -e ".[libero]"')

TASK = lt.TASKS["libero_spatial"][0][0]
SIZE = 32


def _write_libero_file(path, demos: list[dict], bddl: str | None = f"libero/libero/bddl_files/libero_spatial/{TASK}.bddl"):
    """A demo file in LIBERO's layout. Each demo: actions, states, rewards, dones, raw (OpenGL
    convention) images, ee_states, gripper_states."""
    import h5py

    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        if bddl is not None:
            data.attrs["bddl_file_name"] = bddl
        data.attrs["problem_info"] = json.dumps({"language_instruction": lt.TASKS["libero_spatial"][0][1]})
        data.attrs["env_args"] = json.dumps({"type": 1, "env_name": "Libero_Tabletop_Manipulation"})
        data.attrs["macros_image_convention"] = "opengl"
        for i, d in enumerate(demos):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = len(d["actions"])
            for key in ("actions", "states", "rewards", "dones"):
                if key in d:
                    g.create_dataset(key, data=d[key])
            obs = g.create_group("obs")
            for key in ("agentview_rgb", "eye_in_hand_rgb", "ee_states", "gripper_states"):
                obs.create_dataset(key, data=d[key])
        data.attrs["num_demos"] = len(demos)


def _synthetic_demo(T: int, success: bool, rng) -> dict:
    state = rng.normal(size=(T, 8)).astype(np.float32)
    rewards = np.zeros(T, np.float32)
    if success:
        rewards[-1] = 1.0
    return {"actions": rng.uniform(-1, 1, (T, 7)), "states": rng.normal(size=(T, 92)), "rewards": rewards,
            "dones": (rewards > 0).astype(np.uint8),
            "agentview_rgb": rng.integers(0, 255, (T, SIZE, SIZE, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 255, (T, SIZE, SIZE, 3), dtype=np.uint8),
            "ee_states": state[:, :6], "gripper_states": state[:, 6:]}


# ---------------------------------------------------------------------------- without LIBERO
def test_import_converts_layout_orientation_and_state(tmp_path):
    rng = np.random.default_rng(0)
    demos = [_synthetic_demo(5, True, rng), _synthetic_demo(3, False, rng)]
    src = tmp_path / f"{TASK}_demo.hdf5"
    _write_libero_file(src, demos)
    summary = import_demos(src, tmp_path / "out.h5")
    assert summary == {"env_id": "libero/libero_spatial/0", "out": str(tmp_path / "out.h5"), "demos": 2, "successful": 1}
    names = [n for n, _ in list_demos(tmp_path / "out.h5")]
    assert names == ["demo_0", "demo_1"]
    ep = read_demo(tmp_path / "out.h5", "demo_0")
    assert np.array_equal(ep.obs["agentview_rgb"], demos[0]["agentview_rgb"][:, ::-1, ::-1])
    assert np.array_equal(ep.obs["eye_in_hand_rgb"], demos[0]["eye_in_hand_rgb"][:, ::-1, ::-1])
    assert np.allclose(ep.obs["state"], np.concatenate([demos[0]["ee_states"], demos[0]["gripper_states"]], 1))
    assert np.allclose(ep.actions, demos[0]["actions"])
    assert ep.attrs["success"] is True and ep.attrs["success_step"] == 5
    assert ep.attrs["instruction"] == lt.TASKS["libero_spatial"][0][1] and ep.attrs["env_id"] == "libero/libero_spatial/0"
    assert read_demo(tmp_path / "out.h5", "demo_1").attrs["success"] is False
    with pytest.raises(HarnessError, match="exists"):
        import_demos(src, tmp_path / "out.h5")


def test_task_identification(tmp_path):
    rng = np.random.default_rng(1)
    named = tmp_path / "libero_10" / f"{lt.TASKS['libero_10'][4][0]}_demo.hdf5"
    named.parent.mkdir()
    _write_libero_file(named, [_synthetic_demo(2, False, rng)], bddl=None)
    assert identify_env(named) == "libero/libero_10/4"  # from the file name
    odd = tmp_path / "something.hdf5"
    _write_libero_file(odd, [_synthetic_demo(2, False, rng)], bddl=None)
    with pytest.raises(HarnessError, match="pass --env"):
        identify_env(odd)
    assert identify_env(odd, "libero/libero_goal/3") == "libero/libero_goal/3"
    with pytest.raises(HarnessError, match="not a LIBERO task"):
        identify_env(odd, "metaworld/reach-v3")
    with pytest.raises(HarnessError, match="does not exist"):
        identify_env(tmp_path / "missing.hdf5")


def test_cli_import_and_errors(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "demo.hdf5"
    _write_libero_file(src, [_synthetic_demo(4, True, rng)])
    res = run_cli("libero-demos", "import", str(src), "--out", str(tmp_path / "d.h5"))
    assert res.returncode == 0, res.stderr
    assert "1 demos (1 successful)" in res.stdout and "libero/libero_spatial/0" in res.stdout
    res = run_cli("libero-demos", "import", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "e.h5"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_noop_rule_is_openvlas():
    still_open, still_closed = [0.0] * 6 + [-1.0], [0.0] * 6 + [1.0]
    assert is_noop(still_open) and is_noop(still_closed)  # the first action: the arm's motion alone decides
    assert is_noop(still_open, prev_action=[0.3] * 6 + [-1.0])
    assert not is_noop(still_closed, prev_action=still_open)  # the gripper closes: kept
    assert not is_noop([0.3] + [0.0] * 5 + [-1.0], prev_action=still_open)
    # the L2 norm of the six motion numbers against 1e-4, not each number on its own
    assert is_noop([4e-5] * 6 + [-1.0], still_open)  # norm 9.8e-5
    assert not is_noop([5e-5] * 6 + [-1.0], still_open)  # norm 1.22e-4


def test_replay_out_must_be_hdf5(tmp_path):
    src = tmp_path / "demo.hdf5"
    _write_libero_file(src, [_synthetic_demo(2, True, np.random.default_rng(3))])
    with pytest.raises(HarnessError, match="must end in .h5"):
        replay_demos(src, out=tmp_path / "out.txt")


# ---------------------------------------------------------------------------- real LIBERO
def _record(env, actions, setup=None) -> dict:
    """Record a demo in the real env the way LIBERO's files hold it."""
    obs, _ = env.reset(options={"init_state": 0})
    if setup is not None:
        setup(env)
        obs = env.unwrapped.observe()
    rec = {k: [] for k in ("states", "agentview_rgb", "eye_in_hand_rgb", "ee_states", "gripper_states", "rewards", "dones")}
    for a in actions:
        rec["states"].append(env.unwrapped.get_sim_state())
        rec["agentview_rgb"].append(obs["pixels"]["agentview"][::-1, ::-1])  # back to robosuite's raw image
        rec["eye_in_hand_rgb"].append(obs["pixels"]["eye_in_hand"][::-1, ::-1])
        rec["ee_states"].append(obs["state"][:6])
        rec["gripper_states"].append(obs["state"][6:])
        obs, reward, _, _, info = env.step(a)
        rec["rewards"].append(reward)
        rec["dones"].append(info["success"])
    out = {k: np.asarray(v) for k, v in rec.items()}
    out["actions"] = np.asarray(actions)
    return out


def _bowl_onto_plate(env):
    sim, lenv = env.unwrapped.sim, env.unwrapped.libero_env
    joint = lenv.get_object("akita_black_bowl_1").joints[-1]
    qpos = sim.data.get_joint_qpos(joint).copy()
    qpos[:3] = sim.data.body_xpos[lenv.obj_body_id["plate_1"]] + np.array([0.0, 0.0, 0.03])
    sim.data.set_joint_qpos(joint, qpos)
    sim.data.set_joint_qvel(joint, np.zeros(6))
    sim.forward()


# A demo with known no-ops, each judged against the last kept action (OpenVLA's rule)
OPEN, CLOSE = -1.0, 1.0
DEMO_ACTIONS = np.array([
    [0, 0, 0, 0, 0, 0, CLOSE],  # 0 the first action, arm still: dropped
    [0, 0, 0, 0, 0, 0, OPEN],  # 1 nothing kept yet, so the motion alone decides: dropped
    [0.5, 0, 0, 0, 0, 0, OPEN],  # 2 moves: kept
    [0, 0, 0, 0, 0, 0, OPEN],  # 3 still, gripper as action 2: dropped
    [0, 0, 0, 0, 0, 0, CLOSE],  # 4 still, the gripper closes: kept
    [0, 0, 0, 0, 0, 0, CLOSE],  # 5 still, gripper as action 4: dropped
    [5e-5] * 6 + [CLOSE],  # 6 motion norm 1.22e-4 > 1e-4: kept
    [-0.5, 0, 0, 0, 0, 0, CLOSE],  # 7 moves: kept
])
KEPT = [2, 4, 6, 7]


@requires_libero
def test_replay_regenerates_as_openvla(tmp_path):
    from envs import make_env

    env = make_env("libero/libero_spatial/0", cameras=("agentview", "eye_in_hand"), image_size=SIZE, render="fast")
    try:
        placed = _record(env, DEMO_ACTIONS, setup=_bowl_onto_plate)  # the bowl falls onto the plate: success
        random = _record(env, np.random.default_rng(0).uniform(-1, 1, (5, 7)))
        first_view = env.reset(options={"init_state": 0})[0]
        # what the replay must start from: states[0], then 10 wait steps with [0, 0, 0, 0, 0, 0, -1]
        at_start = env.unwrapped.reset_to_state(placed["states"][0])[0]
        after_wait = at_start
        for _ in range(10):
            after_wait = env.step(np.array(lt.NOOP_ACTION))[0]
    finally:
        env.close()
    assert placed["dones"][-1] and not random["dones"].any()
    assert not np.array_equal(at_start["pixels"]["agentview"], after_wait["pixels"]["agentview"])  # the bowl moved
    src = tmp_path / "recorded.hdf5"
    _write_libero_file(src, [placed, random])

    report = replay_demos(src, out=tmp_path / "replayed.h5", image_size=SIZE, render="fast")
    assert report["env_id"] == "libero/libero_spatial/0" and report["demos"] == 2
    ok, bad = report["results"]
    assert (ok["steps"], ok["played_steps"], ok["noops_dropped"]) == (8, 4, 4)
    assert ok["recorded_success"] and ok["replay_success"] and ok["written"]
    assert not bad["recorded_success"] and not bad["replay_success"] and not bad["written"]  # failed: dropped
    assert bad["played_steps"] == 5 and report["still_succeed"] and report["written"] == 1
    # Waiting and dropping no-ops shift the replay against the recorded states.
    assert ok["max_state_error"] < 5e-2 and bad["max_state_error"] < 5e-2

    (name, attrs), = list_demos(tmp_path / "replayed.h5")
    ep = read_demo(tmp_path / "replayed.h5", name)
    assert ep.length == 4 and np.array_equal(ep.actions, DEMO_ACTIONS[KEPT].astype(np.float32))
    assert attrs["source_demo"] == "demo_0" and attrs["noops_dropped"] == 4 and attrs["success"]
    # the first frame is the observation after the wait steps, which are not recorded
    assert np.array_equal(ep.obs["agentview_rgb"][0], after_wait["pixels"]["agentview"])
    assert np.array_equal(ep.obs["eye_in_hand_rgb"][0], after_wait["pixels"]["eye_in_hand"])
    assert np.allclose(ep.obs["state"][0], after_wait["state"])
    assert ep.final_obs["agentview_rgb"].shape == (1, SIZE, SIZE, 3)
    import h5py

    with h5py.File(tmp_path / "replayed.h5") as f:
        meta = json.loads(f["data"].attrs["env_args"])
    assert meta["replay"]["num_steps_wait"] == 10 and meta["replay"]["drop_noops"] is True
    assert meta["options"]["libero/libero_spatial/0"] == {"cameras": ["agentview", "eye_in_hand"], "image_size": SIZE,
                                                          "render": "fast"}

    # imported images are what the env showed
    import_demos(src, tmp_path / "d.h5")
    ep = read_demo(tmp_path / "d.h5", "demo_1")
    assert np.array_equal(ep.obs["agentview_rgb"][0], first_view["pixels"]["agentview"])
    assert np.allclose(ep.obs["state"][0], first_view["state"])

    # --keep-noops keeps all 8 actions; a demo whose actions no longer reach the goal makes the
    # command exit with 1
    broken = dict(placed, actions=np.tile(np.array([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]), (3, 1)))
    broken["states"] = placed["states"][:3].copy()
    broken["states"][0] = random["states"][0]  # start from the untouched scene: bowl beside the plate
    _write_libero_file(tmp_path / "two.hdf5", [placed, broken])
    res = run_cli("libero-demos", "replay", str(tmp_path / "two.hdf5"), "--out", str(tmp_path / "all.h5"),
                  "--keep-noops", "--image-size", str(SIZE), "--render", "fast", "--report", str(tmp_path / "r.json"))
    assert res.returncode == 1, res.stderr
    assert "wrote 1 successful replays" in res.stdout and "0 no-op actions dropped" in res.stdout
    assert json.loads((tmp_path / "r.json").read_text())["still_succeed"] is False
    (name, attrs), = list_demos(tmp_path / "all.h5")
    assert read_demo(tmp_path / "all.h5", name).length == 8 and attrs["noops_dropped"] == 0
    with h5py.File(tmp_path / "all.h5") as f:
        assert json.loads(f["data"].attrs["env_args"])["replay"]["drop_noops"] is False
