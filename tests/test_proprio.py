"""The proprioception readout (world_models/proprio.py), `harness fit-proprio`, and CEM's proprio term."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')
pytest.importorskip("safetensors", reason='safetensors not installed: pip install -e ".[models]"')

from conftest import run_cli  # noqa: E402
from test_cem import LinearWM  # noqa: E402
from test_world_models import tiny_wm  # noqa: E402

from harness.data.dataset import DatasetWriter, EpisodeData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from policies.cem import CEMConfig, cem_plan  # noqa: E402
from world_models.proprio import (  # noqa: E402
    PROPRIO_DIR,
    PROPRIO_FORMAT,
    ProprioReadout,
    fit_proprio_readout,
    pooled_features,
    readout_fingerprint,
)
from world_models.world_model import WorldModel  # noqa: E402


def square(y: int, x: int, size: int = 32) -> np.ndarray:
    img = np.full((size, size, 3), 50, np.uint8)
    img[y:y + 8, x:x + 8] = 230
    return img


@pytest.fixture(scope="module")
def states_h5(tmp_path_factory):
    """A square moving over the image; the 'hand' state is its position, the gripper constant."""
    path = tmp_path_factory.mktemp("proprio") / "states.h5"
    rng = np.random.default_rng(0)
    with DatasetWriter(path) as w:
        for e in range(10):
            ys, xs = rng.integers(0, 24, 21), rng.integers(0, 24, 21)
            frames = np.stack([square(y, x) for y, x in zip(ys, xs)])
            states = np.zeros((21, 39), np.float32)
            states[:, 0], states[:, 1], states[:, 2], states[:, 3] = xs / 24, ys / 24, 0.1 * e, 0.5
            w.add(EpisodeData(actions=np.zeros((20, 4), np.float32),
                              obs={"corner2_rgb": frames[:-1], "state": states[:-1]},
                              final_obs={"corner2_rgb": frames[-1:], "state": states[-1:]},
                              attrs={"env_id": "metaworld/reach-v3", "init_state": e}))
    return str(path)


def test_pooled_features_keep_small_grids_and_average_big_ones():
    z = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)  # a 4 x 4 grid: kept as is
    assert torch.equal(pooled_features(z, (4, 4)), z.reshape(2, 48))
    big = torch.zeros(1, 64, 2)  # an 8 x 8 grid with one value per 2 x 2 block
    grid = torch.arange(16, dtype=torch.float32).reshape(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
    big[0, :, 0] = grid.flatten()
    out = pooled_features(big, (8, 8))
    assert out.shape == (1, 32)
    assert torch.equal(out.reshape(4, 4, 2)[..., 0], torch.arange(16, dtype=torch.float32).reshape(4, 4))


def test_readout_fits_positions_from_latents_and_round_trips(saved_wm, states_h5, tmp_path):
    wm, folder = saved_wm
    readout, m = fit_proprio_readout(wm, [states_h5])
    assert m["family"] == "metaworld" and m["dims"] == 4 and readout.dims == 4
    assert m["episodes"] == 10 and m["heldout_frames"] == 2 * 21
    x_r2, y_r2, _, grip = m["heldout_r2"]
    assert x_r2 > 0.5 and y_r2 > 0.5  # where the square is, from random conv features
    assert grip is None  # a constant dimension has no R^2
    readout.save(folder / PROPRIO_DIR, readout_fingerprint(wm.encoder.spec(), wm.tensors()))
    loaded = WorldModel.load(folder).proprio_readout()
    z = wm.encode(np.stack([square(3, 17), square(20, 2)])[:, None])[:, 0]
    assert torch.allclose(loaded(z), readout(z))
    assert loaded(z[None]).shape == (1, 2, 4)  # any leading shape, e.g. (candidates, frames)
    assert abs(float(loaded(z)[0, 0] - loaded(z)[1, 0])) > 0.2  # x = 17/24 vs 2/24 tells them apart

    # put beside another world model: refused
    other = tiny_wm("minivae", seed=1)
    other_folder = other.save(tmp_path / "other")
    shutil.copytree(folder / PROPRIO_DIR, other_folder / PROPRIO_DIR)
    with pytest.raises(HarnessError, match="made for another world model"):
        WorldModel.load(other_folder).proprio_readout()


def test_a_missing_readout_and_bad_data_are_one_clear_line(saved_wm, tmp_path):
    wm, _ = saved_wm
    with pytest.raises(HarnessError, match="has no proprioception readout.*harness fit-proprio --wm minivae_dit_tiny"):
        wm.proprio_readout()
    with pytest.raises(HarnessError, match="does not exist"):
        fit_proprio_readout(wm, [str(tmp_path / "nope.h5")])
    with pytest.raises(HarnessError, match="proprio=2000 must be a number in \\[0, 100\\]"):
        CEMConfig(proprio=2000)


class ProprioLinearWM(LinearWM):
    """LinearWM with a known readout of its latents (4 tokens on a 2 x 2 grid): token 0 through
    the pseudo-inverse of B, so the proprioception after one step from zero is the action itself."""

    def __init__(self):
        super().__init__(A=2, N=4, D=3, seed=5)
        weight = np.zeros((12, 2), np.float32)
        weight[:3] = torch.linalg.pinv(self.B).numpy()
        self.readout = ProprioReadout(weight, np.zeros(2), np.ones(2), (2, 2), "metaworld")

    def proprio_readout(self):
        return self.readout


def test_the_proprio_term_pulls_the_plan_to_the_goal_proprioception():
    wm = ProprioLinearWM()
    a_latent, a_proprio = np.array([0.5, -0.5], np.float32), np.array([-0.4, 0.6], np.float32)
    goal = (torch.as_tensor(a_latent) @ wm.B)[None].expand(wm.N, wm.D)
    goal_p = wm.readout((torch.as_tensor(a_proprio) @ wm.B)[None].expand(wm.N, wm.D))
    ctx = torch.zeros(1, 1, wm.N, wm.D)
    base = CEMConfig(samples=300, elites=30, iterations=15, horizon=1, execute=1, init_std=0.5)
    off, _ = cem_plan(wm, ctx, goal, base, goal_proprio=goal_p.numpy())
    on, _ = cem_plan(wm, ctx, goal, CEMConfig(**{**base.__dict__, "proprio": 100.0}), goal_proprio=goal_p.numpy())
    assert np.abs(off[0] - a_latent).max() < 0.05  # without the term: the latent goal
    assert np.abs(on[0] - a_proprio).max() < 0.05  # a heavy proprio term: the goal proprioception
    # without a goal proprioception given, it is read from the goal latent: the two terms agree
    agree, _ = cem_plan(wm, ctx, goal, CEMConfig(**{**base.__dict__, "proprio": 100.0}))
    assert np.abs(agree[0] - a_latent).max() < 0.05


def test_cli_fit_proprio(saved_wm, states_h5):
    _, folder = saved_wm
    r = run_cli("fit-proprio", "--wm", "minivae_dit_tiny", "--wm-checkpoint", str(folder), "--data", states_h5)
    assert r.returncode == 0, r.stderr
    assert "metaworld proprioception (4 dims), held-out R^2 per dim:" in r.stdout and "n/a" in r.stdout
    config = json.loads((folder / PROPRIO_DIR / "config.json").read_text())
    assert config["family"] == "metaworld" and config["dims"] == 4


def test_add_ons_go_into_the_shipped_checkpoint_only_when_it_is_named(tmp_path, monkeypatch):
    from world_models.named import SHIPPED_DIR, addon_folder

    monkeypatch.setenv("WM_HARNESS_HOME", str(tmp_path))  # no user checkpoint: the shipped one is found
    with pytest.raises(HarnessError, match="is the one shipped in the repository .*would replace the shipped one"):
        addon_folder("minivae_dit_tiny", None, None, PROPRIO_DIR, PROPRIO_FORMAT)
    named = addon_folder("minivae_dit_tiny", str(SHIPPED_DIR / "minivae_dit_tiny"), None, PROPRIO_DIR,
                         PROPRIO_FORMAT)
    assert named == SHIPPED_DIR / "minivae_dit_tiny" / PROPRIO_DIR  # on purpose, as build_embedded.sh does
    assert addon_folder("minivae_dit_tiny", None, tmp_path / "mine", PROPRIO_DIR, PROPRIO_FORMAT) == tmp_path / "mine"
    own = tmp_path / "checkpoints" / "minivae_dit_tiny"
    own.mkdir(parents=True)
    (own / "config.json").write_text("{}")  # a user copy is found first, and is theirs to write into
    assert addon_folder("minivae_dit_tiny", None, None, PROPRIO_DIR, PROPRIO_FORMAT) == own / PROPRIO_DIR
    monkeypatch.setenv("WM_HARNESS_HOME", str(tmp_path / "empty"))  # the shipped one is found again
    for command in ("fit-proprio", "distill-decoder"):  # both commands ask before any work
        r = run_cli(command, "--wm", "minivae_dit_tiny", "--data", str(tmp_path / "none.h5"))
        assert r.returncode == 2 and "is the one shipped in the repository" in r.stderr, r.stderr


def test_cem_policy_refuses_a_missing_or_foreign_family_readout_at_construction(saved_wm, states_h5):
    from policies import EnvInfo, make_policy

    wm, folder = saved_wm
    info = EnvInfo.from_env_id("metaworld/reach-v3")
    spec = f"cem:wm=minivae_dit_tiny,checkpoint={folder},goal=data,goal_data={states_h5},proprio=0.3"
    with pytest.raises(HarnessError, match="has no proprioception readout.*harness fit-proprio"):
        make_policy(spec, info)  # before any world model or simulator loads
    make_policy(spec.replace("proprio=0.3", "proprio=0"), info)  # the term off: no readout needed
    libero = ProprioReadout(np.zeros((wm.encoder.num_tokens * wm.encoder.dim, 8)), np.zeros(8), np.ones(8),
                            wm.encoder.grid, "libero")
    libero.save(folder / PROPRIO_DIR, readout_fingerprint(wm.encoder.spec(), wm.tensors()))
    with pytest.raises(HarnessError, match="reads libero proprioception, not metaworld's"):
        make_policy(spec, info)


def test_cem_policy_takes_the_goal_state_of_a_dataset_goal(saved_wm, states_h5):
    from policies import EnvInfo, make_policy

    wm, folder = saved_wm
    readout, _ = fit_proprio_readout(wm, [states_h5])
    readout.save(folder / PROPRIO_DIR, readout_fingerprint(wm.encoder.spec(), wm.tensors()))
    info = EnvInfo.from_env_id("metaworld/reach-v3")
    info = EnvInfo(**{**info.__dict__, "cameras": ("corner2",), "image_size": 32})
    policy = make_policy(f"cem:wm=minivae_dit_tiny,checkpoint={folder},goal=data,goal_data={states_h5},"
                         f"proprio=0.3,samples=8,elites=2,iterations=1", info)
    frame, state = policy._goal(4)  # episode 4's final frame and state (init_state 4)
    from harness.data.dataset import read_demo

    demo = read_demo(states_h5, "demo_4")
    assert np.array_equal(frame, demo.frames("corner2")[-1])
    assert np.array_equal(state, demo.final_obs["state"][-1]) and state[2] == pytest.approx(0.4)
    policy.reset("reach", seed=0, init_state=4)
    action = policy.act({"pixels": {"corner2": frame}})
    assert action.shape == (4,) and np.all(np.abs(action) <= 1)
