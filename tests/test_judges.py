"""Judges: spec parsing, the oracle, a tiny random Qwen2.5-VL judge, consensus with rater kappa,
the latent success classifier (synthetic data and Meta-World rollouts), train-judge and judge-eval."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.judges import JUDGES, as_env_judge, make_judge, parse_judge_spec, verdict
from harness.judges.base import sample_frame_indices
from harness.stats.agreement import cohen_kappa
from tests.conftest import ROOT, requires_metaworld, run_cli

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRANSFORMERS = HAS_TORCH and importlib.util.find_spec("transformers") is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason='torch not installed: pip install -e ".[models]"')
requires_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason='transformers not installed: pip install -e ".[models]"')


# --- specs and the oracle ------------------------------------------------------------------------
def test_registry_and_spec_parsing():
    assert {"oracle", "vlm", "consensus", "latent_classifier"} <= set(JUDGES.names())
    s = parse_judge_spec("vlm:path=/models/q,frames=4,samples=3,vote=mean")
    assert s.name == "vlm" and s.params == {"path": "/models/q", "frames": 4, "samples": 3, "vote": "mean"}
    # consensus: `judges=` takes the rest, the raters' own commas and colons included
    s = parse_judge_spec("consensus:vote=majority,judges=vlm:path=A,frames=4+latent_classifier:path=B")
    assert s.params == {"vote": "majority", "judges": "vlm:path=A,frames=4+latent_classifier:path=B"}
    assert parse_judge_spec("consensus:judges=oracle+oracle").params == {"judges": "oracle+oracle"}
    with pytest.raises(HarnessError, match="Did you mean 'latent_classifier'"):
        parse_judge_spec("latent_clasifier:path=x")
    with pytest.raises(HarnessError, match="has no parameter 'frame'.*frames"):
        parse_judge_spec("vlm:frame=3")
    with pytest.raises(HarnessError, match="not key=value"):
        parse_judge_spec("vlm:path")
    with pytest.raises(HarnessError, match="has no parameter 'encoder'"):
        parse_judge_spec("latent_classifier:encoder=x")  # context, not a spec parameter


def test_oracle():
    judge = make_judge("oracle")
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    assert verdict(judge, frames, "x", success=[False, True, False]) == (1.0, True)
    assert verdict(judge, frames, "x", success=[False, False]) == (0.0, False)
    assert judge.needs_success and not judge.needs_latents
    with pytest.raises(HarnessError, match="only for simulator rollouts"):
        judge.score(frames, "x")
    with pytest.raises(HarnessError, match="cannot judge world-model rollouts"):
        as_env_judge(judge)


def test_sample_frame_indices():
    assert sample_frame_indices(5, 8, 0, 3) == [0, 1, 2, 3, 4]
    grids = [sample_frame_indices(100, 8, k, 3) for k in range(3)]
    for g in grids:
        assert len(g) == 8 and g[-1] == 99 and g == sorted(g)
    assert grids[0][0] == 0 and grids[1] != grids[0] != grids[2]  # the samples see different frames
    assert sample_frame_indices(10, 1, 0, 1) == [9]


class ScriptedJudge:
    """A test double: returns the given scores in turn."""

    needs_latents = False
    needs_success = False

    def __init__(self, scores, label):
        self.scores, self.label, self.threshold = list(scores), label, 0.5

    def score(self, frames, instruction, latents=None, *, success=None):
        return self.scores.pop(0)


def test_consensus_votes_and_rater_kappa():
    from harness.judges.consensus import ConsensusJudge

    a = [0.9, 0.2, 0.8, 0.1, 0.6, 0.3]
    b = [0.7, 0.4, 0.3, 0.2, 0.9, 0.8]
    c = [0.8, 0.1, 0.9, 0.4, 0.2, 0.6]
    judge = ConsensusJudge([ScriptedJudge(a, "A"), ScriptedJudge(b, "B"), ScriptedJudge(c, "C")], vote="majority")
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    got = [judge.score(frames, "x") for _ in a]
    votes = np.array([a, b, c]) >= 0.5
    assert got == pytest.approx(votes.mean(axis=0).tolist())
    ra = judge.rater_agreement()
    assert ra["episodes"] == 6 and [(p["a"], p["b"]) for p in ra["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    expected = [cohen_kappa(votes[i].tolist(), votes[j].tolist()) for i, j in ((0, 1), (0, 2), (1, 2))]
    assert [p["kappa"] for p in ra["pairs"]] == pytest.approx(expected)
    assert ra["mean_kappa"] == pytest.approx(np.mean(expected))
    mean_judge = ConsensusJudge([ScriptedJudge(a, "A"), ScriptedJudge(b, "B")], vote="mean")
    assert mean_judge.score(frames, "x") == pytest.approx(0.8)
    # from a spec: raters separated by '+'
    spec_judge = make_judge("consensus:vote=majority,judges=oracle+oracle")
    assert len(spec_judge.raters) == 2 and spec_judge.needs_success
    assert spec_judge.score(frames, "x", success=[True]) == 1.0
    with pytest.raises(HarnessError, match="at least 2 raters"):
        make_judge("consensus:judges=oracle")
    with pytest.raises(HarnessError, match="empty rater"):
        make_judge("consensus:judges=oracle++oracle")


# --- the VLM judge on a tiny random Qwen2.5-VL --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    if not HAS_TRANSFORMERS:
        pytest.skip('transformers not installed: pip install -e ".[models]"')
    import torch

    from harness.judges.testing import build_tiny_qwen2_5_vl

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend on a shared CPU
    yield build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen"))
    torch.set_num_threads(threads)


def _frames(seed=0, t=12, size=64):
    return (np.random.default_rng(seed).random((t, size, size, 3)) * 255).astype(np.uint8)


@requires_transformers
def test_vlm_judge_tiny_qwen(tiny_vlm, monkeypatch):
    import torch

    from harness.judges.vlm import PROMPTS, format_prompt

    judge = make_judge(f"vlm:path={tiny_vlm},frames=3,samples=3")
    be = judge.backend
    tok = be.tokenizer
    # the answer tokens are the ones that spell yes / no, first the bare lowercase word
    assert be.yes_ids[0] == tok.convert_tokens_to_ids("yes") and be.no_ids[0] == tok.convert_tokens_to_ids("no")
    assert {tok.decode([i]).strip().lower() for i in be.yes_ids} == {"yes"}
    assert {tok.decode([i]).strip().lower() for i in be.no_ids} == {"no"}
    assert tok.convert_tokens_to_ids("Ġyes") in be.yes_ids

    frames = _frames()
    p = judge.score(frames, "reach the goal position")
    assert 0.0 <= p <= 1.0
    detail = judge.last
    assert len(detail["samples"]) == 3 and all(0.0 <= s["p_yes"] <= 1.0 for s in detail["samples"])
    assert p == pytest.approx(np.mean([s["p_yes"] >= 0.5 for s in detail["samples"]]))  # majority: vote share
    assert judge.score(frames, "reach the goal position") == p  # deterministic
    assert make_judge(f"vlm:path={tiny_vlm},frames=3,samples=3").score(frames, "reach the goal position") == p

    # P(yes) is the yes/no softmax of the last-position logits; the prompt holds every image's tokens
    images = [frames[i] for i in detail["samples"][0]["frames"]]
    prompt = format_prompt(PROMPTS[0], len(images), "reach the goal position")
    inputs = be.inputs(images, prompt)
    n_image_tokens = int((inputs["input_ids"] == tok.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod(-1).sum()) // 4
    assert "reach the goal position" in tok.decode(inputs["input_ids"][0])
    with torch.no_grad():
        logits = be.model(**inputs).logits[0, -1]
    yes, no = torch.logsumexp(logits[be.yes_ids], 0), torch.logsumexp(logits[be.no_ids], 0)
    assert detail["samples"][0]["p_yes"] == pytest.approx(float(torch.exp(yes) / (torch.exp(yes) + torch.exp(no))), abs=1e-5)

    # a logit bias toward "yes" (then "no") flips the verdict
    head = be.model.lm_head
    original = head.forward

    def biased(bias):
        def forward(x):
            out = original(x)
            out[..., be.yes_ids] += bias
            return out
        return forward

    monkeypatch.setattr(head, "forward", biased(30.0))
    assert verdict(judge, frames, "reach the goal position") == (1.0, True)
    monkeypatch.setattr(head, "forward", biased(-30.0))
    assert verdict(judge, frames, "reach the goal position") == (0.0, False)
    mean_judge = make_judge(f"vlm:path={tiny_vlm},frames=2,samples=1,vote=mean")
    assert mean_judge.score(frames, "x") < 1e-6


@requires_transformers
def test_vlm_judge_errors(tmp_path, tiny_vlm):
    missing = tmp_path / "no_such_model"
    with pytest.raises(HarnessError, match=f"not found at '{missing}'.*vlm:path=DIR"):
        make_judge(f"vlm:path={missing}")
    with pytest.raises(HarnessError, match="not in the Hugging Face cache"):
        make_judge("vlm:path=nobody/no-such-vlm")
    with pytest.raises(HarnessError, match="frames must be"):
        make_judge(f"vlm:path={tiny_vlm},frames=0")
    with pytest.raises(HarnessError, match="vote must be one of"):
        make_judge(f"vlm:path={tiny_vlm},vote=loudest")
    judge = make_judge(f"vlm:path={tiny_vlm},frames=2,samples=1")
    with pytest.raises(HarnessError, match="uint8"):
        judge.score(np.zeros((2, 8, 8), np.uint8), "x")
    r = run_cli("judge-eval", "--judge", f"vlm:path={missing}", "--data", str(tmp_path / "none.h5"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such file" in r.stderr


def _minivae_spec():
    return json.loads((ROOT / "checkpoints" / "minivae_dit_tiny" / "config.json").read_text())["encoder"]


def test_judges_that_cannot_judge_a_world_model_rollout_fail_before_the_run():
    pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')  # loads classifiers
    from harness.run.matched import validate_judge

    shipped = ROOT / "checkpoints"
    minivae = _minivae_spec()
    for spec, message in [
        ("oracle", "--judge oracle reads the simulator's own success flags"),
        ("consensus:judges=oracle", "consensus needs at least 2 raters, got 1"),
        ("consensus:judges=oracle+latent_classifier:path=X", "--judge oracle reads"),
        ("consensus:judges=nobody+latent_classifier:path=X", "unknown judge 'nobody'"),
        ("consensus:vote=loudest,judges=oracle+oracle", "vote must be one of"),
        ("latent_classifier", "judge 'latent_classifier' needs path"),
        (f"latent_classifier:path={shipped / 'minijepa_dit_tiny' / 'judge'}",
         "was trained on latents of minijepa .*this world model's encoder is 'minivae'"),
    ]:
        with pytest.raises(HarnessError, match=message):
            validate_judge(spec, minivae)
    judge = f"latent_classifier:path={shipped / 'minivae_dit_tiny' / 'judge'}"
    validate_judge(judge, minivae)
    validate_judge(f"consensus:judges={judge}+{judge}", minivae)
    moved = {**minivae, "params": {**minivae["params"], "path": "/elsewhere"}}  # only where weights sat differs
    validate_judge(judge, moved)


def test_a_classifier_for_other_encoder_weights_fails_before_the_run(tmp_path):
    import shutil

    pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

    from harness.run.matched import validate_judge
    from world_models.named import load_world_model

    other = tmp_path / "judge"  # the same kind of encoder, other weights (e.g. a re-trained one)
    shutil.copytree(ROOT / "checkpoints" / "minivae_dit_tiny" / "judge", other)
    config = json.loads((other / "config.json").read_text())
    config["encoder"]["identity"]["weights_sha256"] = "0" * 64
    (other / "config.json").write_text(json.dumps(config))
    encoder = load_world_model("minivae_dit_tiny").encoder
    validate_judge(f"latent_classifier:path={other}", _minivae_spec())  # the settings alone agree
    with pytest.raises(HarnessError, match="weights 000000000000\\); these latents come from minivae .*weights 13ac338c21fc"):
        validate_judge(f"latent_classifier:path={other}", _minivae_spec(), lambda: encoder)
    with pytest.raises(HarnessError, match="these latents come from"):
        validate_judge(f"consensus:judges=latent_classifier:path={other}+latent_classifier:path="
                       f"{ROOT / 'checkpoints' / 'minivae_dit_tiny' / 'judge'}", _minivae_spec(), lambda: encoder)
    validate_judge(f"latent_classifier:path={ROOT / 'checkpoints' / 'minivae_dit_tiny' / 'judge'}", _minivae_spec(),
                   lambda: encoder)


@requires_transformers
def test_a_vlm_judge_without_weights_fails_before_the_run(tmp_path, tiny_vlm):
    from harness.run.matched import validate_judge

    missing = tmp_path / "no_such_model"
    for spec, message in [
        (f"vlm:path={missing}", f"not found at '{missing}'"),
        (f"consensus:judges=vlm:path={tiny_vlm}+vlm:path={missing}", f"not found at '{missing}'"),
        (f"consensus:judges=oracle+vlm:path={tiny_vlm}", "--judge oracle reads"),
        (f"vlm:path={tiny_vlm},frames=0", "frames must be"),
    ]:
        with pytest.raises(HarnessError, match=message):
            validate_judge(spec, _minivae_spec())
    validate_judge(f"consensus:judges=vlm:path={tiny_vlm}+latent_classifier:path="
                   f"{ROOT / 'checkpoints' / 'minivae_dit_tiny' / 'judge'}", _minivae_spec())


# --- the latent classifier on synthetic rollouts ------------------------------------------------
def _synthetic_dataset(path, episodes=16, steps=10, seed=0):
    """Rollouts whose success is visible: from the success step on, a white square sits somewhere
    in the upper half of the frame; failed episodes never show it."""
    from harness.data.dataset import DatasetWriter, EpisodeData

    rng = np.random.default_rng(seed)
    with DatasetWriter(path) as w:
        for e in range(episodes):
            succeed = e % 2 == 0
            at = int(rng.integers(3, steps - 2)) if succeed else steps + 1
            frames = (rng.random((steps + 1, 64, 64, 3)) * 80 + 40).astype(np.uint8)
            x, y = int(rng.integers(4, 40)), int(rng.integers(4, 20))
            for k in range(at, steps + 1):
                frames[k, y:y + 20, x:x + 20] = 255
            success = np.array([k + 1 >= at for k in range(steps)])
            w.add(EpisodeData(actions=np.zeros((steps, 4), np.float32), obs={"cam_rgb": frames[:-1]},
                              final_obs={"cam_rgb": frames[-1:]}, success=success,
                              attrs={"env_id": "synthetic/square", "instruction": "show the square",
                                     "init_state": e, "policy": "synthetic", "success": bool(success.any())}))
    return path


@pytest.fixture(scope="module")
def minivae_folder(tmp_path_factory):
    if not HAS_TORCH:
        pytest.skip('torch not installed: pip install -e ".[models]"')
    import torch

    from world_models.encoders import build_encoder, save_encoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("minivae") / "enc"
    save_encoder(folder, build_encoder({"name": "minivae", "params": {"image_size": 64}}))
    return folder


@requires_torch
def test_latent_classifier_synthetic(tmp_path, minivae_folder):
    import torch

    from harness.judges.latent_classifier import (
        JudgeTrainConfig,
        episode_score,
        iter_rollouts,
        train_success_classifier,
    )
    from world_models.encoders import build_encoder, load_encoder

    data = _synthetic_dataset(tmp_path / "square.h5")
    out = tmp_path / "clf"
    r = train_success_classifier(JudgeTrainConfig(data=(str(data),), out=str(out), encoder="minivae", threads=1,
                                                  encoder_path=str(minivae_folder), heldout=0.5, steps=200))
    held = r["heldout"]
    assert held["episodes"] == 8 and held["chance_accuracy"] == 0.5
    assert held["accuracy"] > held["chance_accuracy"] and held["kappa"] > 0.0

    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "wm-harness-success-classifier/1"
    assert config["encoder"]["identity"]["name"] == "minivae" and len(config["encoder"]["identity"]["weights_sha256"]) == 64
    assert set(config["train"]["heldout_episodes"]).isdisjoint(config["train"]["train_episodes"])

    # the judge loads its own encoder from the recorded source, or takes the same one as context
    judge = make_judge(f"latent_classifier:path={out}")
    enc = load_encoder("minivae", str(minivae_folder))
    same = make_judge(f"latent_classifier:path={out}", encoder=enc)
    for _, frames, _, _, _ in iter_rollouts([str(data)], None, limit=4):
        p = judge.score(frames, "show the square")
        z = enc.encode(frames[None])[0].numpy()
        assert same.score(None, "show the square", z) == pytest.approx(p)
        assert p == pytest.approx(episode_score(judge.frame_probabilities(z), config["window"]))
    # another encoder's latents are refused with one line; so are latents of the wrong shape
    torch.manual_seed(1)
    other = build_encoder({"name": "minivae", "params": {"image_size": 64}})
    with pytest.raises(HarnessError, match="was trained on latents of minivae.*weights"):
        make_judge(f"latent_classifier:path={out}", encoder=other)
    with pytest.raises(HarnessError, match="expects latents"):
        judge.score(None, "x", np.zeros((3, 4, 7), np.float32))
    assert episode_score(np.array([0.0, 1.0, 0.0, 0.0]), 3) == pytest.approx(1 / 3)  # one noisy frame
    assert episode_score(np.array([0.0, 1.0, 1.0, 1.0]), 3) == pytest.approx(1.0)
    # a missing checkpoint says how to make one
    with pytest.raises(HarnessError, match="harness train-judge"):
        make_judge(f"latent_classifier:path={tmp_path / 'nothing'}")


@requires_torch
def test_world_model_replays_follow_the_recorded_actions_at_the_world_models_rate():
    from harness.judges.latent_classifier import EncodedEpisode, frame_labels, world_model_replays

    class AddActions:  # z_next = z_last + sum of the f * A actions, a known world model
        frameskip, history, env_action_dim = 2, 1, 4

        def predict(self, ctx, a, generator=None):
            assert len(generator) == ctx.shape[0]  # one noise stream per replay
            return ctx[:, -1:] + a.sum(-1)[..., None, None]

    episodes = []
    for i in range(3):  # actions with a known sum per control step
        success = np.array([False] * 4 + [True] * 3)
        acts = np.arange(7 * 4, dtype=np.float32).reshape(7, 4) * (i + 1) / 100
        episodes.append(EncodedEpisode(f"data.h5#demo_{i}", np.full((8, 2, 3), float(i), np.float32),
                                       frame_labels(success, 8), True, {}, acts))
    out = world_model_replays(AddActions(), episodes, batch=2)  # two batches: 2 + 1 episodes
    assert [e.source for e in out] == [e.source + "@wm" for e in episodes]
    for i, r in enumerate(out):
        acts = np.arange(28, dtype=np.float32).reshape(7, 4) * (i + 1) / 100
        z = [float(i)]
        for k in range(1, 8):  # a new frame after every 2nd action, the last one held in between
            z.append(z[-1] + float(acts[k - 2:k].sum()) if k % 2 == 0 else z[-1])
        assert r.latents.shape == (8, 2, 3)
        assert np.allclose(r.latents[:, 0, 0], z, atol=1e-5)
        assert np.array_equal(r.labels, episodes[i].labels) and r.success


@requires_torch
def test_judge_trained_with_world_model_replays_reports_them(tmp_path):
    import torch

    from harness.judges.latent_classifier import JudgeTrainConfig, train_success_classifier
    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import build_encoder
    from world_models.world_model import SamplerConfig, WorldModel

    torch.manual_seed(0)
    enc = build_encoder({"name": "minivae", "params": {"image_size": 64, "dim": 8, "channels": [8, 8, 8, 8]}})
    dit = DiT(DiTConfig(latent_dim=8, num_tokens=enc.num_tokens, action_dim=8, width=32, depth=1, heads=2))
    WorldModel(enc, dit, None, torch.zeros(8), torch.ones(8), SamplerConfig(steps=2),
               {"camera": "cam_rgb", "frameskip": 2}, torch.zeros(8), torch.ones(8)).save(tmp_path / "wm")
    data = _synthetic_dataset(tmp_path / "square.h5", episodes=8, steps=8)
    with pytest.raises(HarnessError, match="--wm-replays needs --wm"):
        JudgeTrainConfig(data=(str(data),), out=str(tmp_path / "x"), encoder="minivae", wm_replays=True)
    r = train_success_classifier(JudgeTrainConfig(data=(str(data),), out=str(tmp_path / "clf"), wm="minivae_dit_tiny",
                                                  wm_checkpoint=str(tmp_path / "wm"), wm_replays=True, heldout=0.5,
                                                  steps=30, threads=1))
    assert r["train_replays"]["episodes"] == 4 and r["heldout_replays"]["episodes"] == 4
    assert r["frames"] == 2 * 4 * 9  # real and replayed frames of the 4 training episodes
    assert 0.0 <= r["threshold"] <= 1.0 and r["threshold_source"] == "calibrated on the training episodes"
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["train"]["wm_replays"] is True and config["threshold"] == r["threshold"]


@requires_torch
def test_episode_threshold_calibration_maximises_balanced_accuracy():
    from harness.judges.latent_classifier import calibrate_threshold

    # failures score high (a max over time), successes higher: 0.5 calls everything a success
    scores = [0.95, 0.97, 0.99, 0.6, 0.8, 0.9, 0.92]
    truth = [True, True, True, False, False, False, False]
    t = calibrate_threshold(scores, truth)
    assert t == pytest.approx((0.92 + 0.95) / 2)
    assert [s >= t for s in scores] == truth
    # with overlap it keeps the best balanced accuracy: at 0.2 all 3 successes and 1 of 2
    # failures are right (0.75); at 0.85 1 of 3 and 2 of 2 (0.67); at 0.5 2 of 3 and 1 of 2 (0.58)
    t2 = calibrate_threshold([0.3, 0.7, 0.9, 0.8, 0.1], [True, True, True, False, False])
    assert t2 == pytest.approx(0.2)
    assert calibrate_threshold([0.2, 0.9], [True, True]) == 0.5  # one outcome only: nothing to calibrate


def test_train_judge_input_errors(tmp_path, minivae_folder):
    from harness.judges.latent_classifier import JudgeTrainConfig, train_success_classifier

    data = str(_synthetic_dataset(tmp_path / "d.h5", episodes=2, steps=6))
    out = str(tmp_path / "o")
    for kwargs, message in [
        ({"data": (str(tmp_path / "missing.h5"),), "encoder": "minivae"}, "no such file"),
        ({"data": (data,)}, "exactly one of --wm"),
        ({"data": (data,), "encoder": "minivae", "wm": "minivae_dit_tiny"}, "exactly one of --wm"),
        ({"data": (data,), "encoder": "minivae", "heldout": 1.5}, "--heldout"),
        ({"data": (data,), "encoder": "minivae", "steps": 0}, "--steps"),
    ]:
        with pytest.raises(HarnessError, match=message):
            JudgeTrainConfig(out=out, **kwargs)
    run = tmp_path / "run"  # an eval run folder given as --out by mistake: refused before training
    run.mkdir()
    (run / "episodes.jsonl").write_text('{"policy": "p"}\n')
    with pytest.raises(HarnessError, match="exists and is not a checkpoint folder, which saving would replace"):
        JudgeTrainConfig(out=str(run), data=(data,), encoder="minivae")
    assert [p.name for p in run.iterdir()] == ["episodes.jsonl"]
    with pytest.raises(HarnessError, match="no camera 'top'; its cameras: cam"):
        train_success_classifier(JudgeTrainConfig(data=(data,), out=out, encoder="minivae",
                                                  encoder_path=str(minivae_folder), camera="top", threads=1))
    # through the CLI: one line, exit code 2
    r = run_cli("train-judge", "--data", data, "--encoder", "minivae", "--out", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs its weights" in r.stderr, r.stderr


# --- Meta-World: scripted vs random rollouts, train-judge and judge-eval through the CLI ----------
@pytest.mark.slow
@requires_metaworld
@requires_torch
def test_latent_classifier_on_metaworld_rollouts(tmp_path, minivae_folder):
    """Collect reach-v3 rollouts of the scripted expert and of the random policy (64 px), train the
    classifier on a frozen random minivae through the CLI, and check it beats chance on held-out
    episodes; then judge-eval the oracle (exact by construction) and the classifier."""
    common = ["--env", "metaworld/reach-v3", "-n", "6", "--max-steps", "60", "--image-size", "64",
              "--no-stop-on-success", "--no-progress"]
    procs = [subprocess.Popen([sys.executable, "-m", "harness", "collect", *common, "--policy", policy,
                               "--out", str(tmp_path / f"{policy}.h5")], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for policy in ("scripted", "random")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    data = ["--data", str(tmp_path / "scripted.h5"), "--data", str(tmp_path / "random.h5")]
    out = tmp_path / "clf"
    r = run_cli("train-judge", *data, "--encoder", "minivae", "--encoder-path", str(minivae_folder),
                "--out", str(out), "--heldout", "0.34", "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    held = json.loads((out / "config.json").read_text())["train"]["metrics"]["heldout"]
    assert held["episodes"] == 4 and held["tp"] + held["fn"] == 2
    assert held["accuracy"] > held["chance_accuracy"], held

    r = run_cli("judge-eval", "--judge", "oracle", *data, "--out", str(tmp_path / "oracle.json"), "--no-progress")
    assert r.returncode == 0, r.stderr
    oracle = json.loads((tmp_path / "oracle.json").read_text())
    assert oracle["episodes"] == 12 and oracle["accuracy"] == 1.0 and oracle["kappa"] == 1.0
    assert oracle["confusion"]["tp"] == oracle["sim_successes"] > 0
    assert "kappa" in r.stdout and "sim: success" in r.stdout

    r = run_cli("judge-eval", "--judge", f"latent_classifier:path={out}", *data, "--out", str(tmp_path / "clf.json"),
                "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "clf.json").read_text())
    assert res["episodes"] == 12 and len(res["records"]) == 12
    assert res["accuracy"] > 0.5 and res["kappa"] > 0.0
    assert sum(res["confusion"].values()) == 12
