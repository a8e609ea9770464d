"""Checkpoint folders: saving replaces only an empty folder or a checkpoint of the same format,
keeps the add-ons stored inside it, and refuses anything else without touching it."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')

from harness.errors import HarnessError  # noqa: E402
from world_models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402


def _save(folder, value, fmt="fmt/1"):
    return save_checkpoint(folder, {"format": fmt, "v": value}, {"w": torch.full((2,), float(value))})


def test_resave_replaces_the_weights_and_keeps_add_ons(tmp_path):
    folder = tmp_path / "wm"
    _save(folder, 1)
    (folder / "judge").mkdir()
    (folder / "judge" / "config.json").write_text("{}")
    _save(folder, 2)
    config, tensors = load_checkpoint(folder, "test", "fmt/1")
    assert config["v"] == 2 and tensors["w"].tolist() == [2.0, 2.0]
    assert (folder / "judge" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]  # no .partial or .old left


def test_an_empty_folder_is_used(tmp_path):
    (tmp_path / "new").mkdir()
    _save(tmp_path / "new", 3)
    assert load_checkpoint(tmp_path / "new", "test", "fmt/1")[0]["v"] == 3


@pytest.mark.parametrize("contents, kind", [
    ({"episodes.jsonl": '{"policy": "p"}\n', "results.json": "{}"}, "not a checkpoint folder"),
    ({"config.json": json.dumps({"format": "other/1"}), "model.safetensors": "x"}, "a other/1 checkpoint"),
    ({"config.json": "not json"}, "not a checkpoint folder"),
])
def test_any_other_folder_is_refused_and_left_alone(tmp_path, contents, kind):
    folder = tmp_path / "victim"
    folder.mkdir()
    for name, text in contents.items():
        (folder / name).write_text(text)
    with pytest.raises(HarnessError) as err:
        _save(folder, 1)
    assert str(err.value) == (f"cannot save a fmt/1 checkpoint to {folder}: the folder exists and is {kind}, which "
                              "saving would replace; choose another output folder (--out) or remove it first")
    assert {p.name: p.read_text() for p in folder.iterdir()} == contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim"]


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(HarnessError, match="it is a file"):
        _save(tmp_path / "f", 1)
    assert (tmp_path / "f").read_text() == "keep"


def test_a_save_killed_between_its_renames_loses_no_add_on(tmp_path, monkeypatch):
    from pathlib import Path

    from world_models.checkpoint import settle

    folder = tmp_path / "wm"
    _save(folder, 1)
    (folder / "judge").mkdir()
    (folder / "judge" / "config.json").write_text("{}")
    real_rename = Path.rename

    def dies_on_the_second_rename(self, target):
        if self.name == "wm.partial":
            raise KeyboardInterrupt  # killed after the old folder moved aside, before the new one moved in
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", dies_on_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        _save(folder, 2)
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not folder.exists() and (tmp_path / "wm.old" / "judge" / "config.json").is_file()
    settle(folder)  # what the next save does first: the old checkpoint comes back whole
    assert load_checkpoint(folder, "test", "fmt/1")[0]["v"] == 1 and (folder / "judge").is_dir()
    _save(folder, 3)
    assert load_checkpoint(folder, "test", "fmt/1")[0]["v"] == 3
    assert (folder / "judge" / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]


def test_a_save_killed_before_moving_the_add_ons_is_finished_by_settle(tmp_path):
    import shutil

    from world_models.checkpoint import settle

    folder = tmp_path / "wm"
    _save(folder, 1)
    (folder / "judge").mkdir()
    (folder / "train_state.pt").write_text("stale")  # a file the new save did not write is not carried
    new = tmp_path / "new"
    _save(new, 2)
    folder.rename(tmp_path / "wm.old")  # the state after both renames, before the add-ons moved
    shutil.move(str(new), str(folder))
    settle(folder)
    assert load_checkpoint(folder, "test", "fmt/1")[0]["v"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "judge", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wm"]
