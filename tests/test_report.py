"""`harness report` on probe folders: a table and plots from probe.json, in report.md/html."""

from __future__ import annotations

import json

from conftest import run_cli


def _row(source, k, r2, layer=None):
    return {"source": source, "layer": layer, "latents": "encoder", "k": k, "corruption": "none", "severity": 0,
            "probe": "linear", "r2": {"mean": r2, "std": 0.01}, "pearson": {"mean": r2 ** 0.5, "std": 0.01},
            "r2_groups": {"translation": {"mean": r2 + 0.1, "std": 0.0}, "gripper": {"mean": r2 - 0.1, "std": 0.0}},
            "baselines": {"random_projection": {"r2": {"mean": 0.01, "std": 0.0}}}}


def test_report_renders_a_probe_folder(tmp_path):
    run = tmp_path / "probe"
    run.mkdir()
    probe = {"format": "wm-harness-probe/1", "groups": {"translation": [0, 3], "gripper": [3, 4]},
             "results": [_row("minivae", 1, 0.30), _row("minijepa", 1, 0.45), _row("vjepa", 1, 0.2, layer=4),
                         _row("vjepa", 1, 0.5, layer=8)]}
    (run / "probe.json").write_text(json.dumps(probe))
    r = run_cli("report", str(run))
    assert r.returncode == 0, r.stderr
    md = (run / "report.md").read_text()
    assert "| minijepa | - | encoder | 1 | none | linear | 0.450 | 0.671 | 0.550 | 0.350 | 0.010 |" in md
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64") == 2  # group bars + layer-wise curve


def test_report_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    r = run_cli("report", str(tmp_path))
    assert r.returncode == 2 and "not a run folder" in r.stderr


def _run_folder(path):
    """A finished two-episode run, as `harness eval` leaves it."""
    from harness.run.store import RunStore
    from harness.stats.summary import summarize

    store = RunStore(path)
    store.claim({"env": "e"})
    records = [{"policy": "p", "backend": "sim", "env_id": "e", "init_state": i, "outcome": o, "success": o == "success",
                "success_step": 3 if o == "success" else None, "length": 5, "ret": 0.0} for i, o in
               enumerate(["success", "failure"])]
    for r in records:
        store.append(r)
    (path / "results.json").write_text(json.dumps({"results": summarize(records)}))
    return path


def test_damaged_run_files_are_one_line_and_left_alone(tmp_path):
    import pytest

    from harness.errors import HarnessError
    from harness.report.html import write_report
    from harness.run.store import RunStore

    run = _run_folder(tmp_path / "run")
    md, _ = write_report([run])
    assert "| p | sim | e | 50.0% |" in md.read_text()
    for name, text, message in [
        ("results.json", '{"a": 1}', "is not a harness results file \\(no 'results' mapping at the top\\)"),
        ("results.json", "[]", "no 'results' mapping"),
        ("results.json", '{"results": {"p": {"sim": {"tasks": {}}}}}', "lacks 'tasks' or 'overall'"),
    ]:
        damaged = _run_folder(tmp_path / f"d{len(name)}{len(text)}")
        (damaged / name).write_text(text)
        before = {p.name: p.read_bytes() for p in damaged.iterdir()}
        with pytest.raises(HarnessError, match=message):
            write_report([damaged])
        assert {p.name: p.read_bytes() for p in damaged.iterdir()} == before
    (run / "run.json").write_text("[1, 2]")
    with pytest.raises(HarnessError, match="holds a JSON list, not a run's settings"):
        RunStore(run).check({"env": "e"})
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.json").write_text("{not json")
    with pytest.raises(HarnessError, match="is not a probe result written by `harness probe`"):
        write_report([probe])
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(HarnessError, match="cannot write to output folder"):
        write_report([_run_folder(tmp_path / "ok")], out=blocker)
    assert blocker.read_text() == "keep"


def test_output_files_that_cannot_be_written_are_refused_first(tmp_path):
    import pytest

    from harness.errors import HarnessError
    from harness.run.store import check_output_file

    with pytest.raises(HarnessError, match=f"--out {tmp_path} is a folder; give a file path"):
        check_output_file(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(HarnessError, match="cannot write --out .*: its folder .* cannot be created"):
        check_output_file(tmp_path / "file" / "x.json")
    check_output_file(tmp_path / "new" / "x.json")
    r = run_cli("plan-error", "--data", str(tmp_path / "none.h5"), "--wm", "minivae_dit_tiny", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is a folder" in r.stderr, r.stderr


def test_the_confusion_plot_puts_each_count_under_its_labels():
    """Rows are the world model's verdict, columns the simulator's: 14 episodes that succeed only
    in the world model sit at (WM success, sim failure)."""
    from harness.report.html import confusion_matrix

    m = confusion_matrix({"tp": 5, "fp": 14, "fn": 8, "tn": 33})
    assert m == [[5, 14], [8, 33]]  # [WM success: sim success, sim failure], [WM failure: ...]


def test_the_verdict_asks_for_a_tight_interval_and_few_rank_violations():
    from harness.report.markdown import verdict

    def block(r, lo, rho, mmrv):
        return {"ranking": {"policies": list("abcdef"), "pearson_r": r, "pearson_r_ci95": [lo, 1.0],
                            "spearman_rho": rho, "mmrv": mmrv}}

    assert verdict(block(0.97, 0.85, 0.94, 0.02)).startswith("Verdict: this world model ranks these 6 policies")
    assert "roughly" in verdict(block(0.81, 0.2, 0.91, 0.133))  # the embedded default today: not a yes
    assert "cannot be trusted" in verdict(block(0.1, -0.7, 0.2, 0.4))
    assert verdict({"ranking": {"policies": ["a"], "note": "ranking needs at least 2 policies"}}) == \
        "Verdict: no ranking to judge (ranking needs at least 2 policies)."
