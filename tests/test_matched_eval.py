"""The matched evaluation: every episode in the simulator and in a world model from the same
reset frame; open-loop replay for state-based experts, closed-loop for the others; the
comparison block, side-by-side videos, the HTML report, resume, and the errors at the edge."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

from conftest import HAS_METAWORLD, read_jsonl, run_cli  # noqa: E402

from harness.stats.comparison import compare_backends  # noqa: E402

pytestmark = pytest.mark.skipif(not HAS_METAWORLD, reason='Meta-World not installed: pip install -e ".[metaworld]"')


def _rec(policy, backend, i, success, **kw):
    return {"policy": policy, "backend": backend, "env_id": "metaworld/reach-v3", "init_state": i,
            "outcome": "success" if success else "failure", "success": success, **kw}


def test_comparison_block_against_hand_counts():
    sims = {"good": [1, 1, 1, 0], "mid": [1, 0, 1, 0], "bad": [0, 0, 0, 0]}
    wms = {"good": [1, 1, 0, 0], "mid": [1, 0, 0, 0], "bad": [0, 1, 0, 0]}
    records = []
    for policy in sims:
        for i, (s, w) in enumerate(zip(sims[policy], wms[policy])):
            records.append(_rec(policy, "sim", i, bool(s), judge_success=bool(w)))
            records.append(_rec(policy, "wm:x", i, bool(w), mode="closed_loop", latent_divergence=[0.0, 0.1 * (i + 1)]))
    block = compare_backends(records)["wm:x"]
    e = block["episodes"]
    assert e["n"] == 12 and e["confusion"] == {"tp": 3, "fp": 1, "fn": 2, "tn": 6}
    assert e["accuracy"] == pytest.approx(9 / 12)
    # kappa by hand: p_o = 0.75; sim positive 5/12, wm positive 4/12 -> p_e = (5*4 + 7*8) / 144
    pe = (5 * 4 + 7 * 8) / 144
    assert e["cohen_kappa"] == pytest.approx((0.75 - pe) / (1 - pe))
    assert block["policies"]["good"]["sim"]["success_rate"] == 0.75
    assert block["policies"]["good"]["wm"]["success_rate"] == 0.5
    r = block["ranking"]  # sim (0.75, 0.5, 0) vs wm (0.5, 0.25, 0.25): same order but a tie
    assert r["policies"] == ["bad", "good", "mid"] and r["pearson_r"] == pytest.approx(0.0833333 / np.sqrt(0.2916667 * 0.0416667), rel=1e-4)
    # strict comparisons as SimplerEnv: only mid (sim .5 > bad 0, WM tie) violates, by the gap 0.5
    assert r["mmrv"] == pytest.approx(0.5 / 3)
    # every episode acted closed-loop: no open-loop divergence; the closed-loop one is named apart
    assert block["latent_divergence"] == {"mean": [], "episodes": []}
    assert block["latent_divergence_closed_loop"]["mean"] == pytest.approx([0.0, 0.25])
    assert block["judge_on_sim"]["n"] == 12 and block["modes"] == {"closed_loop": 12}
    # Wilson intervals (not a bootstrap's zero width): 3/4 and 0/4
    assert block["policies"]["good"]["sim"]["ci95"] == pytest.approx([0.3006418, 0.9544127], abs=1e-6)
    assert block["policies"]["bad"]["sim"]["ci95"][0] == 0.0 and block["policies"]["bad"]["sim"]["ci95"][1] > 0.4
    # exact McNemar, simulator vs world model per policy: good has 1 discordant pair -> p = 1
    assert block["policies"]["good"]["mcnemar_sim_vs_wm"] == {"n": 4, "a_only": 1, "b_only": 0, "p_value": 1.0}
    tests = {(t["a"], t["b"]): t for t in block["paired_tests"]["sim"]}
    assert tests[("bad", "good")] == {"a": "bad", "b": "good", "n": 4, "a_only": 0, "b_only": 3, "p_value": 0.25}
    # bootstrap intervals around each figure, with how they were drawn
    for key, value in (("pearson_r", r["pearson_r"]), ("spearman_rho", r["spearman_rho"]), ("mmrv", r["mmrv"])):
        lo, hi = r[f"{key}_ci95"]
        assert lo <= value <= hi and (key == "mmrv" or -1.0 <= lo) and hi <= 1.0
    lo, hi = e["accuracy_ci95"]
    assert lo < e["accuracy"] < hi
    assert block["bootstrap"]["resamples"] == 2000 and block["bootstrap"]["seed"] == 0
    assert compare_backends(records) == compare_backends(records)  # seeded: the same intervals every time
    assert compare_backends([_rec("a", "sim", 0, True)]) == {}


def test_open_loop_divergence_counts_only_replays_and_constant_raters_have_no_kappa():
    records = []
    for i in range(3):  # a policy that always fails in both backends, replayed open-loop
        records.append(_rec("never", "sim", i, False))
        records.append(_rec("never", "wm:x", i, False, mode="open_loop_replay", latent_divergence=[0.0, 0.2]))
        records.append(_rec("loop", "sim", i, i == 0))
        records.append(_rec("loop", "wm:x", i, i == 0, mode="closed_loop", latent_divergence=[0.0, 0.8]))
    block = compare_backends(records)["wm:x"]
    d, closed = block["latent_divergence"], block["latent_divergence_closed_loop"]
    assert d["mean"] == pytest.approx([0.0, 0.2]) and d["episodes"] == [3, 3]
    assert closed["mean"] == pytest.approx([0.0, 0.8]) and closed["episodes"] == [3, 3]
    never = block["policies"]["never"]["agreement"]
    assert never["accuracy"] == 1.0 and never["cohen_kappa"] is None  # undefined, not a perfect 1.0
    assert block["policies"]["loop"]["agreement"]["cohen_kappa"] == 1.0


@pytest.fixture(scope="module")
def wm_with_judge(tmp_path_factory):
    """A tiny world model (random minivae, DiT width 32) with a success classifier on its latents."""
    from harness.judges.latent_classifier import JudgeTrainConfig, train_success_classifier
    from world_models.dit import DiT, DiTConfig
    from world_models.encoders import ENCODERS
    from world_models.world_model import SamplerConfig, WorldModel

    root = tmp_path_factory.mktemp("matched")
    data = root / "reach.h5"
    r = run_cli("collect", "--env", "metaworld/reach-v3", "-p", "scripted", "-p", "random", "-n", "3",
                "--first-init-state", "100", "--max-steps", "40", "--image-size", "64", "--no-stop-on-success",
                "--out", str(data), "--no-progress")
    assert r.returncode == 0, r.stderr
    torch.manual_seed(0)
    enc = ENCODERS.build("minivae", channels=[8, 16, 16, 16])
    D, f = enc.dim, 4
    dit = DiT(DiTConfig(latent_dim=D, num_tokens=enc.num_tokens, action_dim=f * 4, width=32, depth=2, heads=2))
    wm = WorldModel(enc, dit, None, torch.zeros(D), torch.ones(D), SamplerConfig(steps=2),
                    {"camera": "corner2", "frameskip": f}, torch.zeros(D), torch.ones(D))
    ckpt = root / "wm"
    wm.save(ckpt)
    train_success_classifier(JudgeTrainConfig(data=(str(data),), out=str(ckpt / "judge"), wm="minivae_dit_tiny",
                                              wm_checkpoint=str(ckpt), steps=40, threads=1))
    return ckpt


def test_matched_run_writes_both_outcomes_comparison_videos_and_report(wm_with_judge, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--env", "metaworld/reach-v3", "-p", "scripted", "-p", "random", "-n", "2", "--max-steps", "24",
            "--image-size", "64", "--wm", "minivae_dit_tiny", "--wm-checkpoint", str(wm_with_judge),
            "--video", "all", "--out", str(out), "--no-progress"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    records = read_jsonl(out / "episodes.jsonl")
    assert len(records) == 8
    by = {(x["policy"], x["backend"], x["init_state"]): x for x in records}
    for i in range(2):
        sim, wm = by[("scripted", "sim", i)], by[("scripted", "wm:minivae_dit_tiny", i)]
        assert wm["mode"] == "open_loop_replay" and wm["sim_success"] == sim["success"]
        assert wm["length"] <= sim["length"]  # the simulator's actions, or fewer when the judge stops it
        assert wm["latent_divergence"][0] == pytest.approx(0.0, abs=1e-6)  # the shared reset frame
        assert 0.0 <= wm["judge_score"] <= 1.0 and "judge_score" in sim
        assert by[("random", "wm:minivae_dit_tiny", i)]["mode"] == "closed_loop"
        # the video shows both rollouts: written when the world-model episode ends, named by its record
        assert sim["video"] is None and (out / wm["video"]).exists()
    summary = json.loads((out / "results.json").read_text())
    block = summary["comparison"]["wm:minivae_dit_tiny"]
    assert block["episodes"]["n"] == 4 and block["judge"].startswith("latent_classifier:path=")
    assert set(block["policies"]) == {"scripted", "random"} and "pearson_r" in block["ranking"]
    assert "World model vs simulator" in r.stdout and "Pearson r" in r.stdout
    import imageio.v3 as iio

    frame = iio.imread(out / next(x["video"] for x in records if x["video"]), index=0)
    assert frame.shape[1] > 2 * 64  # simulator | world model side by side

    again = run_cli(*args)  # resume: everything is done, nothing is added
    assert again.returncode == 0 and len(read_jsonl(out / "episodes.jsonl")) == 8

    rep = run_cli("report", str(out))
    assert rep.returncode == 0, rep.stderr
    page = (out / "report.html").read_text()
    assert "World model vs simulator" in page and page.count("data:image/png;base64") >= 3 and "<video" in page


def test_a_matched_run_through_the_distilled_decoder_changes_only_the_pixels(wm_with_judge, tmp_path):
    import shutil

    import imageio.v3 as iio

    from world_models.distill import DISTILLED_DIR, save_distilled_decoder
    from world_models.pixel_decoder import PixelDecoder
    from world_models.world_model import WorldModel

    ckpt = tmp_path / "wm"
    shutil.copytree(wm_with_judge, ckpt)
    wm = WorldModel.load(ckpt)
    torch.manual_seed(1)  # an untrained distilled decoder: its pixels are surely not the full decoder's
    save_distilled_decoder(PixelDecoder(wm.encoder.dim, wm.encoder.grid, wm.image_size, 16, arch="shuffle"), wm,
                           ckpt / DISTILLED_DIR)
    runs = {}
    for decoder in ("full", "distilled"):
        out = tmp_path / decoder
        r = run_cli("eval", "--env", "metaworld/reach-v3", "-p", "scripted", "-p", "random", "-n", "2",
                    "--max-steps", "16", "--image-size", "64", "--wm", "minivae_dit_tiny", "--wm-checkpoint",
                    str(ckpt), "--wm-decoder", decoder, "--video", "all", "--out", str(out), "--no-progress")
        assert r.returncode == 0, r.stderr
        runs[decoder] = {(x["policy"], x["backend"], x["init_state"]): x for x in read_jsonl(out / "episodes.jsonl")}
        identity = json.loads((out / "run.json").read_text())
        assert identity.get("wm_decoder") == (None if decoder == "full" else "distilled")
    full, dist = runs["full"], runs["distilled"]
    assert set(full) == set(dist) and len(full) == 8
    for key, rec in full.items():
        if key[1].startswith("wm:"):  # pixel-free policies and a latent judge: the same latents, same verdicts
            assert dist[key]["latent_divergence"] == pytest.approx(rec["latent_divergence"])
            assert dist[key]["success"] == rec["success"] and dist[key]["length"] == rec["length"]
    key = ("random", "wm:minivae_dit_tiny", 0)
    a = iio.imread(tmp_path / "full" / full[key]["video"], index=3)
    b = iio.imread(tmp_path / "distilled" / dist[key]["video"], index=3)
    half = a.shape[1] // 2
    assert np.abs(a[:, :half].astype(int) - b[:, :half].astype(int)).mean() < 3  # the simulator's half: alike
    assert np.abs(a[:, half:].astype(int) - b[:, half:].astype(int)).mean() > 10  # the world model's half differs


@pytest.mark.parametrize("extra, needle", [
    (["--judge", "oracle"], "cannot judge a world-model rollout"),
    (["--camera", "topview"], "models camera 'corner2'"),
    (["--judge", "nope"], "Available"),
])
def test_matched_errors_are_one_line_before_anything_runs(wm_with_judge, tmp_path, extra, needle):
    out = tmp_path / "run"
    r = run_cli("eval", "--env", "metaworld/reach-v3", "-p", "random", "-n", "1", "--wm", "minivae_dit_tiny",
                "--wm-checkpoint", str(wm_with_judge), "--out", str(out), *extra)
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_judge_without_world_model_is_refused(tmp_path):
    r = run_cli("eval", "--env", "metaworld/reach-v3", "-p", "random", "-n", "1", "--judge", "oracle",
                "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "--wm" in r.stderr


def test_side_by_side_video_frames():
    from harness.report.video import side_by_side

    sim = [np.zeros((32, 32, 3), np.uint8)] * 3
    wm = [np.full((16, 16, 3), 200, np.uint8)] * 2
    frames = side_by_side(sim, wm, "reach the goal", ("SUCCESS", True), ("judged FAILURE", False), "scripted")
    assert len(frames) == 3 and len({f.shape for f in frames}) == 1
    assert frames[0].shape[1] >= 2 * 32
