"""Which calvin_env the harness runs: the message and exit code when it is missing (checked with
calvin_env hidden, so it runs whether or not it is installed), the commit that results record,
and the button behaviour of the pinned calvin_env (797142c, "fix bug in button during rollouts")."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from envs import calvin_sequences as cs
from envs import calvin_tasks as ct
from envs import make_env
from envs.calvin import MAX_REL_POS, CalvinEnv, calvin_env_root
from harness.errors import HarnessError
from tests.conftest import ROOT, run_cli

ct.add_calvin_env_root_to_path()
HAS_CALVIN = importlib.util.find_spec("calvin_env") is not None
requires_calvin = pytest.mark.skipif(
    not HAS_CALVIN,
    reason="calvin_env not installed: git clone https://github.com/mees/calvin_env && pip install -e ./calvin_env",
)

# Every meta-path finder wrapped so that it finds no calvin_env: find_spec("calvin_env") is None,
# as on a machine without it.
HIDE_CALVIN_ENV = """
class HideCalvinEnv:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "calvin_env" or not hasattr(self.finder, "find_spec"):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)
"""


@pytest.fixture()
def without_calvin_env(monkeypatch):
    monkeypatch.delenv("CALVIN_ENV_ROOT", raising=False)
    for name in [m for m in sys.modules if m.partition(".")[0] == "calvin_env"]:
        monkeypatch.delitem(sys.modules, name)  # find_spec answers from sys.modules first
    scope: dict = {}
    exec(HIDE_CALVIN_ENV, scope)
    monkeypatch.setattr(sys, "meta_path", [scope["HideCalvinEnv"](f) for f in sys.meta_path])


def test_missing_calvin_env_says_how_to_install(without_calvin_env, tmp_path, monkeypatch):
    with pytest.raises(
        HarnessError, match=re.escape("git clone https://github.com/mees/calvin_env")
    ):
        make_env("calvin/open_drawer")
    with pytest.raises(HarnessError, match="pip install -e ./calvin_env"):
        CalvinEnv("open_drawer")
    monkeypatch.setenv("CALVIN_ENV_ROOT", str(tmp_path))  # not a checkout: still missing
    with pytest.raises(HarnessError, match="CALVIN is not installed"):
        CalvinEnv("open_drawer")


def test_cli_without_calvin_env_exits_2_with_the_install_line(tmp_path):
    run = (
        HIDE_CALVIN_ENV
        + "import runpy, sys\nsys.meta_path[:] = [HideCalvinEnv(f) for f in sys.meta_path]\n"
        "runpy.run_module('harness', run_name='__main__', alter_sys=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CALVIN_ENV_ROOT"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            run,
            "eval",
            "--env",
            "calvin/open_drawer",
            "--policy",
            "random",
            "--episodes",
            "2",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "git clone https://github.com/mees/calvin_env" in lines[0], (
        proc.stderr
    )
    assert not (tmp_path / "run").exists()
    listing = subprocess.run([sys.executable, "-c", run, "list", "envs"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert listing.returncode == 0 and "calvin/chains" in listing.stdout, listing.stderr  # listing needs no simulator


# ---------------------------------------------------------------------------- the installed calvin_env
@requires_calvin
def test_results_record_the_calvin_env_commit(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(
        "eval",
        "--env",
        "calvin/open_drawer",
        "--policy",
        "random",
        "--episodes",
        "1",
        "--max-steps",
        "20",
        "--camera",
        "none",
        "--video",
        "none",
        "--out",
        str(out),
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=calvin_env_root(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert json.loads((out / "results.json").read_text())["calvin_env_commit"] == head


def logical(info, kind: str, name: str | None = None) -> int:
    """A button's, switch's or light's logical state in calvin_env's get_info()."""
    objects = info["scene_info"][kind]
    return int(objects[name or next(iter(objects))]["logical_state"])


@pytest.fixture(scope="module")
def sim():
    from envs.calvin import CalvinSimBackend

    backend = CalvinSimBackend((), 64)
    yield backend
    backend.close()


@requires_calvin
def test_one_press_turns_off_an_led_that_a_reset_turned_on(sim):
    """From a start state with the LED on, the button's logical state is on too, and the first press
    turns the LED off (turn_off_led solved). calvin_env 1431a46 resets the button's logical state to
    off whatever the LED shows: its first press there leaves the LED on and a second turns it off."""
    state = next(s for s in cs.start_states() if s["led"] == 1)
    frame = sim.reset(*cs.concrete_start_state(state))
    start = frame["info"]
    assert frame["scene_obs"][5] == 1 and logical(start, "lights", "led") == 1
    assert logical(start, "buttons") == 1
    button = np.array([-0.12, -0.12])
    for step in range(80):  # above the button, then down onto it until it toggles once
        target = np.array([*button, 0.56 if step < 25 else 0.44])
        action = np.zeros(7)
        action[:3] = np.clip((target - frame["robot_obs"][:3]) / MAX_REL_POS, -1, 1)
        action[6] = -1
        frame = sim.step(action)
        if logical(frame["info"], "buttons") != 1:
            break
    assert logical(frame["info"], "buttons") == 0, "the button was not pressed"
    assert frame["scene_obs"][5] == 0 and logical(frame["info"], "lights", "led") == 0
    assert sim.solved("turn_off_led", start, frame["info"])
