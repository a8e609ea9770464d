from __future__ import annotations

import pytest

from harness.stats.intervals import wilson_interval
from harness.stats.summary import summarize


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [(0, 10, 0.0, 0.27753), (5, 10, 0.23659, 0.76341), (10, 10, 0.72247, 1.0), (1, 20, 0.00889, 0.23613), (45, 50, 0.78638, 0.95653)],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _rec(env, i, outcome, length=10, policy="p"):
    return {"policy": policy, "backend": "sim", "env_id": env, "init_state": i, "outcome": outcome,
            "success": outcome == "success", "success_step": length if outcome == "success" else None,
            "length": length, "rollout_s": 1.0}


def test_summary_counts_errors_as_failures_and_macro_averages():
    recs = [_rec("a", 0, "success", 4), _rec("a", 1, "failure", 8), _rec("a", 2, "error", 0),
            _rec("b", 0, "success", 6), _rec("b", 1, "success", 2)]
    s = summarize(recs)["p"]["sim"]
    a = s["tasks"]["a"]
    assert (a["episodes"], a["valid"], a["errors"], a["successes"]) == (3, 2, 1, 1)
    assert a["success_rate"] == pytest.approx(1 / 3)  # the error is a failure, as OpenVLA's evaluation counts it
    assert a["ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    assert a["mean_length"] == 6.0  # lengths over the episodes that ran
    assert s["overall"]["success_rate"] == pytest.approx(3 / 5)
    assert s["macro_success_rate"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert s["overall"]["mean_success_step"] == pytest.approx(4.0)


def test_a_calvin_chain_that_raised_completed_none_of_its_subtasks():
    from envs.calvin_sequences import eval_sequences
    from harness.run.evaluate import calvin_summary

    chain0, chain1 = eval_sequences()[0][1], eval_sequences()[1][1]
    ok = {"policy": "p", "backend": "sim", "env_id": "calvin/chains", "init_state": 0, "outcome": "failure",
          "metrics": {"completed_subtasks": 3, "subtasks": list(chain0)}}
    raised = {"policy": "p", "backend": "sim", "env_id": "calvin/chains", "init_state": 1, "outcome": "error"}
    m = calvin_summary(None, [ok, raised])["calvin_chains"]["p"]["sim"]
    assert m["chains"] == 2 and m["avg_len"] == 1.5
    assert m["success_rates"][1] == 0.5 and m["success_rates"][4] == 0.0
    first = chain1[0]  # the raised chain's first subtask: attempted once, not done
    assert m["tasks"][first] == {"success": chain0[:3].count(first), "total": chain0[:4].count(first) + 1}
