"""The CALVIN adapter: its logic through an injected backend (runs anywhere), and the real
calvin_env (skipped with a reason when it is not installed)."""

from __future__ import annotations

import importlib.util
import logging
import re

import numpy as np
import pytest

from envs import ENV_SETS, ENVS, calvin, env_meta, expand_env_spec, resolve_env_options
from envs import calvin_sequences as cs
from envs import calvin_tasks as ct
from envs.calvin import MAX_REL_POS, CalvinEnv

ct.add_calvin_env_root_to_path()
HAS_CALVIN = importlib.util.find_spec("calvin_env") is not None
requires_calvin = pytest.mark.skipif(
    not HAS_CALVIN, reason="calvin_env not installed: git clone https://github.com/mees/calvin_env && pip install -e ./calvin_env")

PUSH = np.array([1.0, 0, 0, 0, 0, 0, 1.0])
IDLE = np.zeros(7)


class FakeBackend:
    """Stands in for calvin_env with the same interface. A subtask counts as solved once the
    policy has pushed (action x > 0.5) ``need`` times since the subtask began."""

    commit = "0" * 40
    renderer = "tiny"
    render_warning = None

    def __init__(self, cameras=("static", "gripper"), size=16, need=3):
        self.cameras, self.size, self.need = cameras, size, need
        self.actions: list[np.ndarray] = []
        self.resets: list[tuple[np.ndarray, np.ndarray]] = []
        self.asked: list[str] = []
        self.pushes = 0
        self.closed = False

    def _frame(self):
        images = {c: np.full((self.size, self.size, 3), self.pushes % 256, np.uint8) for c in self.cameras}
        return {"images": images, "robot_obs": np.arange(15.0) + self.pushes, "scene_obs": np.full(24, self.pushes),
                "info": {"pushes": self.pushes}}

    def reset(self, robot_obs, scene_obs):
        self.resets.append((np.array(robot_obs), np.array(scene_obs)))
        self.pushes = 0
        return self._frame()

    def step(self, action):
        self.actions.append(np.array(action))
        self.pushes += int(action[0] > 0.5)
        return self._frame()

    def solved(self, task, start_info, info):
        self.asked.append(task)
        return info["pushes"] - start_info["pushes"] >= self.need

    def close(self):
        self.closed = True


def fake_env(task="chains", **kwargs) -> tuple[CalvinEnv, FakeBackend]:
    backend = FakeBackend(size=16)
    return CalvinEnv(task, image_size=16, backend=backend, **kwargs), backend


# ---------------------------------------------------------------------------- registry, no simulator
def test_registry_lists_34_tasks_and_the_chains():
    ids = [e for e in ENVS if e.startswith("calvin/")]
    assert len(ids) == 35 and "calvin/chains" in ids
    meta = env_meta("calvin/open_drawer")
    assert meta["family"] == "calvin" and meta["action_dim"] == 7
    assert meta["instruction"] == "pull the handle to open the drawer"
    assert meta["cameras"] == ("static", "gripper") and meta["default_image_size"] == ct.DEFAULT_IMAGE_SIZE
    assert meta["max_episode_steps"] == 360 and meta["num_init_states"] == 96
    assert env_meta("calvin/chains")["max_episode_steps"] == 1800
    assert env_meta("calvin/unstack_block")["max_episode_steps"] == 3 * 360
    assert expand_env_spec("calvin") == ["calvin/chains"]
    assert len(ENV_SETS.get("calvin/tasks")) == 34
    opts = resolve_env_options("calvin/chains", ("none",), None, None, check_installed=False)
    assert opts.cameras == () and opts.max_episode_steps == 1800


# ---------------------------------------------------------------------------- adapter logic, fake backend
def test_actions_are_clipped_and_the_gripper_snapped():
    env, backend = fake_env("open_drawer")
    env.reset(options={"init_state": 0})
    env.step([2.0, -3.0, 0.5, 0, 0, -0.25, 0.0])
    env.step([0, 0, 0, 0, 0, 0, -0.2])
    env.step([0, 0, 0, 0, 0, 0, 0.7])
    np.testing.assert_array_equal(backend.actions[0], [1.0, -1.0, 0.5, 0, 0, -0.25, 1.0])
    assert [a[6] for a in backend.actions] == [1.0, -1.0, 1.0]
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        env.step([np.nan] * 7)
    assert env.action_space.shape == (7,) and env.action_space.low.min() == -1 and env.action_space.high.max() == 1


def test_chain_runs_its_subtasks_without_a_reset():
    env, backend = fake_env()
    start, chain = cs.eval_sequences()[3]
    obs, info = env.reset(options={"init_state": 3})
    robot, scene = cs.concrete_start_state(start)
    np.testing.assert_array_equal(backend.resets[0][0], robot)
    np.testing.assert_array_equal(backend.resets[0][1], scene)
    assert info["instruction"] == ct.INSTRUCTIONS[chain[0]] and info["start_state"] == start
    assert info["calvin_env_commit"] == "0" * 40
    assert set(obs["pixels"]) == {"static", "gripper"} and obs["state"].shape == (15,)
    instructions = [info["instruction"]]
    for k in range(1, 16):
        obs, reward, terminated, truncated, info = env.step(PUSH)
        done = k // 3
        assert info["episode_metrics"] == {"completed_subtasks": done, "subtasks": list(chain)}
        assert info["success"] is (done == 5) and terminated is (done == 5) and not truncated
        if info["instruction"] != instructions[-1]:
            instructions.append(info["instruction"])
        if terminated:
            break
    assert k == 15 and len(backend.resets) == 1
    assert instructions == [ct.INSTRUCTIONS[t] for t in chain]
    # The oracle was asked about each subtask in turn, three steps each.
    assert backend.asked == [t for t in chain for _ in range(3)]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(PUSH)


def test_a_subtask_gets_360_steps_and_the_chain_stops_at_its_first_failure():
    env, backend = fake_env()
    env.reset(options={"init_state": 0})
    for k in range(1, 361):
        _, _, terminated, truncated, info = env.step(IDLE)
        assert truncated is (k == 360) and not terminated
    assert info["episode_metrics"]["completed_subtasks"] == 0 and not info["success"]

    env.reset(options={"init_state": 0})  # solve the first subtask at step 3: the second has 360 more
    steps = 0
    truncated = False
    while not truncated:
        _, _, _, truncated, info = env.step(PUSH if steps < 3 else IDLE)
        steps += 1
    assert steps == 363 and info["episode_metrics"]["completed_subtasks"] == 1
    assert len(backend.resets) == 2


def test_single_task_with_set_up_subtasks():
    env, _ = fake_env("place_in_slider")
    assert env.max_episode_steps == 720 and env.num_init_states == 192
    _, info = env.reset(options={"init_state": 0})
    assert info["instruction"] == ct.INSTRUCTIONS["lift_red_block_table"]
    for _ in range(3):
        _, _, _, _, info = env.step(PUSH)
    assert info["instruction"] == ct.INSTRUCTIONS["place_in_slider"] and not info["success"]
    for _ in range(3):
        _, _, terminated, _, info = env.step(PUSH)
    assert info["success"] and terminated


def test_episode_cap_and_init_states():
    env, _ = fake_env("open_drawer", max_episode_steps=10)
    env.reset(options={"init_state": 95})
    for k in range(1, 11):
        *_, truncated, _ = env.step(IDLE)
        assert truncated is (k == 10)
    with pytest.raises(ValueError, match="96 start states for open_drawer"):
        env.reset(options={"init_state": 96})
    chains, _ = fake_env()
    with pytest.raises(ValueError, match="1000 evaluation chains"):
        chains.reset(options={"init_state": 1000})
    _, info = chains.reset(seed=1003)
    assert info["init_state"] == 3
    chains.close()
    assert chains._backend.closed


def test_gymnasium_env_checker_accepts_the_adapter():
    from gymnasium.utils.env_checker import check_env

    env, _ = fake_env()
    check_env(env, skip_render_check=True)


# ---------------------------------------------------------------------------- render modes, no simulator
def test_each_camera_renders_at_calvins_size_unless_a_size_is_given():
    assert ct.camera_sizes(("static", "gripper"), None) == {"static": 200, "gripper": 84}
    assert ct.camera_sizes(("gripper",), 96) == {"gripper": 96}
    env = CalvinEnv("open_drawer", backend=FakeBackend())  # image_size=None: CALVIN's sizes
    assert env.observation_space["pixels"]["static"].shape == (200, 200, 3)
    assert env.observation_space["pixels"]["gripper"].shape == (84, 84, 3)
    env = CalvinEnv("open_drawer", image_size=64, backend=FakeBackend())
    assert {s.shape for s in env.observation_space["pixels"].values()} == {(64, 64, 3)}


def test_a_render_mode_must_be_faithful_or_fast():
    with pytest.raises(ValueError, match="'pretty' is not a render mode: use faithful or fast"):
        CalvinEnv("open_drawer", render="pretty", backend=FakeBackend())
    with pytest.raises(ValueError, match="is not a render mode"):
        calvin.choose_renderer("egl", True)


def test_faithful_is_egl_and_fast_the_tiny_renderer(monkeypatch, caplog):
    monkeypatch.setattr(calvin, "egl_problem", lambda: None)
    assert calvin.choose_renderer("faithful", True) == ("egl", None)
    assert calvin.choose_renderer("fast", True) == ("tiny", None)
    assert calvin.choose_renderer("faithful", False) == ("none", None)  # no camera: nothing renders
    monkeypatch.setattr(calvin, "egl_problem", lambda: "exit code -11")
    with caplog.at_level(logging.WARNING, logger="envs.calvin"):
        renderer, warning = calvin.choose_renderer("faithful", True)
    assert renderer == "tiny" and "EGL renderer, which cannot start here (exit code -11)" in warning
    assert "TinyRenderer instead" in warning and warning in caplog.text
    assert calvin.choose_renderer("fast", True) == ("tiny", None)  # fast never needs EGL


def test_reset_info_says_which_renderer_drew_the_frames():
    backend = FakeBackend()
    env = CalvinEnv("open_drawer", image_size=16, backend=backend)
    _, info = env.reset(options={"init_state": 0})
    assert info["renderer"] == "tiny" and "render_warning" not in info and info["render"] == "faithful"
    assert env.step(IDLE)[4]["render"] == "faithful"
    backend.render_warning = "EGL cannot start here"
    env = CalvinEnv("open_drawer", image_size=16, backend=backend)
    _, info = env.reset(options={"init_state": 0})
    assert info["render_warning"] == "EGL cannot start here"


@pytest.mark.skipif(importlib.util.find_spec("pybullet") is None, reason='pybullet not installed: pip install -e ".[calvin]"')
def test_egl_check_reports_why_egl_cannot_start(monkeypatch):
    monkeypatch.setattr(calvin, "_EGL_PROBE", "raise SystemExit('no EGL device')")
    assert calvin.egl_problem.__wrapped__() == "exit code 1: no EGL device"
    monkeypatch.setattr(calvin, "_EGL_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert calvin.egl_problem.__wrapped__() == "exit code -9"  # a crash stays in the child


# ---------------------------------------------------------------------------- the real calvin_env
class Simulators:
    """At most one real simulator open at a time (one pybullet world per process), kept while
    tests ask for the same one."""

    def __init__(self):
        self.key, self.backend = None, None

    def get(self, cameras, image_size, render, tag=""):
        from envs.calvin import CalvinSimBackend

        key = (cameras, image_size, render, tag)
        if key != self.key:
            self.close()
            self.backend = CalvinSimBackend(cameras, image_size, render=render)
            self.key = key
        return self.backend

    def close(self):
        if self.backend is not None:
            self.backend.close()
        self.key, self.backend = None, None


@pytest.fixture(scope="module")
def simulators():
    sims = Simulators()
    yield sims
    sims.close()


@pytest.fixture()
def sim(simulators):
    """The simulator most tests share: both cameras at 96 px, TinyRenderer."""
    return simulators.get(("static", "gripper"), 96, "fast")


def press_button(env: CalvinEnv, obs) -> tuple[bool, int]:
    """Scripted: move above the LED button, then press down on it (gripper closed)."""
    button = np.array([-0.12, -0.12])
    info = {"success": False}
    for step, z in enumerate([0.56] * 25 + [0.44] * 30):
        target = np.array([*button, z])
        action = np.zeros(7)
        action[:3] = np.clip((target - obs["state"][:3]) / MAX_REL_POS, -1, 1)
        action[6] = -1
        obs, _, terminated, truncated, info = env.step(action)
        if info["success"] or terminated or truncated:
            return info["success"], step + 1
    return info["success"], step + 1


def red_centroid_row(img: np.ndarray) -> float:
    red = (img[..., 0] > 150) & (img[..., 1] < 70) & (img[..., 2] < 70)
    assert red.sum() > 3, "the red block is not visible"
    return float(np.nonzero(red)[0].mean())


@requires_calvin
def test_real_task_names_match_calvin_env(sim):
    assert list(sim._oracle.tasks) == list(ct.TASKS)


@requires_calvin
def test_real_reset_puts_the_scene_in_the_start_state(sim):
    env = CalvinEnv("open_drawer", cameras=("static", "gripper"), image_size=96, backend=sim)
    obs, info = env.reset(options={"init_state": 0})
    robot, scene = cs.concrete_start_state(cs.start_states()[0])
    assert obs["pixels"]["static"].shape == (96, 96, 3) and obs["pixels"]["static"].dtype == np.uint8
    assert obs["pixels"]["gripper"].shape == (96, 96, 3) and obs["pixels"]["static"].std() > 10
    np.testing.assert_allclose(obs["state"][:3], robot[:3], atol=2e-3)  # tcp where CALVIN puts it
    np.testing.assert_allclose(info["scene_obs"][6:9], scene[6:9], atol=1e-3)  # red block
    np.testing.assert_allclose(info["scene_obs"][12:15], scene[12:15], atol=1e-3)  # blue block
    assert re.fullmatch(r"[0-9a-f]{40}", info["calvin_env_commit"])


@requires_calvin
def test_real_static_image_is_upright(sim):
    """Raising the red block by 15 cm moves it up in the picture."""
    robot, scene = cs.concrete_start_state(cs.start_states()[0])
    low = red_centroid_row(sim.reset(robot, scene)["images"]["static"])
    raised = scene.copy()
    raised[8] += 0.15
    high = red_centroid_row(sim.reset(robot, raised)["images"]["static"])
    assert high < low - 3


@requires_calvin
def test_real_action_units(sim):
    env = CalvinEnv("open_drawer", cameras=(), backend=sim)
    env.reset(options={"init_state": 0})
    before = sim.robot.target_pos.copy()
    env.step([1.0, 0, -0.5, 0, 0, 0, 1])
    np.testing.assert_allclose(sim.robot.target_pos - before, [0.02, 0, -0.01], atol=1e-12)


@requires_calvin
def test_real_oracle_recognises_a_scripted_button_press(sim):
    env = CalvinEnv("turn_on_led", cameras=(), backend=sim)
    obs, _ = env.reset(options={"init_state": 0})  # led off
    success, steps = press_button(env, obs)
    assert success and steps < 55
    # The same press does not turn on the lightbulb.
    other = CalvinEnv("turn_on_lightbulb", cameras=(), backend=sim)
    obs, _ = other.reset(options={"init_state": 0})
    assert press_button(other, obs) == (False, 55)


@requires_calvin
def test_real_camera_sizes_and_renderer_are_calvins():
    from omegaconf import OmegaConf

    conf = calvin.calvin_env_root() / "conf"
    for cam, size in ct.CAMERA_SIZES.items():
        cfg = OmegaConf.load(conf / "cameras" / "cameras" / f"{cam}.yaml")
        assert (cfg.width, cfg.height) == (size, size)
    assert OmegaConf.load(conf / "env" / "play_table_env.yaml").use_egl is True  # what faithful follows


@requires_calvin
def test_real_faithful_falls_back_to_the_tiny_renderer_when_egl_cannot_start(simulators, monkeypatch):
    robot, scene = cs.concrete_start_state(cs.start_states()[0])
    fast = simulators.get(("static", "gripper"), 96, "fast").reset(robot, scene)["images"]
    monkeypatch.setattr(calvin, "egl_problem", lambda: "no EGL device")
    backend = simulators.get(("static", "gripper"), 96, "faithful", tag="no EGL")
    assert backend.renderer == "tiny" and "no EGL device" in backend.render_warning
    env = CalvinEnv("open_drawer", image_size=96, backend=backend)
    obs, info = env.reset(options={"init_state": 0})
    assert info["renderer"] == "tiny" and info["render_warning"] == backend.render_warning
    for cam in ("static", "gripper"):
        np.testing.assert_array_equal(obs["pixels"][cam], fast[cam])  # the fast frames, bit for bit


@requires_calvin
def test_real_faithful_renders_with_egl_at_calvins_sizes(simulators):
    problem = calvin.egl_problem()
    if problem is not None:
        pytest.skip(f"pybullet's EGL renderer cannot start here: {problem}")
    robot, scene = cs.concrete_start_state(cs.start_states()[0])
    fast = simulators.get(("static", "gripper"), 96, "fast").reset(robot, scene)["images"]["static"]
    backend = simulators.get(("static", "gripper"), None, "faithful")
    assert backend.renderer == "egl" and backend.render_warning is None
    env = CalvinEnv("open_drawer", backend=backend)
    obs, info = env.reset(options={"init_state": 0})
    assert info["renderer"] == "egl" and "render_warning" not in info
    assert obs["pixels"]["static"].shape == (200, 200, 3) and obs["pixels"]["gripper"].shape == (84, 84, 3)
    assert obs["pixels"]["gripper"].std() > 10
    # The same camera: the red block sits at the same height of the picture in both renderers.
    assert abs(red_centroid_row(obs["pixels"]["static"]) / 200 - red_centroid_row(fast) / 96) < 0.02


@requires_calvin
def test_real_chain_stops_at_the_first_failure(sim):
    env = CalvinEnv("chains", cameras=(), backend=sim, steps_per_subtask=30)
    env.reset(options={"init_state": 0})
    steps, truncated = 0, False
    while not truncated:
        *_, truncated, info = env.step(IDLE)
        steps += 1
    assert steps == 30 and info["episode_metrics"]["completed_subtasks"] == 0 and not info["success"]
