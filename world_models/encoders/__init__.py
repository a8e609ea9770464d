"""Frozen encoders, one registry. Pretrained ones load through transformers/diffusers from a local
folder or the Hugging Face cache (never the network); ``minivae`` and ``minijepa`` are trained here
from scratch (``harness train-encoder``) and are the embedded defaults."""

from __future__ import annotations

from harness.registry import Registry

from .base import Encoder

ENCODERS: Registry = Registry("encoder")

ENCODERS.register("minivae", "world_models.encoders.minivae:MiniVAE",
                  description="small convolutional VAE trained here (reconstruction latents)",
                  meta={"family": "reconstruction", "trained_here": True})
ENCODERS.register("minijepa", "world_models.encoders.minijepa:MiniJEPA",
                  description="small predictive encoder trained here (JEPA-style, EMA target)",
                  meta={"family": "prediction", "trained_here": True})
ENCODERS.register("vjepa", "world_models.encoders.pretrained:VJEPA2Encoder",
                  description="V-JEPA 2 (transformers VJEPA2Model), default facebook/vjepa2-vitl-fpc64-256",
                  meta={"family": "prediction", "extra": "models"})
ENCODERS.register("dino", "world_models.encoders.pretrained:Dinov2Encoder",
                  description="DINOv2 (transformers Dinov2Model), default facebook/dinov2-base",
                  meta={"family": "semantic", "extra": "models"})
ENCODERS.register("siglip", "world_models.encoders.pretrained:SiglipEncoder",
                  description="SigLIP 2 / SigLIP vision tower (transformers), default google/siglip2-base-patch16-224",
                  meta={"family": "semantic", "extra": "models"})
ENCODERS.register("vae", "world_models.encoders.pretrained:SDVAEEncoder",
                  description="SD-style VAE (diffusers AutoencoderKL), default stabilityai/sd-vae-ft-mse",
                  meta={"family": "reconstruction", "extra": "models"})


ENCODER_FORMAT = "wm-harness-encoder/1"


def build_encoder(spec: dict) -> Encoder:
    """``{"name": ..., "params": {...}}`` (as ``Encoder.spec()`` writes it) -> Encoder."""
    return ENCODERS.build(spec["name"], **spec.get("params", {}))


def is_trained_here(name: str) -> bool:
    return bool(ENCODERS.entry(name).meta.get("trained_here"))


def load_encoder(name: str, path: str | None = None, **params) -> Encoder:
    """A frozen encoder. Encoders trained here load from a ``harness train-encoder`` folder;
    pretrained ones from a local folder or the Hugging Face cache (``path`` = folder or repo id)."""
    from harness.errors import HarnessError

    from ..checkpoint import load_checkpoint, load_state

    if is_trained_here(name):
        if path is None:
            raise HarnessError(f"encoder {name!r} is trained here and needs its weights: pass --encoder-path DIR "
                               f"written by `harness train-encoder --encoder {name} --out DIR`")
        hint = f"Write one with `harness train-encoder --encoder {name} --out DIR`."
        config, tensors = load_checkpoint(path, f"encoder {name!r}", ENCODER_FORMAT, hint)
        if config["encoder"]["name"] != name:
            raise HarnessError(f"encoder checkpoint {path} holds {config['encoder']['name']!r}, not {name!r}: "
                               f"pass --encoder {config['encoder']['name']} or another folder")
        encoder = build_encoder(config["encoder"])
        load_state(encoder, tensors, "", str(path))
    else:
        encoder = ENCODERS.build(name, path=path, **params)
    encoder.eval()
    encoder.requires_grad_(False)
    return encoder


def save_encoder(folder, encoder: Encoder, train_info: dict | None = None):
    from ..checkpoint import save_checkpoint

    return save_checkpoint(folder, {"format": ENCODER_FORMAT, "encoder": encoder.spec(), "train": train_info or {}},
                           encoder.frozen_state())


__all__ = ["ENCODERS", "Encoder", "build_encoder", "is_trained_here", "load_encoder", "save_encoder"]
