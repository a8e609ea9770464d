"""The pretrained encoders (V-JEPA 2, DINOv2, SigLIP / SigLIP 2, SD VAE), each as a tiny random-init
config: shapes, determinism, the ``layer`` option, spec round trip, loading from a saved folder,
and one-line errors for missing weights."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason='transformers not installed: pip install -e ".[models]"')
pytest.importorskip("diffusers", reason='diffusers not installed: pip install -e ".[models]"')

from harness.errors import HarnessError, MissingExtraError  # noqa: E402
from world_models.encoders import ENCODERS, build_encoder  # noqa: E402
from world_models.encoders.pretrained import (  # noqa: E402
    Dinov2Encoder,
    SDVAEEncoder,
    SiglipEncoder,
    VJEPA2Encoder,
)

VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "patch_size": 8}
TINY = {  # name -> (registry name, constructor params); every one sees 32 px images
    "vjepa": ("vjepa", {"config": {**VIT, "crop_size": 32, "pred_hidden_size": 32,
                                   "pred_num_hidden_layers": 1, "pred_num_attention_heads": 2}}),
    "dino": ("dino", {"config": {**VIT, "intermediate_size": 64, "image_size": 32}}),
    "siglip2": ("siglip", {"config": {**VIT, "intermediate_size": 64, "num_patches": 16}}),
    "siglip": ("siglip", {"arch": "siglip",
                          "config": {**VIT, "intermediate_size": 64, "image_size": 32}}),
    "vae": ("vae", {"config": {"block_out_channels": [8, 16], "norm_num_groups": 8, "sample_size": 32,
                               "down_block_types": ["DownEncoderBlock2D"] * 2,
                               "up_block_types": ["UpDecoderBlock2D"] * 2}}),
}
EXPECTED = {"vjepa": ((4, 4), 32), "dino": ((4, 4), 32), "siglip2": ((4, 4), 32),
            "siglip": ((4, 4), 32), "vae": ((8, 8), 16)}  # 32 px / 2 (VAE) / patch 2 -> 8 x 8 x 16
TRANSFORMERS = ["vjepa", "dino", "siglip2", "siglip"]


def tiny(name: str, seed: int = 0, **overrides):
    registry_name, params = TINY[name]
    torch.manual_seed(seed)
    return ENCODERS.build(registry_name, random_init=True, **{**params, **overrides})


def config_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers / diffusers


def frames(seed: int = 0, size: int = 40) -> np.ndarray:
    """uint8 (B=2, T=3, H, W, 3), a size other than the encoders' own to exercise the resize."""
    return np.random.default_rng(seed).integers(0, 256, (2, 3, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(TINY))
def test_shape_grid_and_dim(name):
    enc = tiny(name)
    grid, dim = EXPECTED[name]
    assert (enc.grid, enc.dim, enc.image_size) == (grid, dim, 32)
    z = enc.encode(frames())
    assert z.shape == (2, 3, grid[0] * grid[1], dim) and z.dtype == torch.float32
    assert torch.isfinite(z).all()


@pytest.mark.parametrize("name", list(TINY))
def test_frozen_and_deterministic(name):
    a, b, c = tiny(name, seed=0), tiny(name, seed=0), tiny(name, seed=1)
    assert not any(p.requires_grad for p in a.parameters())
    a.train()  # a world model in training mode must not wake the frozen backbone
    assert not a.model.training
    x = frames()
    za = a.encode(x)
    assert torch.equal(za, a.encode(x))  # same input twice
    assert torch.equal(za, b.encode(x))  # same seed, same weights
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.allclose(za, c.encode(x))  # another seed, other weights


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_intermediate_layer(name):
    x = frames()
    last, mid, embed = (tiny(name, layer=k).encode(x) for k in (-1, 1, 0))
    assert mid.shape == last.shape == embed.shape
    assert not torch.allclose(mid, last) and not torch.allclose(embed, mid)
    with pytest.raises(HarnessError, match="layer must be -1"):
        tiny(name, layer=3)


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_intermediate_layer_is_that_hidden_state(layer):
    """Dropping the blocks after ``layer`` gives the full model's ``hidden_states[layer]``."""
    full, cut = tiny("dino"), tiny("dino", layer=layer)
    assert len(cut.model.encoder.layer) == max(layer, 1) and len(full.model.encoder.layer) == 2
    x = full.preprocess(frames()[0])
    ref = full.model(pixel_values=x, output_hidden_states=True).hidden_states[layer][:, 1:]
    torch.testing.assert_close(cut.encode_images(x), ref)


@pytest.mark.parametrize("name", list(TINY))
def test_spec_round_trip(name):
    enc = tiny(name, layer=1) if name in TRANSFORMERS else tiny(name)
    spec = enc.spec()
    assert spec["name"] == TINY[name][0] and spec["params"]["random_init"] is True
    torch.manual_seed(0)
    again = build_encoder(spec)
    assert type(again) is type(enc) and again.spec() == spec
    assert (again.grid, again.dim, again.image_size) == (enc.grid, enc.dim, enc.image_size)
    assert config_dict(again.model.config) == config_dict(enc.model.config)
    assert torch.equal(again.encode(frames()), enc.encode(frames()))


def test_image_size_override_changes_grid():
    enc = tiny("vjepa", image_size=48)  # RoPE positions follow crop_size, set from image_size
    assert enc.model.config.crop_size == 48 and enc.grid == (6, 6)
    assert enc.encode(frames()).shape == (2, 3, 36, 32)
    assert tiny("siglip", image_size=48).encode(frames()).shape == (2, 3, 36, 32)  # interpolated
    assert tiny("siglip2", image_size=48).encode(frames()).shape == (2, 3, 36, 32)
    with pytest.raises(HarnessError, match="multiple of 8"):
        tiny("dino", image_size=36)


def test_vae_tokens_group_latent_blocks_and_decode_undoes_it():
    enc = tiny("vae")
    x = enc.preprocess(frames()[0])  # (3, 3, 32, 32)
    lat = enc.model.encode(x).latent_dist.mean * enc.scale  # (3, 4, 16, 16)
    z = enc.encode_images(x)  # (3, 64, 16)
    assert torch.equal(z[:, 0], lat[:, :, 0:2, 0:2].reshape(3, 16))  # token (0, 0): top-left 2x2
    assert torch.equal(z[:, 1], lat[:, :, 0:2, 2:4].reshape(3, 16))  # row-major over the grid
    torch.testing.assert_close(enc.decode_images(z), enc.model.decode(lat / enc.scale).sample)
    out = enc.decode(enc.encode(frames()))
    assert out.shape == (2, 3, 32, 32, 3) and out.dtype == torch.uint8


@pytest.mark.parametrize("name", list(TINY))
def test_load_from_saved_folder(name, tmp_path):
    enc = tiny(name)
    enc.model.save_pretrained(tmp_path / "ckpt")
    params = {k: v for k, v in TINY[name][1].items() if k != "config"}
    loaded = ENCODERS.build(TINY[name][0], path=str(tmp_path / "ckpt"), **params)
    assert torch.equal(loaded.encode(frames()), enc.encode(frames()))
    assert loaded.spec()["params"]["path"] == str(tmp_path / "ckpt")


def test_siglip_loads_vision_tower_of_full_checkpoint(tmp_path):
    import transformers as tf

    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 0}
    for arch, config_cls, model_cls in [("siglip", tf.SiglipConfig, tf.SiglipModel),
                                        ("siglip2", tf.Siglip2Config, tf.Siglip2Model)]:
        torch.manual_seed(0)
        full = model_cls(config_cls(text_config=text, vision_config=TINY[arch][1]["config"]))
        full.save_pretrained(tmp_path / arch)
        enc = SiglipEncoder(path=str(tmp_path / arch))
        assert enc.naflex == (arch == "siglip2")
        torch.manual_seed(0)
        ref = tiny(arch)
        ref.model.load_state_dict(full.vision_model.state_dict())
        assert torch.equal(enc.encode(frames()), ref.encode(frames()))


@pytest.mark.parametrize("cls", [VJEPA2Encoder, Dinov2Encoder, SiglipEncoder, SDVAEEncoder])
def test_missing_weights_is_one_line_naming_the_path(cls, tmp_path):
    with pytest.raises(HarnessError) as err:
        cls(path=str(tmp_path / "nope"))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "nope") in msg and "--encoder-path" in msg
    with pytest.raises(HarnessError) as err:
        cls(path="nobody/no-such-model")
    from huggingface_hub import constants

    assert "\n" not in str(err.value) and constants.HF_HUB_CACHE in str(err.value)
    assert "hf download nobody/no-such-model" in str(err.value)


def test_wrong_family_checkpoint_is_refused(tmp_path):
    tiny("siglip").model.save_pretrained(tmp_path / "siglip")
    with pytest.raises(HarnessError, match="holds a 'siglip_vision_model' model, expected 'dinov2'"):
        Dinov2Encoder(path=str(tmp_path / "siglip"))


def test_config_without_random_init_is_refused():
    with pytest.raises(HarnessError, match="random_init=True"):
        Dinov2Encoder(config={"hidden_size": 32})


def test_missing_library_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[models\]"'):
        SDVAEEncoder(random_init=True)
