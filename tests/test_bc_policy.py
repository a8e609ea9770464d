"""Behaviour cloning: chunk dataset, training, determinism, resume, checkpoints, the policy's
pixel-only interface and its errors, the CLI. The ladder in the real simulator is the slow test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("torch", reason="BC needs torch (the models extra)")
pytest.importorskip("safetensors", reason="BC checkpoints need safetensors (the models extra)")

from harness.data.dataset import DatasetWriter, EpisodeData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from policies import EnvInfo, make_policy  # noqa: E402
from policies.bc import BCConfig, BCPolicy, build_network, save_bc_checkpoint  # noqa: E402
from policies.bc_training import BCTrainConfig, ChunkDataset, split_indices, train_policy  # noqa: E402

REACH = "reach the goal position"
PUSH = "push the puck to the goal"
SIZE = 16  # synthetic frames; the network's input side in these tests


def synthetic_frame(side: int, t: int) -> np.ndarray:
    """A bright square in the left (side 0) or right (side 1) half, drifting down with t."""
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    x0 = 1 if side == 0 else SIZE // 2 + 1
    y0 = t % (SIZE // 2)
    img[y0:y0 + 6, x0:x0 + 6] = 230
    return img


def target_action(side: int, instruction: str) -> np.ndarray:
    """The mapping to learn: x from what the image shows, y from the instruction."""
    return np.array([0.8 if side == 0 else -0.8, 0.5 if instruction == REACH else -0.5, 0.0, 0.3], np.float32)


def write_synthetic(path, episodes: int = 8, length: int = 10) -> str:
    with DatasetWriter(path) as w:
        for e in range(episodes):
            side, text = e % 2, (REACH, PUSH)[(e // 2) % 2]
            frames = np.stack([synthetic_frame(side, t) for t in range(length + 1)])
            w.add(EpisodeData(actions=np.tile(target_action(side, text), (length, 1)),
                              obs={"corner2_rgb": frames[:-1]}, final_obs={"corner2_rgb": frames[-1:]},
                              attrs={"instruction": text, "env_id": "metaworld/reach-v3"}))
    return str(path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> str:
    return write_synthetic(tmp_path_factory.mktemp("bc") / "synthetic.h5")


def tiny_cfg(data, out, **kw) -> BCTrainConfig:
    args = dict(data=(data,), out=str(out), steps=60, save_every=20, image_size=SIZE, size="tiny",
                batch_size=16, lr=3e-3, shift=1, val_fraction=0.0, seed=0, threads=1)
    return BCTrainConfig(**{**args, **kw})


def reach_info(**kw) -> EnvInfo:
    base = EnvInfo.from_env_id("metaworld/reach-v3")
    return EnvInfo(**{**base.__dict__, **kw})


def obs_of(img: np.ndarray) -> dict:
    return {"pixels": {"corner2": img}}  # what a world-model env gives: no state


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("bc") / "run"
    return train_policy(tiny_cfg(synthetic, out, steps=150, save_every=50))


def test_chunk_dataset_windows_by_hand():
    frames = [np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8),
              np.arange(10, 13, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)]
    actions = [np.arange(5, dtype=np.float32)[:, None], np.arange(10, 13, dtype=np.float32)[:, None]]
    ds = ChunkDataset(frames, actions, [0, 1], chunk=2, n_frames=2)
    f, ins, act, mask = ds.get(np.array([0, 3, 4, 6]))
    # frames seen at t-2 (clipped to the episode's first) and t; actions t, t+1 masked past the end
    assert f[:, :, 0, 0, 0].tolist() == [[0, 0], [1, 3], [2, 4], [10, 11]]
    assert ins.tolist() == [0, 0, 0, 1]
    assert act[..., 0].tolist() == [[0, 1], [3, 4], [4, 4], [11, 12]]
    assert mask.tolist() == [[True, True], [True, True], [True, False], [True, True]]


def test_split_spreads_held_out_episodes():
    assert split_indices(10, 0.2) == ([1, 2, 3, 4, 5, 6, 7, 8], [0, 9])
    assert split_indices(1, 0.5) == ([0], [])


def test_training_loss_decreases_and_writes_a_ladder(trained):
    hist = trained["history"]
    assert [h["step"] for h in hist] == [50, 100, 150]
    assert hist[-1]["train_loss"] < 0.25 * hist[0]["train_loss"]
    for folder in trained["checkpoints"]:
        config = json.loads(open(os.path.join(folder, "config.json")).read())
        assert config["format"] == "wm-harness-bc/1"
        assert config["model"]["instructions"] == sorted([REACH, PUSH])
        assert config["model"]["camera"] == "corner2"
    assert os.path.isfile(os.path.join(trained["out"], "train_state.pt"))


def test_trained_policy_reproduces_the_synthetic_mapping(trained):
    policy = make_policy(f"bc:path={trained['checkpoints'][-1]}", reach_info())
    for text in (REACH, PUSH):
        for side in (0, 1):
            policy.reset(text)
            a = policy.act(obs_of(synthetic_frame(side, 0)))
            assert a.dtype == np.float32 and a.shape == (4,)
            np.testing.assert_allclose(a, target_action(side, text), atol=0.15)


def test_training_is_deterministic_and_resumes_exactly(synthetic, tmp_path):
    from safetensors.numpy import load_file

    weights = lambda run, step: load_file(os.path.join(run, f"step_{step:06d}", "model.safetensors"))  # noqa: E731
    train_policy(tiny_cfg(synthetic, tmp_path / "a"))
    train_policy(tiny_cfg(synthetic, tmp_path / "b", steps=40))
    train_policy(tiny_cfg(synthetic, tmp_path / "b", steps=60))  # resume: extends to 60
    train_policy(tiny_cfg(synthetic, tmp_path / "c", seed=1))
    a, b, c = weights(tmp_path / "a", 60), weights(tmp_path / "b", 60), weights(tmp_path / "c", 60)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)
    with pytest.raises(HarnessError, match="different settings"):
        train_policy(tiny_cfg(synthetic, tmp_path / "a", lr=1e-3))


def _random_checkpoint(folder, **kw):
    import torch

    cfg = BCConfig(**{**dict(action_dim=4, instructions=(PUSH, REACH), camera="corner2", image_size=SIZE,
                             frames=2, chunk=4, size="tiny"), **kw})
    torch.manual_seed(0)
    net = build_network(cfg).eval()
    save_bc_checkpoint(folder, cfg, net, {})
    return cfg, net


def test_checkpoint_round_trip_and_open_loop_chunks(tmp_path):
    import torch

    cfg, net = _random_checkpoint(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)  # env renders 64 px: the policy resizes
    first = BCPolicy(reach_info(), path=str(tmp_path / "ckpt"))
    second = make_policy(f"bc:path={tmp_path / 'ckpt'}", reach_info())
    for p in (first, second):
        p.reset(REACH, seed=3)
    acts = [np.stack([p.act(obs_of(img)) for img in imgs]) for p in (first, second)]
    np.testing.assert_array_equal(acts[0], acts[1])
    # steps 0-3 are the first chunk, whatever the frames in between; step 4 looks again with
    # the frame from step 0 stacked before it
    from policies.bc import resize_frames

    small = resize_frames(imgs, SIZE)
    with torch.no_grad():
        c0 = net(torch.from_numpy(np.stack([small[0], small[0]])[None]), torch.tensor([1]))[0].numpy()
        c1 = net(torch.from_numpy(np.stack([small[0], small[4]])[None]), torch.tensor([1]))[0].numpy()
    np.testing.assert_allclose(acts[0][:4], np.clip(c0, -1, 1), atol=1e-6)
    np.testing.assert_allclose(acts[0][4:8], np.clip(c1, -1, 1), atol=1e-6)
    # a batch of episodes gives each episode the actions it would get alone
    first.reset_batch([REACH, PUSH])
    batch = np.stack([first.act_batch([obs_of(imgs[t]), obs_of(imgs[8 - t])]) for t in range(5)])
    np.testing.assert_allclose(batch[:, 0], acts[0][:5], atol=1e-6)


def test_policy_errors_are_one_line(tmp_path):
    _random_checkpoint(tmp_path / "ckpt")
    spec = f"bc:path={tmp_path / 'ckpt'}"
    with pytest.raises(HarnessError, match="camera 'corner2'.*--camera corner2"):
        make_policy(spec, reach_info(cameras=("topview",)))
    with pytest.raises(HarnessError, match="4-D actions but .* takes 7-D"):
        make_policy(spec, reach_info(action_space=gym.spaces.Box(-1, 1, (7,), np.float32)))
    with pytest.raises(HarnessError, match="not trained on the instruction 'open the door"):
        make_policy(spec, EnvInfo.from_env_id("metaworld/door-open-v3"))
    policy = make_policy(spec, reach_info())
    policy.reset(REACH)
    with pytest.raises(HarnessError, match=r"needs observation\['pixels'\]\['corner2'\]; the observation has topview"):
        policy.act({"pixels": {"topview": np.zeros((64, 64, 3), np.uint8)}})
    with pytest.raises(HarnessError, match="not trained on the instruction 'make coffee'"):
        policy.reset("make coffee")
    with pytest.raises(HarnessError, match="checkpoint not found.*harness train-policy"):
        make_policy(f"bc:path={tmp_path / 'nope'}", reach_info())
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(HarnessError, match="corrupt"):
        make_policy(spec, reach_info())
    for msg in ("camera", "corrupt"):
        assert "\n" not in msg


def test_cli_train_policy(synthetic, tmp_path, capsys):
    from harness.cli import main

    out = tmp_path / "cli"
    rc = main(["train-policy", "--data", synthetic, "--out", str(out), "--steps", "4", "--save-every", "2",
               "--image-size", str(SIZE), "--size", "tiny", "--batch-size", "8", "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["step_000002", "step_000004", "train_state.pt"]
    assert "bc:path=" in capsys.readouterr().out
    assert main(["train-policy", "--data", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x")]) == 2
    assert main(["train-policy", "--data", synthetic, "--out", str(tmp_path / "y"), "--chunk", "0"]) == 2
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    assert main(["train-policy", "--data", synthetic, "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--chunk must be" in err and "not a train-policy folder" in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


def test_shipped_bc_config_parses(tmp_path):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "policies" / "bc_metaworld.yaml"
    cfg = BCTrainConfig.from_yaml(path, out=str(tmp_path / "o"))
    assert cfg.chunk == 4 and cfg.frames == 2 and cfg.image_size == 64 and cfg.data
    assert cfg.steps % cfg.save_every == 0


@pytest.mark.slow
def test_shipped_bc_checkpoints_form_a_ladder_on_reach():
    """The embedded ladder (checkpoints/policies/bc_metaworld, built by scripts/build_embedded.sh:
    200 scripted demos on the 5 default tasks, init states 1000+, steps 50/150/250) on held-out
    init states 0..9 of reach-v3 in the simulator: step 250 is clearly better than step 50
    (measured 60% vs 10%; docs/bc.md). Policy and simulator are deterministic."""
    pytest.importorskip("metaworld", reason="Meta-World is not installed")
    from harness.run.episodes import build_episodes
    from harness.run.runner import EpisodeWorker, RunSettings

    root = Path(__file__).resolve().parents[1] / "checkpoints" / "policies" / "bc_metaworld"
    worker = EpisodeWorker(RunSettings(None, None))
    episodes = build_episodes(["metaworld/reach-v3"], 10, 0, {"metaworld/reach-v3": 500})
    rates = {}
    for step in ("step_000050", "step_000250"):
        rates[step] = np.mean([worker.run_one(ep, f"bc:path={root / step}", keep_trajectory=False).success
                               for ep in episodes])
    worker.close()
    early, late = rates.values()
    assert late >= early + 0.3, rates
