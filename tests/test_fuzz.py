"""Fuzz-style bad input: malformed eval configs and YAML, CLI values,
checkpoints, dataset files, and policies that return malformed actions.

Every case must end in one clear line on stderr starting with ``error: `` and exit code 2, or,
for a fault that can only appear while an episode runs, an ``error`` episode record and exit 0;
never a traceback, a hang (pytest-timeout / subprocess timeouts) or a touched run folder: a
finished run folder is snapshotted byte for byte and compared after every batch of cases.

Cases are generated from seeded ``random`` streams (a failure names its seed and case) on top of
hand-picked ones. Most run through ``harness.cli.main`` in this process (it maps HarnessError and
usage errors to one line + exit 2, exactly as the console script); a few go through a real
``python -m harness`` where the process's own exit path matters. ``-m slow`` runs many more
generated cases. The hand-picked CLI cases of test_eval_cli (BAD_INPUTS) are not repeated here.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import HAS_METAWORLD, ROOT, read_jsonl, requires_metaworld, run_cli

WM_CKPT = ROOT / "checkpoints" / "minivae_dit_tiny"
ENCODER_CKPT = ROOT / "checkpoints" / "encoders" / "minivae"
BC_CKPT = ROOT / "checkpoints" / "policies" / "bc_metaworld" / "step_000050"

# the finished run every eval case points its --out at: the same settings, so only the bad value differs
BASE = ["--env", "metaworld/reach-v3", "-p", "random", "--episodes", "1", "--max-steps", "3", "--video", "none",
        "--no-progress"]
RUN_ARGS = [*BASE, "--camera", "none"]


def cli(capsys, *args: str) -> tuple[int, str]:
    """``harness ARGS`` in this process: (exit code, stderr). An unexpected exception propagates
    (main re-raises it), which fails the test with its traceback."""
    from harness.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, case: object, needle: str | None = None) -> None:
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), f"{case!r}: rc={rc}\n{err}"
    assert "Traceback" not in err and len(lines[0]) < 1000, f"{case!r}: {err[:2000]}"
    if needle is not None:
        assert needle in lines[0], f"{case!r}: {lines[0]}"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A complete one-episode run folder and its bytes."""
    if not HAS_METAWORLD:
        pytest.skip('Meta-World not installed: pip install -e ".[metaworld]"')
    from harness.cli import main

    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["eval", *RUN_ARGS, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["complete"]
    return out, snapshot(out)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run from an empty folder, so a default ``runs/`` written by mistake is seen."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_untouched(finished_run, cwd: Path) -> None:
    out, before = finished_run
    assert snapshot(out) == before, "a rejected command changed the finished run folder"
    assert not (cwd / "runs").exists(), "a rejected command wrote a run folder"


# ---------------------------------------------------------------------------- eval YAML configs

# Values that no eval config may accept, per field (each alone must be refused).
INVALID = {
    "env": [5, ["metaworld/reach-v3"], {"a": 1}, "", "nosuch/env", "metaworld/reach-v9", True, 1.5],
    "policies": [5, [5], {"random": 1}, [], ["nosuch"], ["noisy:scale=abc"], [None], ["random", "random"]],
    "episodes": [-3, 0, "abc", 10**20, math.nan, math.inf, 1.5, True, [1], 100_001],
    "seed": [-1, "abc", math.nan, 1.5, [0], {"s": 1}],
    "max_steps": [0, -5, "x", math.inf, 2.5, [3]],
    "cameras": [5, [5], ["nosuch"], {"corner2": 1}, [None]],
    "image_size": [0, 4, 10**6, "x", math.nan, -64],
    "stop_on_success": ["abc", 2, None, [True], 0.5],
    "video": ["sometimes", 5, ["all"], "first:0", "first:-1", "first:x", None],
    "video_fps": [0, -1, "x", 1.5, None],
    "workers": [0, -2, "x", 10**6, None],
    "executor": ["nosuch", 5, ["local"], None],
    "out": [5, ["a"], {"a": 1}, 1.5, True],
    "wm": ["nosuch", 5, ["minivae_dit_tiny"], {"a": 1}],
    "wm_batch": [0, -1, "x", None],
    "wm_precision": ["float16", 5, None, "bfloat16"],  # bfloat16: valid, but not without a --wm
    "wm_decoder": ["tiny", 5, None, "distilled"],  # distilled: valid, but not without a --wm
    "ray_address": ["auto", "127.0.0.1:6379", 5],
    "judge": ["nosuch", "latent_classifier:path=/x"],
    "wm_checkpoint": ["/nonexistent", 5],
}


def valid_config(out: Path) -> dict:
    return {"env": "metaworld/reach-v3", "policies": ["random"], "episodes": 1, "max_steps": 3,
            "cameras": ["none"], "video": "none", "out": str(out)}


def random_key(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(1, 12)))


def generated_configs(seed: int, n: int, out: Path):
    """(label, text) of n invalid configs: 1-3 fields set to invalid values, or an unknown key."""
    rng = random.Random(seed)
    allowed = set(valid_config(out)) | set(INVALID)
    for i in range(n):
        data = valid_config(out)
        if rng.random() < 0.15:
            key = random_key(rng)
            while key in allowed:
                key = random_key(rng)
            data[key] = rng.choice([1, "x", [1], None])
            label = f"unknown key {key}"
        else:
            fields = rng.sample(sorted(INVALID), rng.randint(1, 3))
            for f in fields:
                data[f] = rng.choice(INVALID[f])
            label = ", ".join(f"{f}={data[f]!r}" for f in fields)
        yield f"seed {seed} #{i}: {label}", yaml.safe_dump(data)


def garbage_texts(seed: int, n: int):
    """(label, bytes) of config files that are not a mapping or not YAML at all."""
    rng = random.Random(seed)
    fixed = [
        ("empty", b""), ("whitespace", b"  \n\n\t\n"), ("comment only", b"# nothing\n"),
        ("list", b"- env: metaworld/reach-v3\n"), ("scalar", b"metaworld/reach-v3\n"), ("number", b"42\n"),
        ("unclosed flow", b"env: [metaworld/reach-v3\n"), ("tab indent", b"env: x\n\tpolicies: y\n"),
        ("bad indent", b"env: x\n  policies: [a]\n episodes: 3\n"), ("duplicate anchors", b"a: *nowhere\n"),
        ("unhashable key", b"? [a, b]\n: 1\n"), ("deep nesting", b"env: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        ("alias bomb", b'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
                       + b"".join(f"{k}: &{k} [{','.join([f'*{p}'] * 9)}]\n".encode() for p, k in zip("abcdefg", "bcdefgh"))
                       + b"env: metaworld/reach-v3\npolicies: *h\n"),
        ("utf-16", "env: metaworld/reach-v3\n".encode("utf-16")),
        ("nul bytes", b"env: metaworld/reach-v3\x00\npolicies: [random]\n"),
    ]
    yield from fixed
    valid = yaml.safe_dump(valid_config(Path("x"))).encode()
    for i in range(n):
        kind = rng.choice(["random bytes", "truncated+garbage", "flipped bytes"])
        if kind == "random bytes":
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))
        elif kind == "truncated+garbage":
            data = valid[: rng.randint(0, len(valid))] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20)))
        else:
            buf = bytearray(valid)
            for _ in range(rng.randint(1, 5)):
                buf[rng.randrange(len(buf))] = rng.getrandbits(8)
            data = bytes(buf)
        yield f"seed {seed} #{i}: {kind}", data


def _config_cases(capsys, cwd: Path, finished_run, seed: int, n: int) -> int:
    out, _ = finished_run
    path = cwd / "c.yaml"
    count = 0
    for label, text in generated_configs(seed, n, out):
        path.write_text(text)
        rc, err = cli(capsys, "eval", "--config", path, "--no-progress")
        assert_one_line_error(rc, err, label)
        count += 1
    for label, data in garbage_texts(seed, n // 3):
        path.write_bytes(data)
        rc, err = cli(capsys, "eval", "--config", path, "--no-progress")
        if rc == 2:
            assert_one_line_error(rc, err, label)
        else:  # random bytes may still parse as a (useless) mapping: then it must say what is wrong
            pytest.fail(f"{label}: rc={rc} {err[:500]}")
        count += 1
    for label, target in [("directory", cwd), ("missing file", cwd / "nope.yaml")]:
        rc, err = cli(capsys, "eval", "--config", target, "--no-progress")
        assert_one_line_error(rc, err, label, "cannot read config")
    assert_untouched(finished_run, cwd)
    return count


@requires_metaworld
@pytest.mark.timeout(120)
def test_malformed_eval_configs(capsys, in_tmp, finished_run):
    assert _config_cases(capsys, in_tmp, finished_run, seed=0, n=60) >= 80


@requires_metaworld
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_malformed_eval_configs_many(capsys, in_tmp, finished_run):
    for seed in range(1, 6):
        _config_cases(capsys, in_tmp, finished_run, seed=seed, n=300)


def test_each_invalid_value_alone_is_refused(tmp_path):
    """Every value in INVALID is invalid on its own (so the generated combinations above are)."""
    from harness.errors import HarnessError
    from harness.run.config import EvalConfig
    from harness.run.evaluate import plan_eval

    if not HAS_METAWORLD:
        pytest.skip('Meta-World not installed: pip install -e ".[metaworld]"')
    for field, values in INVALID.items():
        for value in values:
            data = valid_config(tmp_path / "run") | {field: value}
            (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
            with pytest.raises(HarnessError):
                plan_eval(EvalConfig.from_yaml(tmp_path / "c.yaml"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- CLI values

CLI_CASES = [
    (["--episodes", "-3"], "--episodes -3"),
    (["--episodes", "abc"], "Invalid value for '--episodes'"),
    (["--episodes", "99999999999999999999"], "more than 100000"),
    (["--image-size", "0"], "out of range"),
    (["--camera", "nosuch"], "camera 'nosuch' does not exist"),
    (["-p", "noisy:scale=abc"], "not a number"),
    (["-p", "noisy:scale=nan"], "finite"),
    (["-p", "noisy:scale=1,scale=2"], "given twice"),
    (["-p", "bc:path=/nonexistent"], "not a folder"),
    (["-p", "replay:path=/nonexistent.h5"], "does not exist"),
    (["-p", "cem:wm=nosuch"], "unknown world model"),
    (["--wm", "nosuch"], "unknown world model"),
    (["--wm-batch", "0"], "--wm-batch 0"),
    (["--ray-address", "x"], "needs --executor ray"),
    (["--video", "first:0"], "video mode"),
    (["--executor", "nosuch"], "unknown executor"),
    (["--workers", "0"], "--workers 0"),
    (["--workers", "100000"], "at most"),
    (["--seed", "-1"], "--seed -1"),
    (["--max-steps", "0"], "--max-steps 0"),
    (["--video-fps", "0"], "--video-fps 0"),
    (["--judge", "nosuch"], "belong to a world model"),
    (["--wm-checkpoint", "/x"], "belong to a world model"),
    (["--wm", "minivae_dit_tiny", "--camera", "corner"], "models camera 'corner2'"),
    (["--wm", "minivae_dit_tiny", "--camera", "corner2", "--judge", "oracle"], "cannot judge"),
    (["--wm", "minivae_dit_tiny", "--camera", "corner2", "--judge", "nosuch"], "unknown judge"),
    (["--wm", "minivae_dit_tiny", "--camera", "corner2", "--wm-checkpoint", "/nonexistent"], "not a folder"),
    (["--env", "libero/libero_spatial/99"], None),
    (["--nosuch-flag", "1"], "No such option"),
]

NUMERIC_FLAGS = ["--episodes", "--seed", "--max-steps", "--image-size", "--workers", "--video-fps", "--wm-batch"]
TEXT_FLAGS = ["--env", "--policy", "--camera", "--video", "--executor", "--wm", "--judge"]


def generated_cli_values(seed: int, n: int):
    rng = random.Random(seed)
    bad_numbers = ["-1", "0", "-99999999999999999999", "1e3", "1.5", "nan", "inf", "", "0x10", "ten", "١٢"]
    for i in range(n):
        if rng.random() < 0.5:
            flag = rng.choice(NUMERIC_FLAGS)
            value = rng.choice(bad_numbers)
            if flag == "--seed" and value == "0":
                value = "-1"  # 0 is a valid seed
            yield f"seed {seed} #{i}", [flag, value]
        else:
            flag = rng.choice(TEXT_FLAGS)
            alphabet = string.printable + "éü漢\u202e"
            junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
            prefix = {"--policy": rng.choice(["", "noisy:", "noisy:scale=", "bc:path=", "replay:path="]),
                      "--video": rng.choice(["", "first:"])}.get(flag, "")
            yield f"seed {seed} #{i}", [flag, prefix + junk]


@requires_metaworld
@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra,needle", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_cli_values(capsys, in_tmp, finished_run, extra, needle):
    out, _ = finished_run
    base = BASE if "--camera" in extra else RUN_ARGS  # --camera adds to the list
    rc, err = cli(capsys, "eval", *base, *extra, "--out", out)
    assert_one_line_error(rc, err, extra, needle)
    assert_untouched(finished_run, in_tmp)


def _generated_cli_cases(capsys, cwd, finished_run, seed: int, n: int) -> None:
    out, _ = finished_run
    for label, extra in generated_cli_values(seed, n):
        rc, err = cli(capsys, "eval", *RUN_ARGS, *extra, "--out", out)
        assert_one_line_error(rc, err, (label, extra))
    assert_untouched(finished_run, cwd)


@requires_metaworld
@pytest.mark.timeout(120)
def test_generated_cli_values(capsys, in_tmp, finished_run):
    _generated_cli_cases(capsys, in_tmp, finished_run, seed=0, n=60)


@requires_metaworld
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_generated_cli_values_many(capsys, in_tmp, finished_run):
    for seed in range(1, 6):
        _generated_cli_cases(capsys, in_tmp, finished_run, seed=seed, n=300)


@requires_metaworld
def test_bad_input_through_the_console_script(tmp_path, finished_run):
    """The real process: one line, exit 2, no hang, for a usage error, a bad config and a
    torn checkpoint."""
    out, _ = finished_run
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_bytes(b"\xc3\x28" + bytes(random.Random(7).getrandbits(8) for _ in range(300)))  # not UTF-8
    torn = tmp_path / "wm"
    shutil.copytree(WM_CKPT, torn)
    (torn / "model.safetensors").write_bytes((torn / "model.safetensors").read_bytes()[:1000])
    cases = [
        (["eval", *RUN_ARGS, "--episodes", "abc", "--out", str(out)], "Invalid value"),
        (["eval", "--config", str(bad_yaml)], "not text"),
        (["eval", *RUN_ARGS, "--episodes", "99999999999999999999", "--out", str(out)], "more than 100000"),
        (["eval", "--env", "metaworld/reach-v3", "--wm", "minivae_dit_tiny", "--camera", "corner2",
          "--wm-checkpoint", str(torn), "--out", str(out)], "is corrupt"),
    ]
    for args, needle in cases:
        proc = run_cli(*args, cwd=tmp_path, timeout=60)
        assert_one_line_error(proc.returncode, proc.stderr, args, needle)
    assert_untouched(finished_run, tmp_path)


# ---------------------------------------------------------------------------- checkpoints

def corruptions(seed: int):
    """name -> function(bytes) -> bytes."""
    rng = random.Random(seed)
    return {
        "truncated": lambda b: b[: len(b) // 2],
        "empty": lambda b: b"",
        "random bytes": lambda b: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 4096))),
        "flipped header": lambda b: b[:8] + bytes([b[8] ^ 0xFF]) + b[9:] if len(b) > 9 else b"x",
        "json list": lambda b: b"[]",
        "json without format": lambda b: b"{}",
        "other format": lambda b: json.dumps({"format": "wm-harness-bc/1"}).encode(),
    }


def _corrupt_copy(src: Path, dest: Path, file: str, how: str, seed: int = 0) -> Path:
    shutil.copytree(src, dest)
    victim = dest / file
    victim.write_bytes(corruptions(seed)[how](victim.read_bytes()))
    return dest


CKPT_FILES = ["config.json", "model.safetensors"]
CORRUPTIONS = list(corruptions(0))


# a checkpoint used by eval: (source folder, the eval arguments naming a copy, what the error names)
EVAL_CHECKPOINTS = {
    "world model": (WM_CKPT, lambda copy: ["--wm", "minivae_dit_tiny", "--wm-checkpoint", copy], str),
    "BC policy": (BC_CKPT, lambda copy: ["-p", f"bc:path={copy}"], lambda copy: "BC policy"),
}


@requires_metaworld
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", list(EVAL_CHECKPOINTS))
def test_corrupt_eval_checkpoint_is_refused_before_running(capsys, in_tmp, finished_run, kind):
    out, _ = finished_run
    src, naming, needle = EVAL_CHECKPOINTS[kind]
    for file in CKPT_FILES:
        for how in CORRUPTIONS:
            copy = _corrupt_copy(src, in_tmp / f"{kind}-{file}-{how}".replace(" ", "_"), file, how)
            rc, err = cli(capsys, "eval", *BASE, "--camera", "corner2", "--image-size", "64", *naming(copy),
                          "--out", out)
            assert_one_line_error(rc, err, (file, how), needle(copy))
    assert_untouched(finished_run, in_tmp)


@pytest.mark.timeout(180)
def test_corrupt_encoder_checkpoint_is_refused(capsys, in_tmp, tmp_path):
    """An encoder copy (``--encoder-path``) torn the same ways, read by probe and train-wm."""
    data = _tiny_dataset(tmp_path / "d.h5")
    for file in CKPT_FILES:
        for how in ("truncated", "random bytes", "json list", "other format"):
            copy = _corrupt_copy(ENCODER_CKPT, in_tmp / f"enc-{file}-{how}".replace(" ", "_"), file, how)
            for args in (["probe", "--data", data, "--out", in_tmp / "probe", "--encoder", "minivae",
                          "--encoder-path", copy, "--no-progress"],
                         ["train-wm", "--data", data, "--encoder", "minivae", "--encoder-path", copy, "--steps", "1",
                          "--out", in_tmp / "wm", "--cache-dir", in_tmp / "cache", "--no-progress"]):
                rc, err = cli(capsys, *args)
                assert_one_line_error(rc, err, (args[0], file, how))
    assert not (in_tmp / "wm").exists() and not (in_tmp / "probe" / "probe.json").exists()


@requires_metaworld
@pytest.mark.timeout(300)
@pytest.mark.parametrize("file,how", [("config.json", "truncated"),
                                      pytest.param("model.safetensors", "random bytes", marks=pytest.mark.slow)])
def test_corrupt_judge_never_crashes_the_run(capsys, in_tmp, file, how):
    """A torn judge folder is found when the world model first runs: either refused up front
    (exit 2) or the world-model episodes are ``error`` records naming the file, the simulator
    episodes are unaffected, and the run ends normally (exit 0)."""
    wm = in_tmp / "wm"
    shutil.copytree(WM_CKPT, wm)
    victim = wm / "judge" / file
    victim.write_bytes(corruptions(0)[how](victim.read_bytes()))
    out = in_tmp / "run"
    rc, err = cli(capsys, "eval", "--env", "metaworld/reach-v3", "-p", "random", "--episodes", "2", "--max-steps",
                  "4", "--camera", "corner2", "--image-size", "64", "--video", "none", "--no-progress", "--wm",
                  "minivae_dit_tiny", "--wm-checkpoint", wm, "--out", out)
    if rc == 2:
        assert_one_line_error(rc, err, (file, how), "judge")
        return
    assert rc == 0 and "Traceback" not in err, err
    recs = read_jsonl(out / "episodes.jsonl")
    wm_recs = [r for r in recs if r["backend"] != "sim"]
    assert len(recs) == 4 and len(wm_recs) == 2
    assert all(r["outcome"] in ("success", "failure") for r in recs if r["backend"] == "sim")
    assert wm_recs[0]["outcome"] == "error" and str(victim) in wm_recs[0]["error"], wm_recs[0]
    assert json.loads((out / "results.json").read_text())["complete"]
    # a judge that failed to load fails every world-model episode: none runs unjudged
    assert wm_recs[1]["outcome"] == "error", wm_recs[1]
    res = json.loads((out / "results.json").read_text())
    assert res["results"]["random"]["wm:minivae_dit_tiny"]["overall"]["errors"] == 2


# ---------------------------------------------------------------------------- dataset files

def _tiny_dataset(path: Path, episodes: int = 3, T: int = 12, action_dim: int = 4, seed: int = 0) -> Path:
    """A valid dataset in the layout `harness collect` writes, with random content."""
    from harness.data.dataset import DatasetWriter, EpisodeData

    rng = np.random.default_rng(seed)
    with DatasetWriter(path) as w:
        for i in range(episodes):
            frames = rng.integers(0, 256, (T + 1, 64, 64, 3), dtype=np.uint8)
            w.add(EpisodeData(actions=rng.uniform(-1, 1, (T, action_dim)).astype(np.float32),
                              obs={"corner2_rgb": frames[:-1], "state": rng.normal(size=(T, 39)).astype(np.float32)},
                              final_obs={"corner2_rgb": frames[-1:]}, success=np.zeros(T, bool),
                              attrs={"env_id": "metaworld/reach-v3", "task": "reach-v3", "init_state": i,
                                     "instruction": "reach the goal position", "policy": "random", "success": False}))
    return path


def _replace(name: str, value):
    def edit(f):
        for demo in f["data"]:
            if name in f["data"][demo]:
                del f["data"][demo][name]
            f["data"][demo][name] = value
    return edit


def _h5(fn):
    def make(path: Path, good: Path):
        import h5py

        shutil.copy(good, path)
        with h5py.File(path, "r+") as f:
            fn(f)
    return make


def _fresh_h5(fn):
    def make(path: Path, good: Path):
        import h5py

        with h5py.File(path, "w") as f:
            fn(f)
    return make


def _bytes(fn):
    def make(path: Path, good: Path):
        path.write_bytes(fn(good.read_bytes()))
    return make


BAD_DATASETS = {
    "empty file": _bytes(lambda b: b""),
    "truncated": _bytes(lambda b: b[: len(b) // 2]),
    "random bytes": _bytes(lambda b: bytes(random.Random(3).getrandbits(8) for _ in range(5000))),
    "text": _bytes(lambda b: b"episode,action\n0,1\n"),
    "hdf5 without data": _fresh_h5(lambda f: f.create_group("other")),
    "data not a group": _fresh_h5(lambda f: f.create_dataset("data", data=np.arange(3))),
    "no episodes": _fresh_h5(lambda f: f.create_group("data")),
    "episode not a group": _fresh_h5(lambda f: f.create_group("data").create_dataset("demo_0", data=np.arange(3))),
    "no actions": _h5(lambda f: [f["data"][d].__delitem__("actions") for d in f["data"]]),
    "no obs": _h5(lambda f: [f["data"][d].__delitem__("obs") for d in f["data"]]),
    "1-D actions": _h5(_replace("actions", np.zeros(12, np.float32))),
    "text actions": _h5(_replace("actions", np.array([b"x"] * 12))),
    "NaN actions": _h5(_replace("actions", np.full((12, 4), np.nan, np.float32))),
    "float images": _h5(_replace("obs/corner2_rgb", np.zeros((12, 64, 64, 3), np.float32))),
    "grey images": _h5(_replace("obs/corner2_rgb", np.zeros((12, 64, 64), np.uint8))),
    "one-channel images": _h5(_replace("obs/corner2_rgb", np.zeros((12, 64, 64, 1), np.uint8))),
    "fewer actions than frames": _h5(_replace("actions", np.zeros((5, 4), np.float32))),
}

DATA_COMMANDS = {
    "train-wm": lambda d, o: ["train-wm", "--data", d, "--wm", "minivae_dit_tiny", "--steps", "1", "--batch-size", "2",
                              "--out", o / "wm", "--cache-dir", o / "cache", "--no-progress"],
    "train-policy": lambda d, o: ["train-policy", "--data", d, "--out", o / "bc", "--steps", "1", "--batch-size", "2",
                                  "--no-progress"],
    "probe": lambda d, o: ["probe", "--data", d, "--out", o / "probe", "--encoder", "minivae", "--encoder-path",
                           ENCODER_CKPT, "--seeds", "1", "--no-progress"],
    "eval-wm": lambda d, o: ["eval-wm", "--data", d, "--wm", "minivae_dit_tiny", "--out", o / "evalwm", "--videos", "0"],
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", list(DATA_COMMANDS))
def test_malformed_dataset_files(capsys, in_tmp, tmp_path, command):
    good = _tiny_dataset(tmp_path / "good.h5")
    made = []
    for name, make in BAD_DATASETS.items():
        path = in_tmp / f"{name.replace(' ', '_')}.h5"
        if not path.exists():
            make(path, good)
        out = in_tmp / f"out-{command}-{name.replace(' ', '_')}"
        rc, err = cli(capsys, *DATA_COMMANDS[command](path, out))
        if name == "fewer actions than frames" and command == "train-policy":
            # BC pairs each action with the frame before it: a shorter action list is usable
            assert rc in (0, 2) and "Traceback" not in err, err
            continue
        assert_one_line_error(rc, err, (command, name))
        assert not any(p.is_file() for p in out.rglob("*")), f"{command} on {name} wrote {list(out.rglob('*'))}"
        made.append(name)
    # a directory and a missing file too
    for target in (in_tmp, in_tmp / "missing.h5"):
        rc, err = cli(capsys, *DATA_COMMANDS[command](target, in_tmp / "o"))
        assert_one_line_error(rc, err, (command, str(target)))
    assert len(made) >= len(BAD_DATASETS) - 1


@pytest.mark.timeout(120)
def test_dataset_of_another_action_size_is_refused_by_world_model_commands(capsys, in_tmp, tmp_path):
    data = _tiny_dataset(tmp_path / "seven.h5", action_dim=7)
    rc, err = cli(capsys, *DATA_COMMANDS["eval-wm"](data, in_tmp))
    assert_one_line_error(rc, err, "eval-wm", "7-D actions; the world model takes 4-D")
    rc, err = cli(capsys, "plan-error", "--data", data, "--wm", "minivae_dit_tiny", "--pairs", "1", "--preset", "cpu")
    assert_one_line_error(rc, err, "plan-error", "7-D actions; the world model takes 4-D")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_randomly_damaged_datasets(capsys, in_tmp, tmp_path):
    """Random byte flips in a valid file: every command either works or says what is wrong."""
    good = _tiny_dataset(tmp_path / "good.h5").read_bytes()
    rng = random.Random(11)
    for i in range(40):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 50)):
            buf[rng.randrange(len(buf))] = rng.getrandbits(8)
        path = in_tmp / f"flip{i}.h5"
        path.write_bytes(bytes(buf))
        for command, build in DATA_COMMANDS.items():
            rc, err = cli(capsys, *build(path, in_tmp / f"out{i}-{command}"))
            if rc != 0:
                assert_one_line_error(rc, err, (i, command))


# ---------------------------------------------------------------------------- actions

class MalformedActions:
    """A test policy whose actions are wrong in a chosen way; ``after`` resets of good actions
    first (the simulator episode resets it once, its world-model twin a second time)."""

    observes = frozenset({"pixels"})  # acts closed-loop inside a world model too

    def __init__(self, env_info, kind: str = "shape", after: int = 0):
        self.kind, self.after, self.resets = kind, after, 0
        self.dim = env_info.action_space.shape[0]

    def reset(self, instruction, *, seed=None, init_state=None):
        self.resets += 1

    def act(self, observation):
        if self.resets <= self.after:
            return np.zeros(self.dim, np.float32)
        bad = {
            "shape": lambda: np.zeros(self.dim - 1, np.float32),
            "2-D": lambda: np.zeros((1, self.dim), np.float32),
            "scalar": lambda: np.float32(0.1),
            "none": lambda: None,
            "nan": lambda: np.full(self.dim, np.nan, np.float32),
            "inf": lambda: np.full(self.dim, -np.inf, np.float32),
            "text": lambda: np.array(["a"] * self.dim),
            "objects": lambda: np.array([object()] * self.dim),
            "int": lambda: np.ones(self.dim, np.int64),
            "raise": lambda: (_ for _ in ()).throw(RuntimeError("policy exploded")),
        }
        return bad[self.kind]()


@pytest.fixture(scope="module")
def malformed_policy():
    from policies.base import POLICIES

    if "malformed_actions_test" not in POLICIES:
        POLICIES.register("malformed_actions_test", MalformedActions)
    return "malformed_actions_test"


def _run_in_process(out: Path, policies: tuple[str, ...], **kw) -> list[dict]:
    from harness.run.config import EvalConfig
    from harness.run.evaluate import plan_eval, run_eval

    cfg = EvalConfig(env="metaworld/reach-v3", policies=policies, episodes=kw.pop("episodes", 1),
                     max_steps=kw.pop("max_steps", 4), video="none", out=str(out), workers=1, **kw)
    summary = run_eval(plan_eval(cfg))
    assert summary["complete"] and not summary["interrupted"]
    return read_jsonl(out / "episodes.jsonl")


ERROR_KINDS = {"shape": "shape", "2-D": "shape", "scalar": "shape", "none": "shape", "nan": "non-finite",
               "inf": "non-finite", "text": None, "objects": None, "raise": "policy exploded"}


@requires_metaworld
@pytest.mark.timeout(120)
def test_malformed_actions_are_error_records(tmp_path, malformed_policy):
    specs = tuple(f"{malformed_policy}:kind={k}" for k in ERROR_KINDS) + ("random",)
    recs = _run_in_process(tmp_path / "run", specs, cameras=("none",))
    assert len(recs) == len(specs)
    by_policy = {}
    for r in recs:
        by_policy.setdefault(r["policy"], []).append(r)
    assert all(r["outcome"] in ("success", "failure") for r in by_policy.pop("random"))  # the run went on
    for spec, rs in by_policy.items():
        needle = ERROR_KINDS[spec.split("kind=")[1]]
        for r in rs:
            assert r["outcome"] == "error" and r["length"] == 0 and "Traceback" in r["traceback"], r
            assert needle is None or needle in r["error"], (spec, r["error"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert all(res[s]["sim"]["overall"]["errors"] == 1 for s in by_policy)


@requires_metaworld
@pytest.mark.timeout(120)
def test_integer_actions_are_error_records(tmp_path, malformed_policy):
    recs = _run_in_process(tmp_path / "run", (f"{malformed_policy}:kind=int",), cameras=("none",))
    assert [r["outcome"] for r in recs] == ["error"]
    assert recs[0]["error"].startswith("TypeError: policy returned a int64 action at step 0")


@requires_metaworld
@pytest.mark.timeout(300)
def test_nan_action_inside_the_world_model_is_an_error_record(tmp_path, malformed_policy):
    """Good actions in the simulator, NaN in the world-model twin (closed loop): only the
    world-model records are errors."""
    spec = f"{malformed_policy}:kind=nan,after=1"
    recs = _run_in_process(tmp_path / "run", (spec,), episodes=1, cameras=("corner2",), image_size=64,
                           wm="minivae_dit_tiny")
    outcome = {r["backend"]: r for r in recs}
    assert outcome["sim"]["outcome"] in ("success", "failure") and outcome["sim"]["length"] == 4
    assert outcome["wm:minivae_dit_tiny"]["outcome"] == "error"
    assert "non-finite action" in outcome["wm:minivae_dit_tiny"]["error"]
