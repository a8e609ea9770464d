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
