"""benchmarks/run_all.py: the table's ratio and met? columns, and the smallest sizes of a few rows
through the importable functions (the whole table is `run_all.py --quick`, minutes)."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from conftest import ROOT, requires_metaworld

sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402
from run_all import QUICK, Row, format_table  # noqa: E402


@pytest.fixture
def one_thread():
    """torch on one thread, as run_all.py does (on a busy 2-core machine two threads are far slower)."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def table_cells(text: str) -> list[list[str]]:
    lines = text.splitlines()
    assert lines[0] == "| measure | value | baseline | ratio | target | met? |"
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_table_ratio_and_met_from_given_numbers():
    rows = [
        Row("wm batch 64", 250.0, "steps/s", 10.0, (">=", 20.0)),   # 25x >= 20x
        Row("wm batch 1", 9.0, "steps/s", 10.0, (">=", 1.0)),       # 0.9x < 1x
        Row("overhead ok", 1.05, "ms/step", 1.0, ("<=", 1.10)),     # +5%
        Row("overhead bad", 1.25, "ms/step", 1.0, ("<=", 1.10)),    # +25%
        Row("workers", 3.0, "episodes/s", 2.0, note="4 episodes"),  # ratio, no target
        Row("plan time", 146.0, "ms"),                              # value only
    ]
    cells = table_cells(format_table(rows))
    assert cells[0] == ["wm batch 64", "250 steps/s", "10.0 steps/s", "25.0x", ">= 20x", "yes"]
    assert cells[1] == ["wm batch 1", "9.00 steps/s", "10.0 steps/s", "0.9x", ">= 1x", "NO"]
    assert cells[2][3:] == ["1.05x", "<= 1.1x", "yes"]
    assert cells[3][3:] == ["1.25x", "<= 1.1x", "NO"]
    assert cells[4] == ["workers (4 episodes)", "3.00 episodes/s", "2.00 episodes/s", "1.50x", "-", "-"]
    assert cells[5] == ["plan time", "146 ms", "-", "-", "-", "-"]
    assert rows[0].ratio == pytest.approx(25.0) and rows[3].met is False
    assert Row("zero baseline", 1.0, "", 0.0, (">=", 1.0)).met is None
    with pytest.raises(ValueError, match="operator"):
        _ = Row("bad", 1.0, "", 1.0, ("==", 1.0)).met


def test_unknown_section_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--only", "wm,nosuch"])
    assert exc.value.code == 2
    assert "nosuch" in capsys.readouterr().err


def test_cem_batched_vs_loop_and_plan_time_on_the_embedded_world_model(one_thread):
    import torch
    from bench_cem import batched_vs_loop, plan_time
    from bench_world_model import embedded_world_model

    wm = embedded_world_model()
    N, D = wm.encoder.num_tokens, wm.encoder.dim
    ctx = torch.zeros(1, 2, N, D)
    r = batched_vs_loop(wm, ctx, samples=16, horizon=2, loop_samples=4)
    assert r["loop_samples"] == 4 and r["batched_s"] > 0 and r["loop_s"] > 0
    assert r["speedup"] == pytest.approx(r["loop_s"] / r["batched_s"])
    # each side at its own thread counts; torch is left as it was
    r2 = batched_vs_loop(wm, ctx, samples=8, horizon=1, loop_samples=2, batched_threads=2, loop_threads=(1, 2))
    assert r2["batched_threads"] == 2 and torch.get_num_threads() == 1
    times = r2["loop_s_by_config"]  # every thread count in both precisions: the fastest is the loop's
    assert set(times) == {(n, d) for n in (1, 2) for d in ("float32", "bfloat16")}
    assert r2["loop_s"] == min(times.values()) == times[(r2["loop_threads"], r2["loop_dtype"])]
    r3 = batched_vs_loop(wm, ctx, samples=8, horizon=1, loop_samples=2, loop_dtypes=(None,))
    assert r3["loop_dtype"] == "float32" and set(r3["loop_s_by_config"]) == {(1, "float32")}
    p = plan_time(wm, ctx, torch.zeros(N, D), "cpu", iterations=1)
    # preset cpu: 4 iterations of 64 samples, execute 1 world-model step = frameskip control steps
    assert p["timed_iterations"] == 1 and p["iterations"] == 4 and p["calls_per_iteration"] == 1
    assert p["control_steps"] == wm.frameskip
    assert p["per_control_step_s"] == pytest.approx(p["plan_s"] / wm.frameskip)


@requires_metaworld
def test_wm_and_overhead_rows_at_the_smallest_sizes(one_thread):
    tiny = replace(QUICK, sim_steps=8, wm_b1_steps=8, wm_b64_steps=4, rounds=1)
    state: dict = {}
    sim, b1, b64, b64_bf16, dist, dist_bf16 = run_all.wm_rows(tiny, state)  # the shipped checkpoint has a distilled decoder
    assert sim.value > 0 and sim.baseline is None
    # every world-model row is compared with the simulator rate measured in the same run
    assert b1.baseline == sim.value == b64.baseline == b64_bf16.baseline == dist.baseline == dist_bf16.baseline
    assert b1.target == (">=", 1.0) and b64.target == (">=", 20.0) == b64_bf16.target == dist.target
    assert b64.ratio == pytest.approx(b64.value / sim.value)
    assert "bfloat16" in b64_bf16.measure and b64_bf16.value > 0
    assert "--wm-decoder distilled" in dist.measure and "bfloat16" in dist_bf16.measure
    assert dist.value > b64.value  # the distilled decoder is the cheap one

    from bench_overhead import runner_vs_bare

    r = runner_vs_bare(steps=20, repeats=1, cameras=(), image_size=None)
    assert r["bare_step_s"] > 0 and r["runner_step_s"] > 0
    assert r["overhead"] == pytest.approx(r["runner_step_s"] / r["bare_step_s"] - 1)


def test_allocator_effect_runs_both_settings_in_child_processes():
    from bench_cem import allocator_effect

    r = allocator_effect(samples=8, threads=1, rounds=1)
    assert set(r) == {"float32_keep", "float32_default", "bfloat16_keep", "bfloat16_default", "applied"}
    assert all(r[k] > 0 for k in r if k != "applied")
    import platform

    assert r["applied"] == (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")


def test_loop_times_note_gives_each_precision_at_its_fastest_thread_count():
    r = {"loop_s_by_config": {(1, "float32"): 3.0, (2, "float32"): 2.4, (1, "bfloat16"): 3.6, (2, "bfloat16"): 4.0}}
    assert run_all.loop_times_note(r, 300) == "float32 8.0 ms, bfloat16 12.0 ms"


def test_default_path_vs_torch_modules_times_both_and_records_the_choice(one_thread):
    import torch
    from bench_cem import default_vs_torch
    from bench_world_model import embedded_world_model

    wm = embedded_world_model()
    N, D = wm.encoder.num_tokens, wm.encoder.dim
    r = default_vs_torch(wm.folder, torch.zeros(1, 2, N, D), torch.zeros(N, D), "cpu", rounds=1, iterations=1)
    assert r["default_s"] > 0 and r["torch_s"] > 0
    gelu = r["record"]["stand_ins"]["gelu"]  # measured on this CPU, and the choice follows the numbers
    assert gelu["use"] == (gelu["stand_in_ms"] < gelu["torch_ms"]) and gelu["swapped"] == (4 if gelu["use"] else 0)


def test_machine_line_names_the_cpu_and_its_vector_flags():
    line = run_all.machine_line()
    assert line.startswith("CPU: ") and "vector flags: " in line
    flags = run_all.cpu_flags().split()
    cpuinfo = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    if " avx2" in cpuinfo:
        assert "avx2" in flags
    assert all(f in ("avx", "avx2", "fma", "f16c") or f.startswith(("avx512", "amx")) for f in flags)


def test_peer_comparison_gives_no_number_without_the_peer():
    from bench_peer_cem import peer_vs_ours

    r = peer_vs_ours(None)
    assert r["peer"] is None and r["ratio"] is None and "--peer-python" in r["reason"]
    r = peer_vs_ours("/nonexistent/python")
    assert r["peer"] is None and "not an executable file" in r["reason"]
    # a python without stable-worldmodel (this venv): the probe says so before anything is timed
    pytest.importorskip("torch")
    try:
        import stable_worldmodel  # noqa: F401
        pytest.skip("stable-worldmodel is installed here")
    except ImportError:
        pass
    r = peer_vs_ours(sys.executable, iterations=1)
    assert r["peer"] is None and r["ours"] is None and "stable-worldmodel" in r["reason"]
