from __future__ import annotations

import json

import numpy as np
import pytest

from harness.data.dataset import DatasetWriter, EpisodeData, list_demos, read_demo
from harness.errors import HarnessError
from harness.run.store import RunStore, atomic_write_json, check_writable


def _rec(i):
    return {"policy": "p", "backend": "sim", "env_id": "e", "init_state": i, "outcome": "success"}


def test_torn_last_line_is_cut_and_run_resumes(tmp_path):
    store = RunStore(tmp_path)
    store.claim({"a": 1})
    for i in range(3):
        store.append(_rec(i))
    with open(store.episodes_path, "a") as f:
        f.write('{"policy": "p", "backend": "si')  # killed mid-write
    before = store.episodes_path.read_bytes()
    assert [r["init_state"] for r in store.load()] == [0, 1, 2]
    assert store.episodes_path.read_bytes() == before  # reading (a report, a live run) never writes
    store.repair()  # what a resuming run does before it appends
    store.append(_rec(3))
    lines = store.episodes_path.read_text().splitlines()
    assert [json.loads(x)["init_state"] for x in lines] == [0, 1, 2, 3]


def test_a_whole_last_record_without_newline_is_kept(tmp_path):
    store = RunStore(tmp_path)
    store.claim({"a": 1})
    for i in range(3):
        store.append(_rec(i))
    store.episodes_path.write_bytes(store.episodes_path.read_bytes().rstrip(b"\n"))  # e.g. saved by an editor
    before = store.episodes_path.read_bytes()
    assert [r["init_state"] for r in store.load()] == [0, 1, 2]
    assert store.episodes_path.read_bytes() == before
    store.repair()
    assert store.episodes_path.read_bytes() == before + b"\n"
    store.append(_rec(3))
    assert [r["init_state"] for r in store.load()] == [0, 1, 2, 3]
    store.repair()  # nothing to settle: a no-op
    assert len(store.episodes_path.read_text().splitlines()) == 4


@pytest.mark.parametrize("line", ['[1, 2]', '{"policy": "x"}', '"text"'])
def test_a_line_that_is_json_but_not_a_record_is_one_clear_error(tmp_path, line):
    store = RunStore(tmp_path)
    store.append(_rec(0))
    with open(store.episodes_path, "a") as f:
        f.write(line + "\n")
    before = store.episodes_path.read_bytes()
    with pytest.raises(HarnessError, match="line 2 is not an episode record .*restore it or choose a new --out"):
        store.load()
    assert store.episodes_path.read_bytes() == before


def test_claim_refuses_a_different_run_and_leaves_it_alone(tmp_path):
    store = RunStore(tmp_path)
    store.claim({"episodes": 5, "seed": 0})
    store.append(_rec(0))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(HarnessError, match="differs in: episodes: 5 there, 6 now\\)"):
        RunStore(tmp_path).claim({"episodes": 6, "seed": 0})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    RunStore(tmp_path).claim({"episodes": 5, "seed": 0})  # the same run resumes


def test_atomic_write_and_writability(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HarnessError, match="cannot write to output folder"):
        check_writable(blocker / "sub")


def test_dataset_round_trip(tmp_path):
    path = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    eps = []
    with DatasetWriter(path, {"env_ids": ["e"]}) as w:
        for i, T in enumerate((5, 3)):
            ep = EpisodeData(
                actions=rng.uniform(-1, 1, (T, 4)).astype(np.float32),
                obs={"corner2_rgb": rng.integers(0, 255, (T, 8, 8, 3), dtype=np.uint8),
                     "state": rng.normal(size=(T, 39)).astype(np.float32)},
                final_obs={"corner2_rgb": rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8),
                           "state": rng.normal(size=(1, 39)).astype(np.float32)},
                rewards=np.arange(T, dtype=np.float32), success=np.arange(T) == T - 1,
                attrs={"env_id": "e", "init_state": i, "instruction": "do it", "success": True})
            w.add(ep)
            eps.append(ep)
    assert not (tmp_path / "d.h5.partial").exists()
    demos = list_demos(path)
    assert [n for n, _ in demos] == ["demo_0", "demo_1"]
    assert demos[1][1]["init_state"] == 1 and demos[1][1]["num_samples"] == 3
    back = read_demo(path, "demo_0")
    assert np.array_equal(back.actions, eps[0].actions)
    assert np.array_equal(back.obs["corner2_rgb"], eps[0].obs["corner2_rgb"])
    assert back.frames("corner2").shape == (6, 8, 8, 3)
    assert back.attrs["instruction"] == "do it"


def test_dataset_writer_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "d.h5"
    with pytest.raises(RuntimeError):
        with DatasetWriter(path):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_resume_with_other_settings_says_what_differs():
    from harness.run.store import _change

    long_a = "bc:path=/data/checkpoints/policies/bc_metaworld/run3/step_000250"
    long_b = long_a.replace("000250", "000150")
    # a long path keeps its end, where such paths differ
    assert _change(["scripted", long_a], ["scripted", long_b]) == (
        '["bc:path=/data/che...licies/bc_metaworld/run3/step_000250"] there only, '
        '["bc:path=/data/che...licies/bc_metaworld/run3/step_000150"] now only')
    assert _change([1, 2], [2, 1]) == "the same items in another order"
    assert _change({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "b 2 there, 3 now"
    assert _change(5, 6) == "5 there, 6 now"


def test_one_writer_per_run_folder(tmp_path):
    store = RunStore(tmp_path)
    with store.lock():
        with pytest.raises(HarnessError, match="another `harness eval` is writing to .*choose another --out"):
            with RunStore(tmp_path).lock():
                pass
    with RunStore(tmp_path).lock():  # released when the first writer is done
        pass


def test_a_filesystem_without_locks_runs_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with RunStore(tmp_path).lock():
        pass
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_atomic_files_are_ordinary_files(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644  # not mkstemp's 0600
