"""Action-relevance probes (`harness probe`): scores against hand-computed values, the ridge probe on
known linear / shuffled data, pairs and targets, splits, corruptions, the CLI end to end on
synthetic and Meta-World data, and its one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from conftest import ROOT, requires_metaworld, run_cli  # noqa: E402

from harness.analyses.probe import (  # noqa: E402
    ProbeEpisode,
    Sequence,
    action_target,
    build_pairs,
    random_projection,
    split_episodes,
    target_dims,
    validation_split,
)
from harness.analyses.probes.corruptions import corrupt, parse_corruption  # noqa: E402
from harness.analyses.probes.ridge import RidgeProbe  # noqa: E402
from harness.analyses.probes.scores import pearson_per_dim, r2_per_dim, score  # noqa: E402
from harness.cli import main  # noqa: E402
from harness.data.dataset import DatasetWriter, EpisodeData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402

# scores ------------------------------------------------------------------------------------------

def test_r2_and_pearson_match_hand_computed_values():
    y = np.array([[1.0, 0.0, 5.0], [2.0, 1.0, 5.0], [3.0, 0.0, 5.0], [4.0, 1.0, 5.0]])
    pred = np.array([[1.0, 1.0, 5.0], [2.0, 0.0, 4.0], [2.0, 1.0, 6.0], [5.0, 0.0, 5.0]])
    # column 0: SS_res = 0 + 0 + 1 + 1 = 2, SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5 -> 1 - 2/5
    # column 1: every prediction wrong by 1: SS_res = 4, SS_tot = 4 * 0.25 = 1 -> -3
    # column 2: constant target: undefined
    r2 = r2_per_dim(y, pred)
    assert r2[0] == pytest.approx(0.6) and r2[1] == pytest.approx(-3.0) and np.isnan(r2[2])
    # column 0: sum(yc * pc) = 6, |yc|^2 = 5, |pc|^2 = 9 -> 6 / sqrt(45); column 1: exactly anti-correlated
    r = pearson_per_dim(y, pred)
    assert r[0] == pytest.approx(6 / math.sqrt(45)) and r[1] == pytest.approx(-1.0) and np.isnan(r[2])
    s = score(y, pred, {"a": np.array([True, False, False]), "b": np.array([False, True, True])})
    assert s["r2"] == pytest.approx((0.6 - 3.0) / 2)  # the constant column is left out of the mean
    assert s["r2_groups"] == {"a": pytest.approx(0.6), "b": pytest.approx(-3.0)}
    assert s["pearson_groups"]["a"] == pytest.approx(6 / math.sqrt(45))


def test_ridge_recovers_a_known_linear_map_and_nothing_from_shuffled_targets():
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (600, 4))
    latents = actions @ rng.standard_normal((4, 32)) + 0.01 * rng.standard_normal((600, 32)) + 3.0
    fit, val, test = slice(0, 400), slice(400, 500), slice(500, 600)
    probe = RidgeProbe().fit(latents[fit], actions[fit], latents[val], actions[val])
    assert r2_per_dim(actions[test], probe.predict(latents[test])).min() > 0.99
    shuffled = actions[rng.permutation(600)]
    probe = RidgeProbe().fit(latents[fit], shuffled[fit], latents[val], shuffled[val])
    assert r2_per_dim(shuffled[test], probe.predict(latents[test])).mean() < 0.05
    assert probe.alpha >= 10.0  # validation picks heavy shrinkage when there is nothing to learn


# pairs, targets, splits ---------------------------------------------------------------------------

def _episode(S: int, f: int = 1, A: int = 4, task: str = "t", offset: float = 0.0) -> ProbeEpisode:
    actions = (np.arange(S * f * A, dtype=np.float32).reshape(S, f, A) + offset)
    return ProbeEpisode(np.zeros((S + 1, 8, 8, 3), np.uint8), actions, task, f"{task}:{offset}")


def test_targets_are_the_actions_between_the_frames():
    ep = _episode(5, f=2)  # 5 model steps of 2 control actions each
    gripper = np.array([False, False, False, True])
    chunk = action_target(ep.actions, 1, 2, "chunk", gripper)
    assert np.array_equal(chunk, ep.actions[1:3].reshape(-1))  # 2 steps x 2 actions x 4 dims
    net = action_target(ep.actions, 1, 2, "net", gripper)
    four = ep.actions[1:3].reshape(4, 4)
    assert np.allclose(net[:3], four[:, :3].sum(0)) and net[3] == pytest.approx(four[:, 3].mean())
    assert list(target_dims(4, 4, "chunk")) == [0, 1, 2, 3] * 4 and list(target_dims(4, 4, "net")) == [0, 1, 2, 3]

    feats = np.arange(6, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # frame t -> [t, t]
    x, y = build_pairs([Sequence(0, 0, feats)], [ep], {0}, 2, "chunk", gripper)
    assert len(x) == 4 and np.array_equal(x[1], [1, 1, 3, 3]) and np.array_equal(y[1], chunk)
    # a generated window from step 2: frames 2..5, the first two are real context -> targets 4 and 5 only
    x, y = build_pairs([Sequence(0, 2, feats[2:], first_target=2)], [ep], {0}, 1, "chunk", gripper)
    assert np.array_equal(x[:, 0], [3, 4]) and np.array_equal(y[0], ep.actions[3].reshape(-1))


def test_held_out_split_by_episode_and_by_task():
    eps = [_episode(3, task=t, offset=i) for t in ("a", "b") for i in range(5)]
    train, test = split_episodes(eps, "episode", 0.2)
    assert test == [0, 7] and len(train) == 8  # one drawn episode of each task (seed 0)
    assert [split_episodes(eps, "episode", 0.2, seed)[1] for seed in (1, 2)] == [[4, 6], [4, 8]]  # seeds resample it
    train, test = split_episodes(eps, "task", 0.2, seed=1)
    assert test == list(range(5, 10)) and train == list(range(5))  # task-OOD: a whole task held out
    assert split_episodes(eps, "task", 0.2, seed=0)[1] == list(range(5))
    fit, val = validation_split(train, 0.2, seed=0)
    assert len(val) == 1 and sorted(fit + val) == train
    assert validation_split(train, 0.2, seed=0) == (fit, val)
    assert {tuple(validation_split(train, 0.2, seed=s)[1]) for s in range(10)} != {tuple(val)}
    with pytest.raises(HarnessError, match="at least 2 tasks"):
        split_episodes(eps[:5], "task", 0.2)
    with pytest.raises(HarnessError, match="too few episodes"):
        split_episodes(eps[:2], "episode", 0.2)


def test_corruptions_are_deterministic_and_change_the_frames():
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for name in ("noise", "blur", "jitter", "occlusion"):
        a = corrupt(frames, name, 3, np.random.default_rng(1))
        b = corrupt(frames, name, 3, np.random.default_rng(1))
        assert a.dtype == np.uint8 and a.shape == frames.shape and np.array_equal(a, b), name
        assert np.abs(a.astype(int) - frames).mean() > 2, name
    mild = np.abs(corrupt(frames, "noise", 1, np.random.default_rng(1)).astype(int) - frames).mean()
    strong = np.abs(corrupt(frames, "noise", 5, np.random.default_rng(1)).astype(int) - frames).mean()
    assert strong > 2 * mild
    occluded = corrupt(frames, "occlusion", 2, np.random.default_rng(1))
    assert (occluded == 128).all(axis=-1).sum() // 3 >= round(0.2 * 32) ** 2 // 3  # a grey square, same in every frame
    assert np.array_equal((occluded == 128).all(axis=-1)[0], (occluded == 128).all(axis=-1)[2])
    assert corrupt(frames, "none", 0, np.random.default_rng(1)) is frames
    assert parse_corruption("blur:2") == ("blur", 2) and parse_corruption("none") == ("none", 0)
    with pytest.raises(HarnessError, match="severity"):
        parse_corruption("blur:9")


def test_random_projection_is_seeded_and_blockwise_exact():
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    a = random_projection(frames, 5, seed=3)
    assert a.shape == (4, 5) and np.allclose(a, random_projection(frames, 5, seed=3))
    assert not np.allclose(a, random_projection(frames, 5, seed=4))
    whole = frames.reshape(4, -1).astype(np.float32) / 255 @ np.random.default_rng([3, 0]).standard_normal((192, 5), dtype=np.float32)
    assert np.allclose(a, whole / np.sqrt(192), atol=1e-5)


# end to end ---------------------------------------------------------------------------------------

def write_synthetic(path, episodes: int = 6, T: int = 12, tasks: tuple[str, ...] = ("reach-v3",), size: int = 32,
                    family: str = "metaworld", A: int = 4, seed: int = 0):
    """Episodes of a white square that moves by the first two action dims (3 px per unit)."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(path, {"env_ids": [f"{family}/{t}" for t in tasks]}) as w:
        for task in tasks:
            for _ in range(episodes):
                actions = rng.uniform(-1, 1, (T, A)).astype(np.float32)
                pos = np.clip(np.cumsum(np.vstack([rng.uniform(10, 22, 2), 3 * actions[:, :2]]), 0), 4, size - 4)
                frames = np.full((T + 1, size, size, 3), 30, np.uint8)
                for t, (x, y) in enumerate(pos.astype(int)):
                    frames[t, y - 3:y + 3, x - 3:x + 3] = 255
                w.add(EpisodeData(actions=actions, obs={"corner2_rgb": frames[:-1]}, final_obs={"corner2_rgb": frames[-1:]},
                                  attrs={"env_id": f"{family}/{task}", "task": task}))
    return path


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from world_models.encoders import ENCODERS, save_encoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "minivae"
    save_encoder(folder, ENCODERS.build("minivae", image_size=32, dim=8, channels=[8, 8, 8]))
    return folder


def test_probe_cli_writes_the_documented_schema(tmp_path, tiny_encoder, capsys):
    data = write_synthetic(tmp_path / "d.h5")
    out = tmp_path / "probe"
    rc = main(["probe", "--data", str(data), "--encoder", "minivae", "--encoder-path", str(tiny_encoder),
               "--k", "1", "--k", "2", "--corruption", "blur", "--out", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    assert "R2 trans" in capsys.readouterr().out
    r = json.loads((out / "probe.json").read_text())
    assert r["format"] == "wm-harness-probe/1" and r["family"] == "metaworld"
    assert r["groups"] == {"translation": [0, 3], "gripper": [3, 4]}
    assert r["split"]["train_episodes"] == 4 and r["split"]["test_episodes"] == 2 and r["seeds"] == [0, 1, 2]
    rows = {(row["k"], row["corruption"]): row for row in r["results"]}
    assert set(rows) == {(1, "none"), (1, "blur"), (2, "none"), (2, "blur")}
    assert rows[(1, "none")]["n_test"] == 2 * 12 and rows[(2, "none")]["n_test"] == 2 * 11
    assert rows[(2, "none")]["target_dim"] == 8 and rows[(1, "none")]["feature_dim"] == 16  # 2 frames x mean-pooled D=8
    for row in r["results"]:
        assert set(row["r2_groups"]) == {"translation", "gripper"} and len(row["seeds"]) == 3
        assert row["baselines"]["mean"]["r2"]["mean"] <= 1e-9  # a constant prediction never beats the test mean
        assert row["r2"]["std"] >= 0 and -1 <= row["pearson"]["mean"] <= 1
        assert all(s["alpha"] > 0 for s in row["seeds"])
    # the probe is fit on clean frames: the clean row and the blurred row share their fitted penalties
    assert [s["alpha"] for s in rows[(1, "none")]["seeds"]] == [s["alpha"] for s in rows[(1, "blur")]["seeds"]]
    assert rows[(1, "none")]["r2"] != rows[(1, "blur")]["r2"]


def test_probe_on_world_model_and_generated_latents(tmp_path):
    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import ENCODERS
    from world_models.world_model import SamplerConfig, WorldModel

    torch.manual_seed(0)
    enc = ENCODERS.build("minivae", image_size=32, dim=8, channels=[8, 8, 8])
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=enc.num_tokens, action_dim=4, width=32, depth=2, heads=2, history=2))
    WorldModel(enc, dit, None, torch.zeros(8), torch.ones(8), SamplerConfig(steps=2),
               {"camera": "corner2"}, torch.zeros(8), torch.ones(8)).save(tmp_path / "wm")
    data = write_synthetic(tmp_path / "d.h5")
    rc = main(["probe", "--data", str(data), "--wm-checkpoint", str(tmp_path / "wm"), "--generated", "--k", "1",
               "--horizon", "4", "--seeds", "2", "--probe", "linear", "--probe", "mlp", "--out", str(tmp_path / "o"),
               "--no-progress", "--threads", "1"])
    assert rc == 0
    r = json.loads((tmp_path / "o" / "probe.json").read_text())
    rows = {(row["latents"], row["probe"]): row for row in r["results"]}
    assert set(rows) == {("encoder", "linear"), ("encoder", "mlp"), ("generated", "linear"), ("generated", "mlp")}
    # 12 steps, 2 context frames, windows from steps 0, 4, 8 predict 4 + 4 + 3 frames: 11 targets per episode
    assert rows[("encoder", "linear")]["n_test"] == 2 * 12 and rows[("generated", "linear")]["n_test"] == 2 * 11
    assert all(s["best_epoch"] is not None for s in rows[("generated", "mlp")]["seeds"])
    assert r["sources"][0]["kind"] == "world_model" and r["sources"][0]["history"] == 2


@pytest.mark.parametrize("args, message", [
    (["--encoder", "minivae", "--k", "0"], "--k must be >= 1"),
    (["--encoder", "nosuch"], "unknown encoder 'nosuch'"),
    (["--encoder", "minivae", "--layer", "3"], "no selectable layers"),
    (["--encoder", "minivae", "--generated"], "--generated"),
    (["--wm", "minivae_dit_tiny", "--encoder", "minivae"], "both were given"),
    ([], "neither was given"),
    (["--encoder", "minivae", "--probe", "svm"], "unknown --probe"),
    (["--encoder", "minivae", "--corruption", "fog"], "unknown corruption"),
    (["--encoder", "minivae", "--camera", "topview"], "camera 'topview' is not in"),
    (["--encoder", "minivae", "--split", "task"], "at least 2 tasks"),
    (["--encoder", "minivae", "--family", "libero"], "7-D"),
])
def test_probe_cli_errors_are_one_line_and_exit_2(tmp_path, tiny_encoder, capsys, args, message):
    data = write_synthetic(tmp_path / "d.h5", episodes=3, T=4)
    rc = main(["probe", "--data", str(data), "--encoder-path", str(tiny_encoder), "--out", str(tmp_path / "o"),
               "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_too_few_episodes_is_an_error(tmp_path, tiny_encoder, capsys):
    data = write_synthetic(tmp_path / "d.h5", episodes=2, T=4)
    rc = main(["probe", "--data", str(data), "--encoder", "minivae", "--encoder-path", str(tiny_encoder),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2 and "too few episodes" in capsys.readouterr().err


# acceptance on Meta-World --------------------------------------------------------------------------

@requires_metaworld
def test_trained_encoder_latents_beat_random_projection_on_metaworld(tmp_path):
    """The shipped minivae (trained here on Meta-World frames from init states 1000 on) carries the
    hand's motion on episodes it never saw: the linear probe's translation R^2 on held-out reach
    episodes is clearly above a random projection of the same pixels, for every probe seed."""
    data = tmp_path / "reach.h5"
    r = run_cli("collect", "--env", "metaworld/reach-v3", "-p", "noisy:scale=0.1", "-n", "12", "--max-steps", "60",
                "--image-size", "64", "--camera", "corner2", "--render", "fast", "--no-stop-on-success",
                "--out", str(data), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("probe", "--data", str(data), "--encoder", "minivae", "--encoder-path",
                str(ROOT / "checkpoints" / "encoders" / "minivae"), "--k", "4", "--out", str(tmp_path / "probe"),
                "--no-progress", "--threads", "1")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    row = result["results"][0]
    probe, rp = row["r2_groups"]["translation"]["mean"], row["baselines"]["random_projection"]["r2_groups"]["translation"]["mean"]
    assert probe > 0.05 and probe > rp + 0.1, (probe, rp)
    assert len({tuple(v["test"]) for v in result["split"]["per_seed"].values()}) > 1  # seeds resample the test set
