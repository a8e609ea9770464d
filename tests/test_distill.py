"""The distilled decoder: the sub-pixel PixelDecoder, `harness distill-decoder`, loading it beside
a world-model checkpoint (and refusing one distilled from another model), and `--wm-decoder`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='torch not installed: pip install -e ".[models]"')
pytest.importorskip("safetensors", reason='safetensors not installed: pip install -e ".[models]"')

from conftest import requires_metaworld, run_cli  # noqa: E402
from test_world_models import tiny_wm  # noqa: E402

from harness.data.dataset import DatasetWriter, EpisodeData  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.run.config import EvalConfig  # noqa: E402
from world_models.distill import (  # noqa: E402
    DISTILLED_DIR,
    DistillConfig,
    check_distilled,
    distill_decoder,
    save_distilled_decoder,
)
from world_models.pixel_decoder import ConvDecoder, PixelDecoder, ShuffleDecoder  # noqa: E402
from world_models.world_model import WorldModel  # noqa: E402


def scene(t: int, e: int, size: int = 32) -> np.ndarray:
    """A grey floor with a bright square whose place depends on the episode and the step."""
    img = np.full((size, size, 3), (60, 70, 80), np.uint8)
    y, x = (3 * e + t) % (size - 8), (5 * e + 2 * t) % (size - 8)
    img[y:y + 8, x:x + 8] = (220, 180, 40)
    return img


@pytest.fixture(scope="module")
def frames_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("distill") / "frames.h5"
    with DatasetWriter(path) as w:
        for e in range(6):
            frames = np.stack([scene(t, e) for t in range(21)])
            w.add(EpisodeData(actions=np.zeros((20, 4), np.float32), obs={"corner2_rgb": frames[:-1]},
                              final_obs={"corner2_rgb": frames[-1:]}, attrs={"env_id": "metaworld/reach-v3"}))
    return str(path)


@pytest.mark.parametrize("max_frames", [8, 37, 10_000])
def test_training_frames_are_evenly_spaced_over_all_episodes_read_one_at_a_time(frames_h5, tmp_path, max_frames):
    from world_models.data import episode_groups, frame_counts, load_episodes, split_episodes
    from world_models.distill import _frames

    second = tmp_path / "second.h5"  # a second dataset, of another length per episode
    with DatasetWriter(second) as w:
        for e in range(3):
            frames = np.stack([scene(t, 10 + e) for t in range(9 + e)])
            w.add(EpisodeData(actions=np.zeros((len(frames) - 1, 4), np.float32), obs={"corner2_rgb": frames[:-1]},
                              final_obs={"corner2_rgb": frames[-1:]}, attrs={"env_id": "metaworld/reach-v3"}))
    assert frame_counts(frames_h5, "corner2") == [21] * 6 and frame_counts(str(second), "corner2") == [9, 10, 11]

    class Model:  # what _frames reads of a world model
        info = {"camera": "corner2"}
        image_size = 32

    train, val = _frames(Model, DistillConfig(data=(frames_h5, str(second)), max_frames=max_frames, val_fraction=0.2))
    # the same frames as concatenating every episode first, then taking evenly spaced ones
    first, other = load_episodes(frames_h5, "corner2"), load_episodes(str(second), "corner2")
    # 20% held out per file: split_episodes' seeded stratified draw, one episode of each here
    (tr1, va1), (tr2, va2) = (split_episodes(episode_groups(p, "corner2"), 0.2, 0) for p in (frames_h5, str(second)))
    assert len(va1) == 1 and len(va2) == 1
    all_train = np.concatenate([first[i].frames for i in tr1] + [other[i].frames for i in tr2])
    all_val = np.concatenate([first[i].frames for i in va1] + [other[i].frames for i in va2])
    keep = lambda x, k: x if len(x) <= k else x[np.linspace(0, len(x) - 1, k).round().astype(int)]  # noqa: E731
    assert np.array_equal(train, keep(all_train, max_frames))
    assert np.array_equal(val, keep(all_val, max(1, max_frames // 4)))
    assert len(train) == min(max_frames, 5 * 21 + sum(other[i].frames.shape[0] for i in tr2))


def test_shuffle_decoder_shapes_and_configs():
    d = PixelDecoder(16, (4, 4), 64, width=32, arch="shuffle")
    assert isinstance(d.body, ShuffleDecoder) and d.body.work == 16
    assert d(torch.randn(2, 16, 16)).shape == (2, 3, 64, 64)
    assert d.config == {"dim": 16, "grid": [4, 4], "image_size": 64, "width": 32, "arch": "shuffle", "shuffle": 4}
    again = PixelDecoder.from_config(d.config)
    again.load_state_dict(d.state_dict())
    z = torch.randn(3, 16, 16)
    assert torch.equal(again(z), d(z))
    # a 16 x 16 token grid (DINOv2 at 224 px) reaches 224 / 4 = 56 by resizing before the shuffle
    assert PixelDecoder(8, (16, 16), 224, width=16, arch="shuffle")(torch.randn(1, 256, 8)).shape == (1, 3, 224, 224)
    # a config saved before ``arch`` existed is the convolutional decoder it always was
    old = PixelDecoder.from_config({"dim": 8, "grid": [4, 4], "image_size": 32, "width": 16})
    assert isinstance(old.body, ConvDecoder) and "arch" not in old.config
    with pytest.raises(ValueError, match="arch must be one of conv, shuffle"):
        PixelDecoder(8, (4, 4), 32, arch="pixel")
    with pytest.raises(ValueError, match="divide the image size"):
        PixelDecoder(8, (4, 4), 30, arch="shuffle", shuffle=4)


def test_distillation_learns_the_full_decoder_and_loads_beside_the_checkpoint(saved_wm, frames_h5):
    wm, folder = saved_wm
    short, m_short = distill_decoder(wm, DistillConfig(data=(frames_h5,), steps=3, width=16, batch_size=16, seed=0,
                                                       threads=1))
    student, m = distill_decoder(wm, DistillConfig(data=(frames_h5,), steps=250, width=16, batch_size=16, seed=0,
                                                   threads=1))
    assert m["train_frames"] == 105 and m["val_frames"] == 21  # 5 episodes x 21 frames, the last one held out
    # a random-init teacher on 105 frames is hard to generalise from: measured 13.7 -> 16.7 dB held out
    assert m["val_mse_vs_full"] < 0.7 * m_short["val_mse_vs_full"]
    assert m["val_psnr_vs_full"] > m_short["val_psnr_vs_full"] + 2
    save_distilled_decoder(student, wm, folder / DISTILLED_DIR, metrics=m)
    check_distilled(folder, "minivae_dit_tiny")

    loaded = WorldModel.load(folder)
    z = wm.encode(np.stack([scene(t, 0) for t in range(3)])[None])  # (1, 3, N, D)
    got = loaded.decode(z, decoder="distilled")
    want = wm.encoder.postprocess(student(z[0])).unsqueeze(0)
    assert got.dtype == torch.uint8 and got.shape == (1, 3, 32, 32, 3)
    assert torch.equal(got, want)
    assert not torch.equal(got, loaded.decode(z))  # the full decoder still answers by default
    low = loaded.decode(z, dtype=torch.bfloat16, decoder="distilled")
    assert (low.int() - got.int()).abs().float().mean() < 3

    from world_models.env import WorldModelVectorEnv

    venv = WorldModelVectorEnv(loaded, "corner2", 2, image_size=64, decoder="distilled")
    obs, info = venv.reset(seed=0, options={"context": np.stack([scene(0, 0), scene(0, 1)])})
    assert obs["pixels"]["corner2"].shape == (2, 64, 64, 3)
    small = loaded.decode(torch.as_tensor(info["latent"])[:, None], decoder="distilled")[:, 0]
    resized = torch.nn.functional.interpolate(small.permute(0, 3, 1, 2), size=(64, 64), mode="bilinear",
                                              align_corners=False).permute(0, 2, 3, 1)
    assert np.array_equal(obs["pixels"]["corner2"], resized.numpy())


def test_a_missing_or_foreign_distilled_decoder_is_one_clear_line(saved_wm, tmp_path):
    wm, folder = saved_wm
    z = torch.zeros(1, 1, wm.encoder.num_tokens, wm.encoder.dim)
    with pytest.raises(HarnessError, match="has no distilled decoder.*harness distill-decoder --wm minivae_dit_tiny"):
        wm.decode(z, decoder="distilled")
    with pytest.raises(HarnessError, match="has no distilled decoder"):
        check_distilled(folder, "minivae_dit_tiny")
    from world_models.env import WorldModelEnv

    with pytest.raises(HarnessError, match="has no distilled decoder"):  # at construction, not at the first step
        WorldModelEnv(wm, "corner2", decoder="distilled")
    # distilled from this model, then put beside another one: refused
    student = PixelDecoder(wm.encoder.dim, wm.encoder.grid, wm.image_size, 16, arch="shuffle")
    save_distilled_decoder(student, wm, folder / DISTILLED_DIR)
    other = tiny_wm("minivae", seed=1)
    other_folder = other.save(tmp_path / "other")
    shutil.copytree(folder / DISTILLED_DIR, other_folder / DISTILLED_DIR)
    with pytest.raises(HarnessError, match="made for another world model"):
        WorldModel.load(other_folder).decode(z, decoder="distilled")
    with pytest.raises(HarnessError, match="made for another world model"):
        check_distilled(other_folder, "minivae_dit_tiny")
    with pytest.raises(ValueError, match="decoder must be 'full' or 'distilled'"):
        wm.decode(z, decoder="tiny")


def test_wm_decoder_is_checked_and_names_the_run_only_when_set():
    base = dict(env="metaworld/reach-v3", wm="minivae_dit_tiny")
    ids = ["metaworld/reach-v3"]
    assert "wm_decoder" not in EvalConfig(**base).identity(ids)
    assert EvalConfig(**base, wm_decoder="distilled").identity(ids)["wm_decoder"] == "distilled"
    with pytest.raises(HarnessError, match="--wm-decoder 'tiny' is not a decoder: use full or distilled"):
        EvalConfig(**base, wm_decoder="tiny")
    with pytest.raises(HarnessError, match="--wm-decoder belong to a world model"):
        EvalConfig(env="metaworld/reach-v3", wm_decoder="distilled")
    with pytest.raises(HarnessError, match="--width 12 must be a multiple of 8"):
        DistillConfig(data=("x.h5",), width=12)


@requires_metaworld
def test_eval_without_a_distilled_decoder_is_refused_before_anything_runs(saved_wm, tmp_path):
    _, folder = saved_wm
    r = run_cli("eval", "--env", "metaworld/reach-v3", "--wm", "minivae_dit_tiny", "--wm-checkpoint", str(folder),
                "--wm-decoder", "distilled", "-n", "1", "--camera", "corner2", "--out", str(tmp_path / "run"),
                cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "has no distilled decoder" in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_cli_distill_decoder_then_eval_wm_through_it(saved_wm, frames_h5, tmp_path):
    _, folder = saved_wm
    r = run_cli("distill-decoder", "--wm", "minivae_dit_tiny", "--wm-checkpoint", str(folder), "--data", frames_h5,
                "--steps", "20", "--width", "16", "--batch-size", "8", "--threads", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "against the full decoder" in r.stdout and "x faster" in r.stdout
    saved = json.loads((folder / DISTILLED_DIR / "config.json").read_text())
    assert saved["decoder"]["arch"] == "shuffle" and saved["train"]["steps"] == 20
    assert saved["metrics"]["val_frames"] == 21
    check_distilled(folder, "minivae_dit_tiny")

    ev = tmp_path / "ev"
    r = run_cli("eval-wm", "--data", frames_h5, "--wm-checkpoint", str(folder), "--out", str(ev), "--horizon", "2",
                "--videos", "0", "--wm-decoder", "distilled")
    assert r.returncode == 0, r.stderr
    assert json.loads((ev / "fidelity.json").read_text())["decoder"] == "distilled"
