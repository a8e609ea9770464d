"""harness.run.provenance: a run records a fingerprint of the weights it loads, and a resumed run
refuses to add episodes made with other weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT, read_jsonl, requires_metaworld, run_cli

from harness.errors import HarnessError
from harness.run import provenance
from harness.run.provenance import SPEC_REFS, WORLD_MODEL_FILES, fingerprint, spec_fingerprints
from harness.run.store import RunStore


def test_fingerprint_follows_contents_names_and_scope(tmp_path):
    d = tmp_path / "ckpt"
    (d / "judge").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"weights-1")
    (d / "config.json").write_text("{}")
    (d / "judge" / "model.safetensors").write_bytes(b"judge-1")
    whole, own = fingerprint(d), fingerprint(d, WORLD_MODEL_FILES)
    assert len(whole) == 16 and whole != own
    assert fingerprint(d) == whole  # stable
    (d / "judge" / "model.safetensors").write_bytes(b"judge-2")  # an add-on changes
    assert fingerprint(d) != whole and fingerprint(d, WORLD_MODEL_FILES) == own
    (d / "notes.txt").write_text("trained on tuesday")  # a stray file beside the model's own
    assert fingerprint(d, WORLD_MODEL_FILES) == own
    (d / "model.safetensors").write_bytes(b"weights-2")  # the model itself changes
    assert fingerprint(d, WORLD_MODEL_FILES) != own
    (d / "model.safetensors").write_bytes(b"weights-1")
    assert fingerprint(d, WORLD_MODEL_FILES) == own  # contents, not times
    (d / "config.json").rename(d / "other.json")
    assert fingerprint(d, WORLD_MODEL_FILES) != own  # names count
    single = d / "model.safetensors"
    assert fingerprint(single) is not None and fingerprint(tmp_path / "absent") is None
    assert fingerprint(tmp_path / "ckpt" / "judge", ("absent.json",)) is None


def test_a_big_file_is_hashed_by_its_size_and_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "WHOLE_FILE", 1000)
    monkeypatch.setattr(provenance, "EDGE", 100)
    f = tmp_path / "big.bin"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    f.write_bytes(bytes(data))
    first = fingerprint(f)
    data[2500] ^= 1  # the middle of a big file is not read
    f.write_bytes(bytes(data))
    assert fingerprint(f) == first
    data[10] ^= 1  # its head is
    f.write_bytes(bytes(data))
    assert fingerprint(f) != first
    f.write_bytes(bytes(data) + b"x")  # and its size
    assert fingerprint(f) != first


def test_references_are_found_in_nested_specs(tmp_path):
    specs = {
        "bc:path=A/step_000250": [("path", "A/step_000250")],
        "noisy:base=bc:path=B,scale=0.3": [("path", "B")],
        "cem:wm=minivae_dit_tiny,preset=cpu": [("wm", "minivae_dit_tiny")],
        "cem:wm=m,checkpoint=/c/m,goal=data,goal_data=g.h5": [("wm", "m"), ("checkpoint", "/c/m"),
                                                               ("goal_data", "g.h5")],
        "consensus:vote=mean,judges=vlm:path=V1,frames=4+latent_classifier:path=C": [("path", "V1"), ("path", "C")],
        "scripted": [],
        "replay:path=demos.h5,demo=3": [("path", "demos.h5")],
    }
    for spec, refs in specs.items():
        assert SPEC_REFS.findall(spec) == refs, spec
    (tmp_path / "a.npy").write_bytes(b"1")
    got = spec_fingerprints(f"noisy:base=replay:path={tmp_path / 'a.npy'},scale=0.1")
    assert list(got) == [f"path={tmp_path / 'a.npy'}"]
    assert spec_fingerprints("bc:path=/nonexistent/step_1") == {}  # nothing there: nothing to record
    # a world model named by a policy: its own files, the shipped embedded checkpoint here
    emb = spec_fingerprints("cem:wm=minivae_dit_tiny")
    assert list(emb) == ["wm=minivae_dit_tiny"] and len(emb["wm=minivae_dit_tiny"]) == 16
    # CEM's proprio term also reads the world model's proprio readout
    assert spec_fingerprints("cem:wm=minivae_dit_tiny,proprio=0") == emb
    with_readout = spec_fingerprints("cem:wm=minivae_dit_tiny,proprio=0.3")
    assert list(with_readout) == ["wm=minivae_dit_tiny", "wm=minivae_dit_tiny proprio"]
    assert with_readout["wm=minivae_dit_tiny proprio"] == fingerprint(ROOT / "checkpoints/minivae_dit_tiny/proprio")
    # the dino_wm preset weighs the proprio term 1 (DINO-WM's alpha) without saying proprio=
    assert spec_fingerprints("cem:wm=minivae_dit_tiny,preset=dino_wm") == with_readout
    assert spec_fingerprints("cem:wm=minivae_dit_tiny,preset=dino_wm,proprio=0") == emb
    # cem:...,checkpoint=DIR loads DIR, not the named folder: DIR is what is fingerprinted
    other = tmp_path / "other_wm"
    other.mkdir()
    for name in WORLD_MODEL_FILES:
        (other / name).write_bytes(b"another model's " + name.encode())
    (other / "proprio").mkdir()
    (other / "proprio" / "model.safetensors").write_bytes(b"its readout")
    (tmp_path / "goals.h5").write_bytes(b"goal episodes")
    got = spec_fingerprints(f"cem:wm=minivae_dit_tiny,checkpoint={other},proprio=1,goal=data,"
                            f"goal_data={tmp_path / 'goals.h5'}")
    assert got == {"wm=minivae_dit_tiny": fingerprint(other, WORLD_MODEL_FILES),
                   "wm=minivae_dit_tiny proprio": fingerprint(other / "proprio"),
                   f"goal_data={tmp_path / 'goals.h5'}": fingerprint(tmp_path / "goals.h5")}
    assert got["wm=minivae_dit_tiny"] != emb["wm=minivae_dit_tiny"]


def test_resume_refuses_other_weights_and_accepts_older_run_folders(tmp_path):
    store = RunStore(tmp_path / "run")
    ident = {"env_ids": ["metaworld/reach-v3"], "policies": ["bc:path=P"], "checkpoints": {"path=P": "aaaa"}}
    store.claim(ident)
    assert store.check(ident) is True
    with pytest.raises(HarnessError, match=r"other weights \(path=P changed since it began"):
        store.check({**ident, "checkpoints": {"path=P": "bbbb"}})
    with pytest.raises(HarnessError, match=r'differs in: checkpoints: path=P "aaaa" there, null now, path=Q null there, '
                                           r'"cccc" now; policies: \["bc:path=P"\] there only, \["bc:path=Q"\] now only\)'):
        store.check({**ident, "policies": ["bc:path=Q"], "checkpoints": {"path=Q": "cccc"}})
    # a folder from before fingerprints were recorded resumes as it did
    old = RunStore(tmp_path / "old")
    legacy = {k: v for k, v in ident.items() if k != "checkpoints"}
    old.claim(legacy)
    assert old.check(ident) is True
    assert json.loads((tmp_path / "old" / "run.json").read_text()) == legacy


@requires_metaworld
def test_a_run_records_its_weights_and_refuses_to_mix_in_others(tmp_path):
    actions = tmp_path / "actions.npy"
    np.save(actions, np.zeros((5, 4), np.float32))
    out = tmp_path / "run"
    args = ("eval", "--env", "metaworld/reach-v3", "-p", f"replay:path={actions}", "--episodes", "2",
            "--max-steps", "5", "--camera", "none", "--video", "none", "--out", str(out), "--no-progress")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    key = f"path={actions}"
    results = json.loads((out / "results.json").read_text())
    assert results["checkpoints"] == {key: fingerprint(actions)}
    assert "world_model_inference" not in results  # no world model in this run
    assert json.loads((out / "run.json").read_text())["checkpoints"] == {key: fingerprint(actions)}
    # leave the second episode to be run again, as after a kill
    lines = (out / "episodes.jsonl").read_text().splitlines(keepends=True)
    (out / "episodes.jsonl").write_text(lines[0])
    np.save(actions, np.ones((5, 4), np.float32))  # other "weights" under the same name
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "other weights" in proc.stderr and key in proc.stderr
    assert len(read_jsonl(out / "episodes.jsonl")) == 1  # nothing was added
    np.save(actions, np.zeros((5, 4), np.float32))  # the old weights back: it resumes
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(out / "episodes.jsonl")) == 2
