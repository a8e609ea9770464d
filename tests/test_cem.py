"""CEM planner: one batched world-model call per iteration, converges on a known linear world
model, presets valid, policy spec validation, and MPC through a world model checkpoint. The
dino_wm, vjepa2_ac and cpu presets' update rules against values computed by hand from the
candidates they scored on a known linear world model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

from harness.errors import HarnessError  # noqa: E402
from policies.cem import CEM_PRESETS, CEMConfig, cem_plan, goal_cost  # noqa: E402
from world_models.proprio import ProprioReadout  # noqa: E402


class LinearWM:
    """z_{k+1} = z_k + a_k @ B per token (a known world model): the best plan is exact."""

    history, frameskip = 1, 1

    def __init__(self, A=2, N=3, D=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.action_dim = self.env_action_dim = A
        self.B = torch.randn(A, D, generator=g)
        self.N, self.D = N, D
        self.calls = []

    def normalize(self, z):
        return z

    def predict(self, latents, actions, generator=None, steps=None, temperature=None):
        self.calls.append(tuple(actions.shape))
        z = latents[:, -1]  # (S, N, D)
        out = []
        for k in range(actions.shape[1]):
            z = z + (actions[:, k] @ self.B)[:, None, :]
            out.append(z)
        return torch.stack(out, dim=1)


def test_one_batched_call_per_iteration_with_300_samples():
    wm = LinearWM()
    cfg = CEMConfig(samples=300, elites=30, iterations=7, horizon=3, execute=3)
    ctx = torch.zeros(1, 1, wm.N, wm.D)
    plan, diag = cem_plan(wm, ctx, torch.ones(wm.N, wm.D), cfg)
    assert len(wm.calls) == 7 == diag["calls"]
    assert all(c == (300, 3, 2) for c in wm.calls)  # every candidate of an iteration in ONE call
    assert plan.shape == (3, 2)


def test_chunking_only_bounds_memory():
    wm = LinearWM()
    cfg = CEMConfig(samples=300, elites=30, iterations=2, horizon=1, execute=1, max_batch=128)
    cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.ones(wm.N, wm.D), cfg)
    assert [c[0] for c in wm.calls] == [128, 128, 44, 128, 128, 44]


def test_cem_finds_the_action_that_reaches_a_known_goal():
    wm = LinearWM(seed=1)
    a_true = np.array([0.6, -0.3], np.float32)
    goal = (torch.as_tensor(a_true) @ wm.B)[None].expand(wm.N, wm.D)  # one step of a_true from zero
    cfg = CEMConfig(samples=200, elites=20, iterations=12, horizon=1, execute=1, init_std=0.5)
    plan, diag = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, cfg)
    assert np.abs(plan[0] - a_true).max() < 0.05
    assert diag["best_cost"][-1] < diag["best_cost"][0]
    assert diag["elite_std"][-1] < diag["elite_std"][0]  # the distribution narrows


def test_hold_samples_one_env_action_per_world_model_step_and_holds_it():
    wm = LinearWM(A=4, seed=3)
    wm.frameskip, wm.env_action_dim = 2, 2  # the world model's 4-D action = 2 control steps of 2-D
    a_true = np.array([0.7, -0.4], np.float32)
    goal = (torch.as_tensor(np.tile(a_true, 2)) @ wm.B)[None].expand(wm.N, wm.D)  # a_true held for 2 steps
    cfg = CEMConfig(samples=200, elites=20, iterations=12, horizon=1, execute=1, init_std=0.5, hold=True)
    calls = []

    def predict(ctx, actions, **kw):
        calls.append(actions.clone())
        return wm.predict(ctx, actions, **kw)

    plan, _ = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, cfg, predict=predict)
    assert plan.shape == (1, 4)
    assert np.array_equal(plan[0, :2], plan[0, 2:])  # held
    assert np.abs(plan[0, :2] - a_true).max() < 0.05
    assert all(torch.equal(c[..., :2], c[..., 2:]) for c in calls)  # every candidate held too
    # a warm start of f*A per step is averaged to one env action per step
    plan2, _ = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, replace(cfg, iterations=1, samples=30, elites=3),
                        init_mean=np.array([[0.2, 0.4, 0.6, 0.0]], np.float32), predict=predict)
    assert torch.allclose(calls[-1][0, 0], torch.tensor([0.4, 0.2, 0.4, 0.2]))  # candidate 0 is the mean


def test_temperature_reaches_every_batched_call():
    wm = LinearWM(seed=5)
    seen = []

    def predict(ctx, actions, **kw):
        seen.append(kw["temperature"])
        return wm.predict(ctx, actions, **kw)

    cfg = CEMConfig(samples=16, elites=4, iterations=3, horizon=1, execute=1)
    cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.ones(wm.N, wm.D), cfg, predict=predict)
    cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.ones(wm.N, wm.D), replace(cfg, temperature=1.0), predict=predict)
    assert seen == [0.0] * 3 + [1.0] * 3


def test_pick_best_returns_the_lowest_cost_candidate_seen():
    wm = LinearWM(seed=4)
    goal = (torch.tensor([0.5, 0.5]) @ wm.B)[None].expand(wm.N, wm.D)
    cfg = CEMConfig(samples=32, elites=4, iterations=3, horizon=2, execute=1, pick="best")
    plan, diag = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, cfg)
    z = wm.predict(torch.zeros(1, 1, wm.N, wm.D), torch.as_tensor(plan)[None])
    assert goal_cost(z, goal, "l2", "last").item() == pytest.approx(min(diag["best_cost"]), rel=1e-5)
    mean_plan, _ = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, replace(cfg, pick="mean"))
    assert not np.array_equal(plan, mean_plan)


def test_plan_is_clipped_to_the_action_space_and_deterministic():
    wm = LinearWM(seed=2)
    far = (torch.tensor([5.0, 5.0]) @ wm.B)[None].expand(wm.N, wm.D)  # unreachable inside [-1, 1]
    cfg = CEMConfig(samples=64, elites=8, iterations=5, horizon=2, execute=1)
    p1, _ = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), far, cfg)
    p2, _ = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), far, cfg)
    assert np.array_equal(p1, p2) and p1.min() >= -1 and p1.max() <= 1


def test_goal_cost_l1_l2_last_all():
    z = torch.zeros(2, 2, 1, 1)
    z[1, 0] = 1.0  # candidate 1 is off by 1 at the first frame only
    g = torch.zeros(1, 1)
    assert goal_cost(z, g, "l2", "last").tolist() == [0.0, 0.0]
    assert goal_cost(z, g, "l1", "all").tolist() == pytest.approx([0.0, 1 / 3])  # weights 1, 2


def test_presets_and_bad_configs():
    assert (CEM_PRESETS["dino_wm"].samples, CEM_PRESETS["dino_wm"].elites, CEM_PRESETS["dino_wm"].iterations,
            CEM_PRESETS["dino_wm"].horizon, CEM_PRESETS["dino_wm"].execute) == (300, 30, 30, 5, 5)
    with pytest.raises(HarnessError, match="elites"):
        CEMConfig(samples=10, elites=20)
    with pytest.raises(HarnessError, match="execute"):
        CEMConfig(horizon=2, execute=3)
    with pytest.raises(HarnessError, match="objective"):
        CEMConfig(objective="cosine")
    with pytest.raises(HarnessError, match="precision"):
        CEMConfig(precision="float16")
    with pytest.raises(HarnessError, match="pick"):
        CEMConfig(pick="median")
    with pytest.raises(HarnessError, match="hold"):
        CEMConfig(hold="yes")
    for bad in (-0.5, "hot", True, 11.0):
        with pytest.raises(HarnessError, match="temperature"):
            CEMConfig(temperature=bad)
    assert CEM_PRESETS["cpu"].hold and not CEM_PRESETS["dino_wm"].hold
    for name, bad, message in [("momentum", "abc", "must be a number in [0, 1)"), ("momentum", 1.0, "in [0, 1)"),
                               ("init_std", 0.0, "must be a number > 0"), ("init_std", float("nan"), "> 0"),
                               ("min_std", -0.1, "must be a number >= 0"), ("proprio", "x", "in [0, 100]"),
                               ("sampler_steps", "abc", "an integer in [1, 1000]"), ("sampler_steps", 0, "[1, 1000]")]:
        with pytest.raises(HarnessError) as err:
            CEMConfig(**{name: bad})
        assert str(err.value).startswith(f"CEM {name}={bad!r} ") and message in str(err.value)
    assert CEMConfig(sampler_steps=None, momentum=0.5, init_std=2, min_std=0).momentum == 0.5
    for name, bad, message in [("layout", "xyz", "use free or droid"), ("std_ddof", 2, "must be 0 or 1"),
                               ("std_ddof", True, "must be 0 or 1"), ("momentum_std", 1.0, "in [0, 1)"),
                               ("frame_base", 0, "in (0, 100]"), ("maxnorm", 0.0, "> 0"),
                               ("gripper_clip", -1, "> 0"), ("gripper_deadband", -0.1, ">= 0"),
                               ("keep_mean", "yes", "true or false"), ("clip", 1, "true or false"),
                               ("warm_start", None, "true or false")]:
        with pytest.raises(HarnessError) as err:
            CEMConfig(**{name: bad})
        assert str(err.value).startswith(f"CEM {name}={bad!r}") and message in str(err.value)
    with pytest.raises(HarnessError, match="elites=1 must exceed std_ddof=1"):
        CEMConfig(samples=4, elites=1, std_ddof=1)


def test_bfloat16_planning_runs_the_world_model_in_bfloat16():
    from test_world_models import tiny_wm

    wm = tiny_wm()
    seen = []

    def predict(*args, **kw):
        seen.append(kw.get("dtype"))
        return wm.predict(*args, **kw)

    ctx = torch.randn(1, 2, wm.encoder.num_tokens, 8)
    goal = wm.predict(ctx, torch.tensor([[[0.8, -0.6, 0.4, 0.9], [0.7, -0.5, 0.2, 0.9]]]), temperature=0.0)[0, -1]
    cfg = CEMConfig(samples=128, elites=16, iterations=6, horizon=2, execute=1, init_std=0.5)
    plan16, d16 = cem_plan(wm, ctx, goal, replace(cfg, precision="bfloat16"), predict=predict)
    assert seen == [torch.bfloat16] * 6
    assert d16["best_cost"][-1] < d16["best_cost"][0]



def test_policy_spec_errors_before_anything_runs():
    from policies import EnvInfo, make_policy

    info = EnvInfo.from_env_id("metaworld/reach-v3")
    with pytest.raises(HarnessError, match="needs a world model"):
        make_policy("cem", info)
    with pytest.raises(HarnessError, match="preset"):
        make_policy("cem:wm=minivae_dit_tiny,preset=fast", info)
    with pytest.raises(HarnessError, match="goal_data"):
        make_policy("cem:wm=minivae_dit_tiny,goal=data", info)
    with pytest.raises(HarnessError, match="goal_data=/no/such.h5: no such file"):
        make_policy("cem:wm=minivae_dit_tiny,goal=data,goal_data=/no/such.h5", info)
    with pytest.raises(HarnessError, match="goal_data=2024: no such file"):  # YAML reads it as a number
        make_policy("cem:wm=minivae_dit_tiny,goal=data,goal_data=2024", info)
    with pytest.raises(HarnessError, match=r"/no/such/dir is not a folder\. .*or pass cem:\.\.\.,checkpoint=DIR"):
        make_policy("cem:wm=minivae_dit_tiny,checkpoint=/no/such/dir", info)
    with pytest.raises(HarnessError, match="sees camera 'corner2', which this run does not render"):
        make_policy("cem:wm=minivae_dit_tiny", EnvInfo.from_env_id("metaworld/reach-v3", cameras=("corner",)))


def test_planning_error_recovers_recorded_actions_on_a_known_world_model():
    """CEM planning error ("Reconstruction or Semantics?"): plan from real start to real goal
    latents; on a world model that is the true dynamics the planned actions match the recorded
    ones far better than the zero-action and random-action baselines."""
    from types import SimpleNamespace

    from harness.analyses.planning_error import planning_error

    class IdentityEncoderWM(LinearWM):
        def encode(self, frames):  # the "frames" are already latents here
            return torch.as_tensor(np.asarray(frames), dtype=torch.float32)

    wm = IdentityEncoderWM(seed=3)
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(3):
        acts = rng.uniform(-0.8, 0.8, (12, 2)).astype(np.float32)
        z = [np.zeros((wm.N, wm.D), np.float32)]
        for a in acts:
            z.append(z[-1] + (torch.as_tensor(a) @ wm.B).numpy()[None])
        episodes.append(SimpleNamespace(frames=np.stack(z), actions=acts))
    cfg = CEMConfig(samples=200, elites=20, iterations=10, init_std=0.6)
    out = planning_error(wm, episodes, ks=(1, 2), pairs=6, config=cfg)
    v = out["k"]["1"]
    assert v["pairs"] == 6 and v["action_mse"] < 0.05 * v["zero_action_mse"] and v["action_mse"] < 0.05 * v["random_action_mse"]
    # k=2 with a last-frame goal only pins the sum of the two actions here: the error grows, as the
    # metric should show for longer horizons
    assert out["k"]["2"]["pairs"] == 6 and out["k"]["2"]["action_mse"] > v["action_mse"]
    with pytest.raises(HarnessError, match="long enough"):
        planning_error(wm, episodes, ks=(20,), pairs=2, config=cfg)


# -- the presets against the upstream planners' update rules, by hand -------------------------


class CaptureWM(LinearWM):
    """LinearWM that keeps the candidates of every batched call (as numpy)."""

    def __init__(self, A=2, N=3, D=4, seed=0):
        super().__init__(A, N, D, seed)
        self.seen = []

    def predict(self, latents, actions, **kw):
        self.seen.append(actions.numpy().copy())
        return super().predict(latents, actions, **kw)


class ReadoutWM(CaptureWM):
    """CaptureWM over 4 tokens on a 2 x 2 grid with a known proprioception readout: the latent
    flattened token by token, times W, plus b, in units of ``spread``."""

    def __init__(self, seed=6):
        super().__init__(A=2, N=4, D=3, seed=seed)
        rng = np.random.default_rng(seed)
        self.W = rng.standard_normal((12, 2)).astype(np.float32)
        self.b, self.spread = np.array([0.1, -0.2], np.float32), np.array([0.5, 2.0], np.float32)
        self.readout = ProprioReadout(self.W, self.b, self.spread, (2, 2), "metaworld")

    def proprio_readout(self):
        return self.readout


def frames_by_hand(wm, ctx, cand):
    """The latents (S, K, N, D) LinearWM predicts for candidates (S, K, A), in numpy."""
    steps = np.cumsum(cand, axis=1) @ wm.B.numpy()  # (S, K, D)
    return ctx[0, -1].numpy()[None, None] + steps[:, :, None, :]


def test_presets_follow_the_upstream_planners():
    d = CEM_PRESETS["dino_wm"]  # dino_wm conf/planner/mpc_cem.yaml, conf/plan.yaml, planning/cem.py
    assert (d.samples, d.elites, d.iterations, d.horizon, d.execute, d.init_std) == (300, 30, 30, 5, 5, 1.0)
    assert (d.std_ddof, d.min_std, d.momentum, d.momentum_std, d.clip, d.keep_mean) == (1, 0.0, 0.0, 0.0, False, True)
    assert (d.objective, d.goal_frames, d.frame_base, d.proprio) == ("l2", "last", 2.0, 1.0)
    assert (d.pick, d.warm_start, d.layout, d.hold) == ("mean", True, "free", False)
    v = CEM_PRESETS["vjepa2_ac"]  # vjepa2 notebooks/utils/world_model_wrapper.py, mpc_utils.py
    assert (v.horizon, v.samples, v.elites, v.iterations, v.execute) == (2, 400, 10, 10, 1)
    assert (v.momentum, v.momentum_std, v.std_ddof, v.min_std, v.keep_mean, v.warm_start) == (
        0.15, 0.15, 1, 0.0, False, False)
    assert (v.layout, v.maxnorm, v.init_std, v.gripper_clip, v.gripper_deadband) == ("droid", 0.05, 1.0, 0.75, 0.25)
    assert (v.objective, v.goal_frames, v.pick, v.proprio, v.hold) == ("l1", "last", "mean", 0.0, False)
    c = CEM_PRESETS["cpu"]  # the harness's own; the new fields at their defaults
    assert (c.std_ddof, c.min_std, c.momentum, c.momentum_std, c.clip, c.keep_mean) == (0, 0.05, 0.0, 0.0, True, True)
    assert (c.frame_base, c.layout, c.warm_start, c.proprio) == (None, "free", True, 0.0)


def test_cpu_preset_one_iteration_by_hand():
    """Clipped candidates, candidate 0 the mean, std with ddof 0 floored at 0.05, no momentum."""
    wm = CaptureWM(seed=2)
    goal = torch.full((wm.N, wm.D), 2.0)
    plan, diag = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), goal, replace(CEM_PRESETS["cpu"], iterations=1))
    cand = wm.seen[0]  # (64, 2, 2)
    assert np.abs(cand).max() == 1.0 and np.array_equal(cand[0], np.zeros((2, 2)))
    cost = ((frames_by_hand(wm, torch.zeros(1, 1, wm.N, wm.D), cand)[:, -1] - 2.0) ** 2).mean(axis=(1, 2))
    elites = cand[np.argsort(cost)[:8]]
    np.testing.assert_allclose(diag["mean"], elites.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(diag["std"], np.maximum(elites.std(axis=0), 0.05), rtol=1e-5)
    np.testing.assert_allclose(plan, elites.mean(axis=0), atol=1e-6)


def test_dino_wm_preset_one_iteration_by_hand():
    """planning/cem.py: samples not clipped, candidate 0 is mu, mu and sigma <- the top 30's mean
    and torch.std (ddof 1), no floor, no momentum; objectives.py: the last frame's MSE plus alpha
    (1) times the proprio MSE."""
    wm = ReadoutWM()
    ctx = torch.zeros(1, 1, wm.N, wm.D)
    ctx[..., 0] = 0.3
    goal, goal_p = torch.full((wm.N, wm.D), 0.5), np.array([0.2, -0.1], np.float32)
    plan, diag = cem_plan(wm, ctx, goal, replace(CEM_PRESETS["dino_wm"], iterations=1), goal_proprio=goal_p)
    cand = wm.seen[0]  # (300, 5, 2)
    assert cand.shape == (300, 5, 2) and np.abs(cand).max() > 2  # std 1, not clipped
    assert np.array_equal(cand[0], np.zeros((5, 2)))  # the mean is candidate 0
    z_last = frames_by_hand(wm, ctx, cand)[:, -1]  # (S, N, D)
    p = (z_last.reshape(300, 12) @ wm.W + wm.b - goal_p) / wm.spread
    cost = ((z_last - 0.5) ** 2).mean(axis=(1, 2)) + 1.0 * (p ** 2).mean(axis=1)
    elites = cand[np.argsort(cost)[:30]]
    assert diag["best_cost"][0] == pytest.approx(cost.min(), rel=1e-5)
    np.testing.assert_allclose(diag["mean"], elites.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(diag["std"], elites.std(axis=0, ddof=1), rtol=1e-5)
    assert np.allclose(diag["std"] / elites.std(axis=0), np.sqrt(30 / 29), rtol=1e-5)  # ddof 1, not 0
    np.testing.assert_allclose(plan, np.clip(elites.mean(axis=0), -1, 1), atol=1e-6)  # the plan is in the box


def test_goal_frames_all_weighs_frames_by_powers_of_base_as_dino_wm():
    z = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1)  # L1 cost 1 at the first predicted frame, 2 at the second
    g = torch.zeros(1, 1)
    assert goal_cost(z, g, "l1", "all").item() == pytest.approx((1 * 1 + 2 * 2) / 3)  # the harness's weights 1..K
    # objectives.py objective_fn_all: the start frame (cost 3) and the two predicted ones weigh 1, 2, 4,
    # normalised to sum 1, then averaged over the three frames
    assert goal_cost(z, g, "l1", "all", frame_base=2.0, start_cost=torch.tensor([3.0])).item() == pytest.approx(
        (1 * 3 + 2 * 1 + 4 * 2) / 7 / 3)
    assert goal_cost(z, g, "l1", "all", frame_base=2.0).item() == pytest.approx((2 * 1 + 4 * 2) / 7 / 3)
    assert goal_cost(z, g, "l1", "last", frame_base=2.0).item() == 2.0
    # in cem_plan the start frame is the last context frame
    wm = CaptureWM(seed=7)
    ctx = torch.full((1, 1, wm.N, wm.D), 0.2)
    cfg = replace(CEM_PRESETS["dino_wm"], goal_frames="all", horizon=2, execute=2, iterations=1, proprio=0.0)
    _, diag = cem_plan(wm, ctx, torch.ones(wm.N, wm.D), cfg)
    per_frame = ((frames_by_hand(wm, ctx, wm.seen[0]) - 1.0) ** 2).mean(axis=(2, 3))  # (S, 2)
    cost = (1 * (0.2 - 1.0) ** 2 + 2 * per_frame[:, 0] + 4 * per_frame[:, 1]) / 7 / 3
    assert diag["best_cost"][0] == pytest.approx(cost.min(), rel=1e-5)


def test_vjepa2_ac_preset_one_iteration_by_hand_on_7d_actions():
    """mpc_utils.py cem: xyz sampled with std maxnorm and clipped to it, rotation 0, gripper std 1
    clipped to 0.75, the mean not among the candidates; the top 10 by L1 on the last frame; mean
    and std (ddof 1) both with momentum 0.15; the returned gripper zeroed below 0.25."""
    wm = CaptureWM(A=7, seed=8)
    plan, diag = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.full((wm.N, wm.D), 0.05),
                          replace(CEM_PRESETS["vjepa2_ac"], iterations=1))
    cand = wm.seen[0]
    assert cand.shape == (400, 2, 7) and len(wm.seen) == 1
    assert np.all(cand[..., 3:6] == 0)  # rotation fixed at 0
    xyz, grip = np.abs(cand[..., :3]), np.abs(cand[..., 6])
    assert xyz.max() == np.float32(0.05) and grip.max() == np.float32(0.75)
    # std maxnorm for xyz: P(|x| >= 1 std) = 0.32; std 1 for the gripper: P(|g| >= 0.75) = 0.45
    assert 0.25 < np.mean(xyz == np.float32(0.05)) < 0.4 and 0.38 < np.mean(grip == np.float32(0.75)) < 0.52
    assert not np.any(np.all(cand == 0, axis=(1, 2)))  # the zero mean is not put among them
    cost = np.abs(frames_by_hand(wm, torch.zeros(1, 1, wm.N, wm.D), cand)[:, -1] - 0.05).mean(axis=(1, 2))
    elites = cand[np.argsort(cost)[:10]]
    init_std = np.array([0.05, 0.05, 0.05, 0, 0, 0, 1.0], np.float32)
    np.testing.assert_allclose(diag["mean"], 0.85 * elites.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(diag["std"], 0.15 * init_std + 0.85 * elites.std(axis=0, ddof=1), rtol=1e-5, atol=1e-7)
    want = 0.85 * elites.mean(axis=0)
    want[:, 6] = np.where(np.abs(want[:, 6]) < 0.25, 0.0, want[:, 6])
    np.testing.assert_allclose(plan, want, atol=1e-6)


@pytest.mark.parametrize("target, kept", [(0.2, False), (0.5, True)])
def test_vjepa2_ac_returns_the_gripper_zeroed_below_0_25(target, kept):
    wm = LinearWM(A=7, N=1, D=7)
    wm.B = torch.zeros(7, 7)
    wm.B[6, 6] = 1.0  # only the gripper moves the latent
    goal = torch.zeros(1, 7)
    goal[0, 6] = target
    plan, diag = cem_plan(wm, torch.zeros(1, 1, 1, 7), goal, replace(CEM_PRESETS["vjepa2_ac"], horizon=1))
    assert diag["mean"][0, 6] == pytest.approx(target, abs=0.03)
    assert plan[0, 6] == (pytest.approx(diag["mean"][0, 6]) if kept else 0.0)
    assert np.all(plan[0, 3:6] == 0) and np.abs(plan[0, :3]).max() <= np.float32(0.05)


def test_vjepa2_ac_reads_a_4d_action_as_xyz_and_gripper_per_control_step():
    wm = CaptureWM(A=8, seed=9)
    wm.frameskip, wm.env_action_dim = 2, 4  # Meta-World's 4-D action, two control steps per world-model step
    plan, diag = cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.ones(wm.N, wm.D),
                          replace(CEM_PRESETS["vjepa2_ac"], iterations=1))
    cand = wm.seen[0].reshape(400, 2, 2, 4)  # (S, K, f, A)
    assert np.abs(cand[..., :3]).max() == np.float32(0.05) and np.abs(cand[..., 3]).max() == np.float32(0.75)
    assert 0.38 < np.mean(np.abs(cand[..., 3]) == np.float32(0.75)) < 0.52  # the gripper's std is 1
    assert plan.shape == (2, 8) and np.abs(plan.reshape(2, 2, 4)[..., :3]).max() <= np.float32(0.05)
    cost = np.abs(frames_by_hand(wm, torch.zeros(1, 1, wm.N, wm.D), wm.seen[0])[:, -1] - 1.0).mean(axis=(1, 2))
    elites = wm.seen[0][np.argsort(cost)[:10]]  # (10, K, f*A)
    std0 = np.tile(np.array([0.05, 0.05, 0.05, 1.0], np.float32), (2, 2))  # per control step: xyz maxnorm, gripper 1
    np.testing.assert_allclose(diag["std"], 0.15 * std0 + 0.85 * elites.std(axis=0, ddof=1), rtol=1e-5, atol=1e-7)


def test_vjepa2_ac_refuses_an_action_layout_it_cannot_read():
    import gymnasium

    from policies import EnvInfo, make_policy

    wm = CaptureWM(A=6)
    with pytest.raises(HarnessError) as err:
        cem_plan(wm, torch.zeros(1, 1, wm.N, wm.D), torch.ones(wm.N, wm.D), CEM_PRESETS["vjepa2_ac"])
    assert str(err.value) == ("CEM layout=droid (V-JEPA 2's planner, preset vjepa2_ac) reads 7-D actions (xyz, "
                              "rotation 3, gripper) or 4-D (xyz, gripper); the world model has 6-D actions: use "
                              "layout=free, or preset=cpu or preset=dino_wm")
    assert not wm.seen
    info = EnvInfo.from_env_id("metaworld/reach-v3")
    six = EnvInfo(**{**info.__dict__, "action_space": gymnasium.spaces.Box(-1, 1, (6,), np.float32)})
    with pytest.raises(HarnessError, match=r"; metaworld/reach-v3 has 6-D actions: use layout=free"):
        make_policy("cem:wm=minivae_dit_tiny,preset=vjepa2_ac", six)  # before any world model loads
    assert make_policy("cem:wm=minivae_dit_tiny,preset=vjepa2_ac,layout=free", six).config.layout == "free"
    assert make_policy("cem:wm=minivae_dit_tiny,preset=vjepa2_ac,maxnorm=1", info).config.maxnorm == 1


def test_policy_presets_proprio_and_warm_start(saved_wm, monkeypatch):
    import policies.cem as cem
    from policies import EnvInfo, make_policy

    wm, folder = saved_wm  # no proprioception readout
    info = EnvInfo.from_env_id("metaworld/reach-v3")
    info = EnvInfo(**{**info.__dict__, "cameras": ("corner2",), "image_size": 32})
    spec = f"cem:wm=minivae_dit_tiny,checkpoint={folder}"
    with pytest.raises(HarnessError, match=r"has no proprioception readout.* Or plan without it: cem:\.\.\.,proprio=0 "
                                           r"\(preset dino_wm weighs it 1\)\.$"):
        make_policy(spec + ",preset=dino_wm", info)
    with pytest.raises(HarnessError) as err:  # a weight the user gave: the readout's own message
        make_policy(spec + ",proprio=0.5", info)
    assert "Or plan without it" not in str(err.value)
    assert make_policy(spec + ",preset=dino_wm,proprio=0", info).config.proprio == 0
    seen, real = [], cem.cem_plan

    def spy(*args, init_mean=None, **kw):
        seen.append(init_mean)
        return real(*args, init_mean=init_mean, **kw)

    monkeypatch.setattr(cem, "cem_plan", spy)
    frame = np.zeros((32, 32, 3), np.uint8)
    for preset, warm in (("cpu", True), ("vjepa2_ac", False)):
        policy = make_policy(spec + f",preset={preset},samples=8,elites=2,iterations=1", info)
        monkeypatch.setattr(policy, "_goal", lambda init_state: (frame, None))
        policy.reset("reach", seed=0, init_state=0)
        steps = policy.config.execute * wm.frameskip
        actions = [policy.act({"pixels": {"corner2": frame}}) for _ in range(steps + 1)]  # two plans
        assert seen[-2] is None and (seen[-1] is not None) == warm
        if preset == "vjepa2_ac":
            assert np.abs(np.stack(actions)[:, :3]).max() <= np.float32(0.05)
