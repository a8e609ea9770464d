"""CEM planner: one batched world-model call per iteration, converges on a known linear world
model, presets valid, policy spec validation, and MPC through a world model checkpoint."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

from harness.errors import HarnessError  # noqa: E402
from policies.cem import CEM_PRESETS, CEMConfig, cem_plan, goal_cost  # noqa: E402


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
