from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.run.config import EvalConfig, parse_video_mode
from policies import EnvInfo, make_policy, parse_policy_spec


def test_video_modes():
    assert parse_video_mode("all") == ("all", 0)
    assert parse_video_mode("first:4") == ("first", 4)
    for bad in ("first:0", "some", "first:x", ""):
        with pytest.raises(HarnessError):
            parse_video_mode(bad)


@pytest.mark.parametrize("kwargs", [dict(episodes=0), dict(episodes=-3), dict(workers=0), dict(seed=-1),
                                    dict(max_steps=0), dict(video="sometimes"), dict(policies=())])
def test_eval_config_rejects_bad_values(kwargs):
    with pytest.raises(HarnessError):
        EvalConfig(env="metaworld/reach-v3", **kwargs)


def test_wm_precision_is_checked_and_names_the_run_only_when_set():
    base = dict(env="metaworld/reach-v3", wm="minivae_dit_tiny")
    ids = ["metaworld/reach-v3"]
    assert "wm_precision" not in EvalConfig(**base).identity(ids)  # float32 runs keep their identity
    low = EvalConfig(**base, wm_precision="bfloat16")
    assert low.identity(ids)["wm_precision"] == "bfloat16" and low.identity(ids) != EvalConfig(**base).identity(ids)
    with pytest.raises(HarnessError, match="--wm-precision 'float16' is not a precision: use float32 or bfloat16"):
        EvalConfig(**base, wm_precision="float16")
    with pytest.raises(HarnessError, match="belong to a world model"):
        EvalConfig(env="metaworld/reach-v3", wm_precision="bfloat16")


def test_eval_config_from_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("env: metaworld/reach-v3\npolicies: [scripted, random]\nepisodes: 3\n")
    cfg = EvalConfig.from_yaml(p, episodes=4)
    assert cfg.policies == ("scripted", "random") and cfg.episodes == 4
    p.write_text("env: metaworld/reach-v3\nepisodez: 3\n")
    with pytest.raises(HarnessError, match="unknown key"):
        EvalConfig.from_yaml(p)
    p.write_text("env: [unclosed\n")
    with pytest.raises(HarnessError, match="not valid YAML"):
        EvalConfig.from_yaml(p)


def test_policy_spec_parsing():
    spec = parse_policy_spec("noisy:base=random,scale=0.5")
    assert spec.name == "noisy" and spec.params == {"base": "random", "scale": 0.5}
    with pytest.raises(HarnessError, match="no parameter 'sigma'"):
        parse_policy_spec("noisy:sigma=0.5")
    with pytest.raises(HarnessError, match="Did you mean 'random'"):
        parse_policy_spec("randon")
    with pytest.raises(HarnessError, match="key=value"):
        parse_policy_spec("noisy:0.5")


def _info():
    return EnvInfo.from_env_id("metaworld/reach-v3")


def test_random_and_noisy_policies_reproduce_per_seed():
    info = _info()
    obs = {"state": np.zeros(39, np.float32), "pixels": {}}
    for spec in ("random", "noisy:base=random,scale=0.3"):
        pol = make_policy(spec, info)
        pol.reset("x", seed=7)
        a = [pol.act(obs) for _ in range(5)]
        pol.reset("x", seed=7)
        b = [pol.act(obs) for _ in range(5)]
        pol.reset("x", seed=8)
        c = [pol.act(obs) for _ in range(5)]
        assert np.array_equal(np.stack(a), np.stack(b))
        assert not np.array_equal(np.stack(a), np.stack(c))
        assert np.all(np.abs(np.stack(a)) <= 1.0) and np.stack(a).dtype == np.float32


def test_noisy_noise_has_the_set_scale():
    info = _info()
    base = make_policy("noisy:base=random,scale=0.0", info)
    base.reset("x", seed=1)
    zero_noise = base.act({})
    ref = make_policy("random", info)
    ref.reset("x", seed=1)
    assert np.array_equal(zero_noise, ref.act({}))  # scale 0 leaves the base policy unchanged
    noisy = make_policy("noisy:base=random,scale=0.05", info)
    noisy.reset("x", seed=1)
    ref.reset("x", seed=1)
    diffs = []
    for _ in range(2000):
        diffs.append(noisy.act({}) - ref.act({}))
    d = np.stack(diffs)
    inner = d[np.abs(d).max(axis=1) < 0.9]  # ignore draws clipped at the bounds
    assert inner.std() == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize("spec,match", [("noisy:scale=-1", ">= 0"), ("noisy:scale=abc", "not a number"),
                                        ("noisy:base=noisy", "cannot itself"), ("replay", "needs a file"),
                                        ("replay:path=/nonexistent.npy", "does not exist")])
def test_policy_bad_parameters(spec, match):
    with pytest.raises(HarnessError, match=match):
        make_policy(spec, _info())


def test_replay_npy(tmp_path):
    acts = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "a.npy", acts)
    pol = make_policy(f"replay:path={tmp_path / 'a.npy'}", _info())
    pol.reset("x")
    got = [pol.act({}) for _ in range(4)]
    assert np.array_equal(np.stack(got[:3]), acts) and np.array_equal(got[3], np.zeros(4, np.float32))
    np.save(tmp_path / "b.npy", np.zeros((3, 7), np.float32))
    with pytest.raises(HarnessError, match=r"needs numeric \(T, 4\)"):
        make_policy(f"replay:path={tmp_path / 'b.npy'}", _info())


def test_shipped_configs_are_valid():
    from pathlib import Path

    from harness.run.evaluate import plan_eval  # noqa: F401  (importable without simulators)

    paths = sorted((Path(__file__).resolve().parents[1] / "configs" / "eval").rglob("*.yaml"))
    assert paths
    for path in paths:
        cfg = EvalConfig.from_yaml(path)
        for spec in cfg.policies:
            parse_policy_spec(spec)


def test_shipped_world_model_configs_are_valid():
    from world_models import WORLD_MODELS
    from world_models.named import read_config
    from world_models.training import TrainConfig

    assert {"vjepa_dit_s", "vae_dit_s", "dino_dit_s", "siglip_dit_s", "minivae_dit_tiny"} <= set(WORLD_MODELS.names())
    for name in WORLD_MODELS.names():
        fields = {k: v for k, v in read_config(name).items() if k not in ("name", "description")}
        cfg = TrainConfig(data="d.h5", out="o", name=name, **fields)
        assert name == f"{cfg.encoder}_dit_{cfg.size.lower()}"


def test_runs_render_faithfully_unless_told_or_their_world_model_learned_from_fast_frames(monkeypatch, tmp_path):
    from envs import resolve_env_options
    from harness.errors import HarnessError
    from harness.run.config import EvalConfig
    from harness.run.evaluate import run_render

    monkeypatch.delenv("WM_HARNESS_RENDER", raising=False)
    assert resolve_env_options("metaworld/reach-v3", check_installed=False).render == "faithful"
    assert run_render(EvalConfig(env="metaworld/reach-v3")) == "faithful"
    assert run_render(EvalConfig(env="metaworld/reach-v3", render="fast")) == "fast"
    # the embedded world model learned from fast frames (its checkpoint's info.render): its runs follow
    assert run_render(EvalConfig(env="metaworld/reach-v3", wm="minivae_dit_tiny")) == "fast"
    monkeypatch.setenv("WM_HARNESS_RENDER", "fast")
    assert resolve_env_options("metaworld/reach-v3", check_installed=False).render == "fast"
    monkeypatch.setenv("WM_HARNESS_RENDER", "pretty")
    with pytest.raises(HarnessError, match=r"\$WM_HARNESS_RENDER 'pretty' is not a render mode: use faithful or fast"):
        resolve_env_options("metaworld/reach-v3", check_installed=False)
    with pytest.raises(HarnessError, match="--render 'pretty' is not a render mode"):
        EvalConfig(env="metaworld/reach-v3", render="pretty")


@pytest.mark.skipif(importlib.util.find_spec("metaworld") is None, reason='Meta-World not installed: pip install -e ".[metaworld]"')
def test_a_render_that_contradicts_the_world_models_training_frames_is_refused(tmp_path):
    from harness.errors import HarnessError
    from harness.run.config import EvalConfig
    from harness.run.evaluate import plan_eval

    cfg = EvalConfig(env="metaworld/reach-v3", policies=("random",), episodes=1, cameras=("corner2",), image_size=64,
                     wm="minivae_dit_tiny", render="faithful", out=str(tmp_path / "run"))
    with pytest.raises(HarnessError, match="learned from frames rendered 'fast'; this run renders 'faithful'"):
        plan_eval(cfg)
