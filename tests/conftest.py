from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
# the per-machine inference decisions (world_models/inference.py) of this test session, apart from the user's
os.environ.setdefault("WM_HARNESS_CACHE", tempfile.mkdtemp(prefix="wm-harness-cache-"))
# Meta-World's faithful frames cost ~15x the fast ones on a CPU renderer: runs that name no --render
# render fast here; the tests of the faithful default and of each mode name theirs
os.environ.setdefault("WM_HARNESS_RENDER", "fast")
ROOT = Path(__file__).resolve().parents[1]

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None
requires_metaworld = pytest.mark.skipif(not HAS_METAWORLD, reason='Meta-World not installed: pip install -e ".[metaworld]"')


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m harness ...` as a user would."""
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outcomes(records: list[dict]) -> dict:
    """Per-episode outcomes without timing fields, keyed by (policy, backend, env, init state)."""
    from harness.run.runner import NONDETERMINISTIC_FIELDS

    return {(r["policy"], r["backend"], r["env_id"], r["init_state"]): {k: v for k, v in r.items() if k not in NONDETERMINISTIC_FIELDS}
            for r in records}


@pytest.fixture()
def saved_wm(tmp_path):
    """A tiny random-init minivae world model named minivae_dit_tiny, saved and loaded back (so it
    knows its checkpoint folder, where add-ons live): (model, folder)."""
    pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')
    from test_world_models import tiny_wm

    from world_models.world_model import WorldModel

    wm = tiny_wm("minivae")
    wm.info["name"] = "minivae_dit_tiny"
    folder = wm.save(tmp_path / "wm")
    return WorldModel.load(folder), folder
