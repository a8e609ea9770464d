"""World models: DiT, flow matching, from-scratch encoders, WorldModel, checkpoints, WorldModelEnv,
training (beats copy-last on held-out Meta-World episodes), resume, eval-wm and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')
pytest.importorskip("safetensors", reason='safetensors not installed: pip install -e ".[models]"')

from conftest import HAS_METAWORLD, requires_metaworld, run_cli  # noqa: E402

from harness.errors import HarnessError  # noqa: E402
from world_models.dit import DIT_SIZES, DiT, DiTBlock, DiTConfig  # noqa: E402
from world_models.encoders import ENCODERS, load_encoder, save_encoder  # noqa: E402
from world_models.flow_matching import flow_matching_loss, resolve_shift, sample, shift_time  # noqa: E402
from world_models.world_model import SamplerConfig, WorldModel  # noqa: E402


def tiny_dit(**kw) -> DiT:
    torch.manual_seed(0)
    cfg = dict(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=2, heads=2, history=2, horizon=1)
    return DiT(DiTConfig(**{**cfg, **kw}))


def tiny_wm(encoder: str = "minivae", seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    if encoder == "minivae":
        enc = ENCODERS.build("minivae", image_size=32, dim=8, channels=[8, 8, 8])
        decoder = None
    else:
        from world_models.pixel_decoder import PixelDecoder

        enc = ENCODERS.build("minijepa", image_size=32, dim=8, width=16, depth=1, heads=2, channels=[8, 8, 8])
        decoder = PixelDecoder(8, enc.grid, 32, width=16)
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=enc.num_tokens, action_dim=4, width=32, depth=2, heads=2))
    for p in dit.final.parameters():  # a non-trivial transition (adaLN-Zero would make it a no-op)
        torch.nn.init.normal_(p, std=0.1)
    return WorldModel(enc, dit, decoder, torch.zeros(8), torch.ones(8), SamplerConfig(steps=3),
                      {"camera": "corner2"}, torch.zeros(8), torch.ones(8))


# DiT and flow matching ------------------------------------------------------------------------

def test_dit_sizes_follow_the_paper():
    assert DIT_SIZES["S"] == {"width": 384, "depth": 12, "heads": 6}
    assert DIT_SIZES["B"]["width"] == 768 and DIT_SIZES["L"]["depth"] == 24
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(latent_dim=4, num_tokens=4, action_dim=2, width=30, heads=4)


def test_dit_shapes_and_zero_output_at_init():
    dit = tiny_dit()
    x, t, a = torch.randn(5, 3, 4, 8), torch.rand(5, 3), torch.randn(5, 1, 3)
    v = dit(x, t, a)
    assert v.shape == (5, 3, 4, 8)
    assert torch.count_nonzero(v) == 0  # zero-initialised output layer


def test_adaln_zero_block_is_identity_at_init():
    torch.manual_seed(1)
    block = DiTBlock(32, 4, 4.0)
    torch.nn.init.zeros_(block.ada[-1].weight)
    torch.nn.init.zeros_(block.ada[-1].bias)
    x, c = torch.randn(2, 3, 5, 32), torch.randn(2, 3, 32)
    assert torch.equal(block(x, c)[0], x)


def test_temporal_attention_is_causal():
    dit = tiny_dit()
    for p in dit.parameters():  # give every gate and head a value so frames can interact
        torch.nn.init.normal_(p, std=0.2)
    x, t, a = torch.randn(1, 3, 4, 8), torch.ones(1, 3), torch.randn(1, 1, 3)
    v = dit(x, t, a)
    x2 = x.clone()
    x2[:, 2] += 1.0  # change the last frame only
    v2 = dit(x2, t, a)
    assert torch.allclose(v[:, :2], v2[:, :2], atol=1e-6)  # earlier frames cannot see it
    assert not torch.allclose(v[:, 2], v2[:, 2])


def test_cached_context_gives_the_same_velocity_as_the_whole_clip():
    """Causal temporal attention + clean context: the context states can be computed once."""
    m = tiny_dit(depth=3, horizon=2)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ctx, x, a, t = torch.randn(5, 2, 4, 8), torch.randn(5, 2, 4, 8), torch.randn(5, 2, 3), torch.rand(5, 2)
    with torch.no_grad():
        full = m(torch.cat([ctx, x], 1), torch.cat([torch.ones(5, 2), t], 1), a)[:, 2:]
        assert torch.allclose(m.forward_target(x, t, a, m.encode_context(ctx)), full, atol=1e-5)
        shared = m(torch.cat([ctx[:1].expand(5, -1, -1, -1), x], 1), torch.cat([torch.ones(5, 2), t], 1), a)[:, 2:]
        assert torch.allclose(m.forward_target(x, t, a, m.encode_context(ctx[:1])), shared, atol=1e-5)


def test_predict_shares_one_context_across_candidates():
    wm = tiny_wm()
    z = wm.encode(np.random.default_rng(0).integers(0, 255, (1, 2, 32, 32, 3), dtype=np.uint8))
    acts = torch.rand(3, 2, 4) * 2 - 1
    g = torch.Generator()
    one = wm.predict(z, acts, generator=g.manual_seed(0), temperature=0.0)
    each = wm.predict(z.expand(3, -1, -1, -1), acts, generator=g.manual_seed(0), temperature=0.0)
    assert one.shape == (3, 2, z.shape[2], z.shape[3]) and torch.allclose(one, each, atol=1e-5)


def test_flow_sampler_is_deterministic_under_a_seed_and_exact_for_a_known_field():
    dit = tiny_dit()
    ctx, a = torch.randn(2, 2, 4, 8), torch.randn(2, 1, 3)
    s1 = sample(dit, ctx, a, steps=3, generator=torch.Generator().manual_seed(7))
    s2 = sample(dit, ctx, a, steps=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(s1, s2)
    # For the field v = target - x0 (straight paths) Euler and Heun land exactly on target.
    target = torch.randn(2, 1, 4, 8)
    x0 = torch.randn(2, 1, 4, 8)

    def straight(x, t, actions):
        tt = t[:, -1].view(-1, 1, 1, 1)
        xk = x[:, 2:]
        noise = (xk - tt * target) / (1 - tt).clamp(min=1e-6)
        return torch.cat([torch.zeros_like(x[:, :2]), target - noise], dim=1)

    for method in ("euler", "heun"):
        out = sample(straight, ctx, a, steps=4, method=method, noise=x0.clone())
        assert torch.allclose(out, target, atol=1e-4)


def test_flow_matching_loss_is_zero_for_the_true_velocity():
    target, ctx, a = torch.randn(3, 1, 4, 8), torch.randn(3, 2, 4, 8), torch.randn(3, 1, 3)
    g = torch.Generator().manual_seed(0)

    def oracle(x, t, actions):  # knows target; recovers the noise from x_t
        tt = t[:, -1].view(-1, 1, 1, 1)
        eps = (x[:, 2:] - tt * target) / (1 - tt)
        return torch.cat([x[:, :2], target - eps], dim=1)

    assert float(flow_matching_loss(oracle, ctx, target, a, generator=g)) < 1e-8
    assert float(flow_matching_loss(lambda x, t, a: torch.zeros_like(x), ctx, target, a, generator=g)) > 0.5


def test_noise_schedule_shift_depends_on_dimension():
    assert resolve_shift("auto", 16, 16) == 1.0  # small latents: plain schedule
    assert resolve_shift("auto", 256, 1024) == pytest.approx(8.0)  # V-JEPA 2 ViT-L: sqrt(256*1024/4096)
    t = torch.tensor([0.0, 0.5, 1.0])
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[2] == 1 and shifted[1] < 0.5  # more time near noise
    with pytest.raises(ValueError):
        resolve_shift(-1, 1, 1)


def test_wide_head_outputs_latent_dim():
    dit = tiny_dit(head="wide", head_width=64)
    assert dit(torch.randn(1, 3, 4, 8), torch.rand(1, 3), torch.randn(1, 1, 3)).shape == (1, 3, 4, 8)


# encoders and the world model ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["minivae", "minijepa"])
def test_scratch_encoders_shapes_and_determinism(name, tmp_path):
    params = dict(image_size=32, dim=8, channels=[8, 8, 8])
    if name == "minijepa":
        params.update(width=16, depth=1, heads=2)
    torch.manual_seed(0)
    enc = ENCODERS.build(name, **params).eval()
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 48, 48, 3), dtype=np.uint8)
    z = enc.encode(frames)
    assert z.shape == (2, 3, 16, 8) and z.dtype == torch.float32
    assert torch.equal(z, enc.encode(frames))
    save_encoder(tmp_path / "enc", enc)
    again = load_encoder(name, str(tmp_path / "enc"))
    assert torch.equal(again.encode(frames), z)


def test_scratch_encoder_training_losses_go_down():
    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    for name, params in (("minivae", {}), ("minijepa", {"width": 16, "depth": 1, "heads": 2})):
        enc = ENCODERS.build(name, image_size=32, dim=8, channels=[8, 8, 8], **params)
        opt = torch.optim.Adam(enc.trainable_parameters(), lr=3e-3)
        x = enc.preprocess(frames)
        losses = []
        for _ in range(30):
            loss, _ = enc.training_loss(x, x, torch.zeros(8, dtype=torch.long), torch.Generator().manual_seed(0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            enc.after_step()
            losses.append(float(loss.detach()))
        assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


def test_held_out_episodes_are_a_seeded_stratified_draw_of_whole_episodes():
    from world_models.data import heldout_episodes, split_episodes

    groups = [("expert", "reach")] * 8 + [("expert", "door")] * 8 + [("noisy", "reach")] * 8 + [("noisy", "door")] * 8
    train, val = split_episodes(groups, 0.125, seed=0)
    assert len(val) == 4 and sorted(train + val) == list(range(32))
    assert sorted(groups[i] for i in val) == sorted(set(groups))  # one of each policy and task
    assert split_episodes(groups, 0.125, seed=0) == (train, val)  # seeded
    assert split_episodes(groups, 0.125, seed=1)[1] != val
    assert split_episodes(5, 0.1) == ([0, 1, 3, 4], [2])  # drawn, not the last-collected episode
    assert split_episodes(1, 0.5) == ([0], []) and split_episodes(6, 0.0) == (list(range(6)), [])
    # a checkpoint records its held-out episodes; one that records none held out the last ones
    assert heldout_episodes({"split": {"val": [3, 7]}}, 10) == [3, 7]
    assert heldout_episodes({"train": {"config": {"val_fraction": 0.2}}}, 10) == [8, 9]


def test_trained_here_encoder_needs_its_weights(tmp_path):
    with pytest.raises(HarnessError, match="train-encoder"):
        load_encoder("minivae", None)
    with pytest.raises(HarnessError, match="not found"):
        load_encoder("minivae", str(tmp_path / "missing"))


@pytest.mark.parametrize("encoder", ["minivae", "minijepa"])
def test_world_model_contract_shapes(encoder):
    wm = tiny_wm(encoder)
    frames = np.random.default_rng(0).integers(0, 256, (3, 2, 40, 40, 3), dtype=np.uint8)
    z = wm.encode(frames)
    assert z.shape == (3, 2, 16, 8)
    pred = wm.predict(z, torch.randn(3, 5, 4), generator=torch.Generator().manual_seed(0))
    assert pred.shape == (3, 5, 16, 8)
    out = wm.decode(pred)
    assert out.shape == (3, 5, 32, 32, 3) and out.dtype == torch.uint8
    # batched = one at a time (same noise per row when the generator draws for the batch)
    p1 = wm.predict(z[:1], torch.zeros(1, 2, 4), temperature=0.0)
    p3 = wm.predict(z, torch.zeros(3, 2, 4), temperature=0.0)
    assert torch.allclose(p1[0], p3[0], atol=1e-5)
    with pytest.raises(ValueError, match="actions must be"):
        wm.predict(z, torch.zeros(3, 1, 7))


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    wm = tiny_wm("minijepa")
    wm.save(tmp_path / "wm")
    again = WorldModel.load(tmp_path / "wm")
    frames = np.random.default_rng(1).integers(0, 256, (2, 1, 32, 32, 3), dtype=np.uint8)
    z = wm.encode(frames)
    assert torch.equal(z, again.encode(frames))
    a = torch.randn(2, 3, 4)
    p = wm.predict(z, a, generator=torch.Generator().manual_seed(3))
    q = again.predict(z, a, generator=torch.Generator().manual_seed(3))
    assert torch.equal(p, q)
    assert torch.equal(wm.decode(p), again.decode(q))


def test_corrupt_or_mismatched_checkpoints_fail_in_one_line(tmp_path):
    wm = tiny_wm()
    folder = wm.save(tmp_path / "wm")
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(HarnessError, match="corrupt") as e:
        WorldModel.load(folder)
    assert "\n" not in str(e.value)
    wm.save(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transition"]["width"] = 64
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="does not match its config") as e:
        WorldModel.load(folder)
    assert "wrong shape" in str(e.value) and "\n" not in str(e.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(HarnessError, match="not valid JSON"):
        WorldModel.load(folder)
    with pytest.raises(HarnessError, match="not found"):
        WorldModel.load(tmp_path / "nothing")


def test_world_model_env_passes_gymnasium_checks_and_is_seeded():
    from gymnasium.utils.env_checker import check_env

    from world_models.env import WorldModelEnv, WorldModelVectorEnv

    wm = tiny_wm()
    ctx = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    env = WorldModelEnv(wm, "corner2", image_size=48, context=ctx, max_episode_steps=5)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert obs["pixels"]["corner2"].shape == (48, 48, 3) and info["latent"].shape == (16, 8)
    actions = np.random.default_rng(1).uniform(-1, 1, (5, 4)).astype(np.float32)
    run1 = [env.step(a) for a in actions]
    assert run1[-1][3] is True  # truncated at max_episode_steps
    env.reset(seed=3)
    run2 = [env.step(a) for a in actions]
    assert all(np.array_equal(x[0]["pixels"]["corner2"], y[0]["pixels"]["corner2"]) for x, y in zip(run1, run2))
    with pytest.raises(ValueError, match="context"):
        WorldModelEnv(wm, "corner2").reset()

    venv = WorldModelVectorEnv(wm, "corner2", 4, image_size=48)
    obs, info = venv.reset(seed=0, options={"context": ctx})
    assert obs["pixels"]["corner2"].shape == (4, 48, 48, 3)
    obs, r, term, trunc, info = venv.step(np.zeros((4, 4), np.float32))
    assert info["latent"].shape == (4, 16, 8)


def test_frameskip_env_predicts_every_f_steps():
    from world_models.env import WorldModelEnv

    wm = tiny_wm()
    wm.info["frameskip"] = 2
    wm.transition.config.action_dim = 4  # f * A = 4 -> env action dim 2
    env = WorldModelEnv(wm, "corner2", image_size=32, context=np.zeros((32, 32, 3), np.uint8))
    assert env.action_space.shape == (2,)
    obs0, _ = env.reset(seed=0)
    obs1 = env.step(np.ones(2, np.float32))[0]
    assert np.array_equal(obs0["pixels"]["corner2"], obs1["pixels"]["corner2"])  # held between predictions
    obs2 = env.step(np.ones(2, np.float32))[0]
    assert not np.array_equal(obs1["pixels"]["corner2"], obs2["pixels"]["corner2"])


# training on real Meta-World data --------------------------------------------------------------

@pytest.fixture(scope="module")
def mw_dataset(tmp_path_factory):
    if not HAS_METAWORLD:
        pytest.skip('Meta-World not installed: pip install -e ".[metaworld]"')
    path = tmp_path_factory.mktemp("data") / "reach.h5"
    r = run_cli("collect", "--env", "metaworld/reach-v3,metaworld/push-v3", "-p", "noisy:scale=1.0", "-n", "10",
                "--max-steps", "60", "--image-size", "64", "--no-stop-on-success", "--out", str(path), "--no-progress")
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture(scope="module")
def random_encoder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("enc") / "minivae"
    save_encoder(folder, ENCODERS.build("minivae", channels=[16, 16, 32, 32]))  # frozen random features
    return folder


def _train_cfg(data, enc, out, **kw):
    from world_models.training import TrainConfig

    base = dict(data=str(data), encoder="minivae", encoder_path=str(enc), out=str(out), width=64, depth=2, heads=2,
                steps=400, batch_size=32, lr=1e-3, warmup=20, frameskip=4, checkpoint_every=200,
                cache_dir=str(out) + "-cache", seed=0, threads=1)
    return TrainConfig(**{**base, **kw})


@requires_metaworld
def test_tiny_world_model_beats_copy_last_on_heldout_episodes(mw_dataset, random_encoder, tmp_path):
    from world_models.training import train_world_model

    cache = str(tmp_path / "cache")
    result = train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "wm", cache_dir=cache))
    assert result["val_windows"] > 20
    assert result["val_latent_mse_t0"] < 0.95 * result["copy_last_mse"], result
    wm = WorldModel.load(tmp_path / "wm")
    assert wm.frameskip == 4 and wm.info["heldout"]["copy_last_mse"] == pytest.approx(result["copy_last_mse"])
    # the held-out episodes: one of each task (a seeded, stratified draw), recorded with the rule
    split = wm.info["split"]
    assert len(split["val"]) == 2 and split["seed"] == 0 and "stratified" in split["rule"]
    assert split["val_groups"] == ["noisy:scale=1.0 metaworld/push-v3", "noisy:scale=1.0 metaworld/reach-v3"]
    assert wm.info["render"] == "fast"  # how the dataset's frames were rendered (tests/conftest.py: fast)
    # the latent cache is reused by a second run with the same encoder
    again = train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "wm2", steps=1, cache_dir=cache))
    assert again["latent_cache_reused"] and again["latent_cache"] == result["latent_cache"]


@requires_metaworld
def test_interrupted_training_resumes_to_the_same_weights(mw_dataset, random_encoder, tmp_path):
    from world_models.training import train_world_model

    train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "full", steps=40, checkpoint_every=20))

    class Stop(Exception):
        pass

    def stop_at_25(phase, step, total, numbers):
        if step == 25:
            raise Stop

    with pytest.raises(Stop):
        train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "cut", steps=40, checkpoint_every=20),
                          progress=stop_at_25)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["info"]["train"]["step"] == 20
    train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "cut", steps=40, checkpoint_every=20))
    a, b = WorldModel.load(tmp_path / "full"), WorldModel.load(tmp_path / "cut")
    for (k, v), (_, w) in zip(a.transition.state_dict().items(), b.transition.state_dict().items()):
        assert torch.allclose(v, w, atol=1e-6), k
    with pytest.raises(HarnessError, match="different settings"):
        train_world_model(_train_cfg(mw_dataset, random_encoder, tmp_path / "cut", steps=40, lr=5e-4))


@requires_metaworld
def test_cli_train_encoder_train_wm_eval_wm(mw_dataset, tmp_path):
    enc, wm, ev = tmp_path / "enc", tmp_path / "wm", tmp_path / "ev"
    r = run_cli("train-encoder", "--data", str(mw_dataset), "--encoder", "minijepa", "--out", str(enc), "--steps", "5",
                "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("train-wm", "--data", str(mw_dataset), "--encoder", "minijepa", "--encoder-path", str(enc),
                "--out", str(wm), "--steps", "10", "--decoder-steps", "10", "--frameskip", "2", "--threads", "1",
                "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "held-out latent MSE" in r.stdout
    r = run_cli("eval-wm", "--data", str(mw_dataset), "--wm-checkpoint", str(wm), "--out", str(ev), "--horizon", "4",
                "--videos", "1")
    assert r.returncode == 0, r.stderr
    fid = json.loads((ev / "fidelity.json").read_text())
    assert fid["heldout_split"] and fid["episodes"] == 2 and fid["frameskip"] == 2
    assert len(fid["per_step"]["psnr"]) == 4 and all(0 < p < 100 for p in fid["per_step"]["psnr"])
    assert all(-1 <= s <= 1 for s in fid["per_step"]["ssim"])
    assert fid["lpips"].startswith(("available", "unavailable"))
    assert len(list((ev / "videos").glob("*.mp4"))) == 1


@pytest.mark.parametrize("args, needle", [
    (["train-wm", "--data", "nope.h5", "--encoder", "minivae"], "does not exist"),
    (["train-wm", "--data", "x.h5", "--encoder", "vjepaa"], "Did you mean"),
    (["train-wm", "--data", "x.h5"], "--encoder"),
    (["train-encoder", "--data", "x.h5", "--encoder", "dino", "--out", "o"], "pretrained"),
    (["eval-wm", "--data", "x.h5", "--wm", "nosuch_dit_s"], "unknown world model"),
    (["eval-wm", "--data", "x.h5", "--wm", "vjepa_dit_s"], "train-wm --wm vjepa_dit_s"),
])
def test_cli_errors_are_one_line(args, needle, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


# context deltas, x-prediction, frame attention, reduced precision ------------------------------

@pytest.mark.parametrize("kw", [dict(context_deltas=True), dict(prediction="data"),
                                dict(context_deltas=True, prediction="data", horizon=2)])
def test_cached_context_matches_the_whole_clip_for_every_input_and_output_kind(kw):
    m = tiny_dit(depth=2, **kw)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    if m.config.context_deltas:
        m.delta_gain.copy_(torch.linspace(0.5, 3.0, 8))
    K = m.config.horizon
    ctx, x, a, t = torch.randn(4, 2, 4, 8), torch.randn(4, K, 4, 8), torch.randn(4, K, 3), torch.rand(4, K)
    with torch.no_grad():
        full = m(torch.cat([ctx, x], 1), torch.cat([torch.ones(4, 2), t], 1), a)[:, 2:]
        assert torch.allclose(m.forward_target(x, t, a, m.encode_context(ctx)), full, atol=1e-5)


def test_context_deltas_feed_the_change_between_context_frames():
    """Two contexts whose last frames agree but whose previous frames differ give the same
    absolute input for the last frame; only the delta channel tells them apart."""
    m = tiny_dit(context_deltas=True)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    last = torch.randn(1, 1, 4, 8)
    ctx_a = torch.cat([last - 0.1, last], 1)
    ctx_b = torch.cat([last + 0.1, last], 1)
    h_a, h_b = m.embed_context(ctx_a), m.embed_context(ctx_b)
    assert not torch.allclose(h_a[:, 1], h_b[:, 1])
    assert torch.allclose(h_a[:, 0] - m.x_embed(ctx_a[:, 0]), m.d_embed.bias.expand(1, 4, -1), atol=1e-6)  # zero delta
    expected = m.x_embed(last[:, 0]) + m.d_embed(torch.full_like(last[:, 0], 0.1) * m.delta_gain)
    assert torch.allclose(h_a[:, 1], expected, atol=1e-6)


def test_world_model_sets_the_delta_gain_from_its_statistics_and_round_trips(tmp_path):
    torch.manual_seed(0)
    enc = ENCODERS.build("minivae", image_size=32, dim=8, channels=[8, 8, 8])
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=enc.num_tokens, action_dim=4, width=32, depth=2, heads=2,
                        context_deltas=True, prediction="data"))
    for p in dit.final.parameters():
        torch.nn.init.normal_(p, std=0.1)
    std, dstd = torch.full((8,), 2.0), torch.full((8,), 0.5)
    wm = WorldModel(enc, dit, None, torch.zeros(8), std, SamplerConfig(steps=3), {"camera": "corner2"},
                    torch.zeros(8), dstd)
    assert torch.allclose(dit.delta_gain, torch.full((8,), 4.0))
    wm.save(tmp_path / "wm")
    back = WorldModel.load(tmp_path / "wm")
    assert back.transition.config.context_deltas and back.transition.config.prediction == "data"
    assert torch.allclose(back.transition.delta_gain, torch.full((8,), 4.0))
    z, acts = torch.randn(2, 2, enc.num_tokens, 8), torch.rand(2, 3, 4)
    g = torch.Generator()
    assert torch.equal(wm.predict(z, acts, generator=g.manual_seed(3)), back.predict(z, acts, generator=g.manual_seed(3)))
    with pytest.raises(ValueError, match="delta statistics"):
        WorldModel(enc, dit, None, torch.zeros(8), std, SamplerConfig(), {})


def test_x_prediction_sampler_lands_on_the_predicted_data_and_its_loss_is_the_data_error():
    target = torch.randn(2, 1, 4, 8)

    class Oracle(torch.nn.Module):  # predicts the clean target whatever it is given
        config = DiTConfig(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=1, heads=2, prediction="data")

        def forward(self, x, t, actions):
            return torch.cat([x[:, :2], target], 1)

    ctx, a = torch.randn(2, 2, 4, 8), torch.randn(2, 1, 3)
    for method, steps in (("euler", 1), ("euler", 4), ("heun", 3)):
        out = sample(Oracle(), ctx, a, steps=steps, method=method, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, target, atol=1e-5), method
    assert float(flow_matching_loss(Oracle(), ctx, target, a)) == pytest.approx(0.0, abs=1e-10)
    assert float(flow_matching_loss(Oracle(), ctx, target + 1.0, a)) == pytest.approx(1.0, abs=1e-5)


def test_dit_config_refuses_an_unknown_prediction():
    with pytest.raises(ValueError, match="prediction"):
        DiTConfig(latent_dim=4, num_tokens=4, action_dim=2, prediction="noise")


def fused_frame_attention(q, k, v, past=None):
    """The reference: torch's fused kernel, one sequence per (row, token, head), a causal mask
    that lets every query see the whole past."""
    B, T, N, nh, c = q.shape

    def seqs(x):  # (b, t, N, h, c) -> (b * N, h, t, c)
        return x.permute(0, 2, 3, 1, 4).reshape(x.shape[0] * N, nh, x.shape[1], c)

    if past is None:
        out = torch.nn.functional.scaled_dot_product_attention(seqs(q), seqs(k), seqs(v), is_causal=True)
    else:
        pk, pv = (p.expand(B, -1, -1, -1, -1) for p in past)
        Hc = pk.shape[1]
        mask = torch.ones(T, Hc + T, dtype=torch.bool).tril(diagonal=Hc)
        out = torch.nn.functional.scaled_dot_product_attention(seqs(q), seqs(torch.cat([pk, k], 1)),
                                                               seqs(torch.cat([pv, v], 1)), attn_mask=mask)
    return out.view(B, N, nh, T, c).permute(0, 3, 1, 2, 4)


@pytest.mark.parametrize("T,Hc,shared", [(2, 0, False), (3, 0, False), (1, 2, False), (2, 2, False),
                                         (1, 2, True), (2, 2, True)])
def test_elementwise_frame_attention_equals_torchs_fused_attention(T, Hc, shared):
    from world_models.dit import frame_attention

    g = torch.Generator().manual_seed(T * 10 + Hc)
    q, k, v = (torch.randn(3, T, 5, 2, 4, generator=g) for _ in range(3))
    keys, values, past = list(k.unbind(1)), list(v.unbind(1)), None
    if Hc:  # a past of its own per row, or one shared by every row (CEM candidates)
        Bp = 1 if shared else 3
        past = (torch.randn(Bp, Hc, 5, 2, 4, generator=g), torch.randn(Bp, Hc, 5, 2, 4, generator=g))
        keys, values = list(past[0].unbind(1)) + keys, list(past[1].unbind(1)) + values
    a, b = frame_attention(q, keys, values), fused_frame_attention(q, k, v, past)
    assert a.shape == b.shape == q.shape
    assert torch.allclose(a, b, atol=1e-5)


def test_sigmoid_gelu_stand_in_is_torchs_tanh_gelu():
    from world_models.inference import SMALL_TENSOR, SigmoidGELU

    gelu = SigmoidGELU()
    x = torch.cat([torch.linspace(-12, 12, 2001), torch.randn(40000) * 3])
    assert x.numel() >= SMALL_TENSOR  # the sigmoid form runs (a small tensor takes torch's kernel)
    x64 = torch.nn.functional.gelu(x.double(), approximate="tanh")
    before = x.clone()
    with torch.no_grad():
        fast = gelu(x)
        assert torch.equal(gelu(x[:1000]), torch.nn.functional.gelu(x[:1000], approximate="tanh"))
        low = gelu(x.bfloat16())  # bfloat16: torch's kernel
    assert torch.equal(x, before)  # the input is never written to
    assert fast.dtype == torch.float32 and float((fast.double() - x64).abs().max()) < 2e-6
    assert torch.equal(low, torch.nn.functional.gelu(x.bfloat16(), approximate="tanh"))
    xg = x.clone().requires_grad_(True)  # training: torch's kernel, exactly, with its gradient
    y = gelu(xg)
    assert torch.equal(y, torch.nn.functional.gelu(x, approximate="tanh"))
    y.sum().backward()
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.gelu(xr, approximate="tanh").sum().backward()
    assert torch.equal(xg.grad, xr.grad)


def test_stand_ins_are_swapped_only_where_they_measured_faster(monkeypatch):
    from world_models import inference

    def loaded(faster: bool):
        monkeypatch.setattr(inference, "decide", lambda name, threads: {
            "torch_ms": 2.0, "stand_in_ms": 1.0 if faster else 3.0, "use": faster, "input": [4800, 256],
            "threads": threads, "decided": "measured now"})
        dit = DiT(DiTConfig(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=2, heads=4))
        return dit, inference.prepare_for_inference(dit)

    dit, record = loaded(True)
    assert [type(b.mlp[1]).__name__ for b in dit.blocks] == ["SigmoidGELU"] * 2
    assert record["stand_ins"]["gelu"]["swapped"] == 2 and "-> stand-in" in record["why"]
    dit, record = loaded(False)  # slower here: torch's module stays
    assert all(type(b.mlp[1]) is torch.nn.GELU for b in dit.blocks)
    assert record["path"] == "torch modules" and "-> torch" in record["why"]
    monkeypatch.setenv(inference.ENV_SWITCH, "torch")
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=2, heads=4))
    assert inference.prepare_for_inference(dit) == {"path": "torch modules", "why": "WM_HARNESS_INFERENCE=torch"}
    real = inference.measure("gelu", 1)  # a real measurement on this CPU decides by its own numbers
    assert real["use"] == (real["stand_in_ms"] < (1 - inference.MARGIN) * real["torch_ms"]) and real["torch_ms"] > 0


def test_the_stand_in_decision_is_made_once_per_machine_and_read_back(monkeypatch, tmp_path):
    """Every process on a machine takes the same path: the first measures and stores its decision,
    later ones read it back (the file is keyed by CPU, torch version and thread count)."""
    from world_models import inference

    monkeypatch.setenv(inference.CACHE_ENV, str(tmp_path))
    calls = []

    def fake_measure(name, threads):
        calls.append(threads)
        return {"torch_ms": 2.0, "stand_in_ms": 1.9, "use": False, "input": [4800, 256], "threads": threads}

    monkeypatch.setattr(inference, "measure", fake_measure)
    inference.decide.cache_clear()
    first = inference.decide("gelu", 3)
    assert first["decided"] == "measured now" and calls == [3]
    inference.decide.cache_clear()  # as a new process would
    again = inference.decide("gelu", 3)
    assert calls == [3] and again["decided"] == f"read back from {tmp_path / 'inference.json'}"
    assert {k: again[k] for k in ("torch_ms", "stand_in_ms", "use")} == {"torch_ms": 2.0, "stand_in_ms": 1.9,
                                                                          "use": False}
    inference.decide("gelu", 4)  # another thread count is another decision
    assert calls == [3, 4]
    stored = json.loads((tmp_path / "inference.json").read_text())
    assert set(stored) == {inference.machine_key(3), inference.machine_key(4)}
    (tmp_path / "inference.json").write_text("not json")  # a damaged file: measured again, never an error
    inference.decide.cache_clear()
    assert inference.decide("gelu", 3)["decided"] == "measured now" and calls == [3, 4, 3]
    inference.decide.cache_clear()


def test_dit_block_gives_the_same_numbers_in_training_and_inference_mode():
    """The inference stand-ins (x * sigmoid(2z) for GELU) change nothing but rounding."""
    from world_models.inference import SMALL_TENSOR, SigmoidGELU

    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=2, heads=4))
    for p in dit.parameters():  # leave adaLN-Zero's closed gates: every branch must count
        torch.nn.init.normal_(p, std=0.2)
    B = 100  # 100 x 3 frames x 4 tokens x 128 hidden: the stand-in GELU's size, and many frames
    x, t, a = torch.randn(B, 3, 4, 8), torch.rand(B, 3), torch.randn(B, 1, 3)
    assert B * 3 * 4 * 128 >= SMALL_TENSOR
    with torch.enable_grad():
        graded = dit(x.requires_grad_(True), t, a)  # torch's GELU kernel under autograd
    for block in dit.blocks:
        block.mlp[1] = SigmoidGELU()
    with torch.no_grad():
        plain = dit(x.detach(), t, a)
        single = dit(x[:1], t[:1], a[:1])  # batch 1: torch's kernel
    assert torch.allclose(graded.detach(), plain, atol=1e-5, rtol=1e-5)
    assert torch.allclose(single, plain[:1], atol=1e-5, rtol=1e-5)
    assert float(plain.abs().max()) > 0.1  # not trivially zero


@pytest.mark.parametrize("history,shared", [(2, 1), (3, 1), (3, 2)])
def test_context_frames_shared_by_every_row_are_run_once_with_the_same_numbers(history, shared):
    torch.manual_seed(history * 10 + shared)
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=4, action_dim=3, width=32, depth=2, heads=4, history=history,
                        context_deltas=True))
    for p in dit.parameters():
        torch.nn.init.normal_(p, std=0.2)
    B = 5
    ctx = torch.randn(B, history, 4, 8)
    ctx[:, :shared] = ctx[:1, :shared]  # the leading frames are common to every row
    x, t, a = torch.randn(B, 1, 4, 8), torch.rand(B, 1), torch.randn(B, 1, 3)
    with torch.no_grad():
        want = dit.forward_target(x, t, a, dit.encode_context(ctx))
        cache = dit.encode_context(ctx, shared=shared)
        got = dit.forward_target(x, t, a, cache)
    assert [k.shape[0] for k in cache[0][0]] == [1] * shared + [B] * (history - shared)  # run at batch 1
    assert torch.allclose(got, want, atol=1e-5)
    assert float(want.abs().max()) > 0.1


def test_predict_for_many_rows_of_one_context_equals_predicting_each_row():
    wm = tiny_wm()
    z = torch.randn(1, 2, wm.encoder.num_tokens, 8)
    acts = torch.rand(6, 4, 4) * 2 - 1  # 4 steps: the real frames leave the window after 2
    one = wm.predict(z, acts, generator=torch.Generator().manual_seed(0), temperature=0.0)
    rows = wm.predict(z.expand(6, -1, -1, -1).contiguous(), acts, generator=torch.Generator().manual_seed(0),
                      temperature=0.0)
    assert torch.allclose(one, rows, atol=1e-5)
    assert not torch.allclose(one[0], one[1], atol=1e-3)  # the rows do differ


def test_bfloat16_prediction_stays_close_to_float32_and_leaves_the_model_alone():
    wm = tiny_wm()
    z = torch.randn(1, 2, wm.encoder.num_tokens, 8)
    acts = torch.rand(6, 3, 4) * 2 - 1
    g = torch.Generator()
    full = wm.predict(z, acts, generator=g.manual_seed(0))
    low = wm.predict(z, acts, generator=g.manual_seed(0), dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == full.shape
    assert float((low - full).abs().max()) < 0.05 * float(full.abs().max())
    assert wm.transition.x_embed.weight.dtype == torch.float32  # the float32 model is untouched
    assert "_casts" not in dict(wm.named_modules())  # the copy is not part of the checkpoint
    assert not any(k.startswith("_casts") for k in wm.state_dict())


@pytest.mark.parametrize("encoder", ["minivae", "minijepa"])
def test_bfloat16_decoding_is_within_a_few_intensity_levels(encoder):
    wm = tiny_wm(encoder)
    z = wm.encode(np.random.default_rng(0).integers(0, 255, (2, 3, 32, 32, 3), dtype=np.uint8))
    full, low = wm.decode(z), wm.decode(z, dtype=torch.bfloat16)
    assert low.dtype == torch.uint8 and low.shape == full.shape
    diff = (low.int() - full.int()).abs()
    assert float(diff.float().mean()) < 2.0 and int(diff.max()) <= 16
    assert next(wm.encoder.parameters()).dtype == torch.float32
    # the env decodes with it when asked
    from world_models.env import WorldModelVectorEnv

    venv = WorldModelVectorEnv(wm, "corner2", 2, decode_dtype=torch.bfloat16)
    obs, _ = venv.reset(seed=0, options={"context": np.zeros((2, 1, 32, 32, 3), np.uint8)})
    ref = wm.decode(wm.encode(np.zeros((2, 1, 32, 32, 3), np.uint8)), dtype=torch.bfloat16)[:, 0].numpy()
    assert np.array_equal(obs["pixels"]["corner2"], ref)


def test_train_identity_keeps_older_resume_states_valid():
    """A resume state written before context_deltas/prediction existed describes the defaults."""
    from world_models.training import TrainConfig

    base = dict(data="d.h5", encoder="minivae", out="o")
    old = TrainConfig(**base).identity()
    assert "context_deltas" not in old and "prediction" not in old
    new = TrainConfig(**base, context_deltas=True, prediction="data").identity()
    assert new["context_deltas"] is True and new["prediction"] == "data" and new != old


def test_train_config_rejects_an_unknown_prediction_before_any_work():
    from harness.errors import HarnessError
    from world_models.training import TrainConfig

    with pytest.raises(HarnessError, match="prediction 'noise' is unknown: use velocity or data"):
        TrainConfig(data="d.h5", encoder="minivae", out="o", prediction="noise")
