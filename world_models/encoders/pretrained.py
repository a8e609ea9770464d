"""Pretrained frozen encoders: V-JEPA 2, DINOv2, SigLIP / SigLIP 2 (transformers) and the SD VAE
(diffusers).

Weights come from a local folder or the Hugging Face cache, never the network. Every encoder can
instead be built from its config with random weights (``random_init=True``, ``config={...}``),
which is how the tests run a tiny one on a CPU. transformers/diffusers are imported inside
functions so this module imports with torch alone.

``layer`` picks the hidden state to return, indexed like transformers' ``hidden_states``:
``0`` is the patch embedding, ``k`` the output of block ``k`` (before any final norm); ``-1``
(default) is the model's final output, final norm included. The blocks after ``layer`` are
dropped at construction: they could never affect the output.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError, require_module

from .base import Encoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# loading ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _offline_and_quiet(library: str) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 (``local_files_only`` does the real work) and no load reports or
    progress bars from ``library`` (the unused text tower of a SigLIP checkpoint fills a screen)."""
    import importlib

    logs = importlib.import_module(f"{library}.utils.logging")
    old_env, old_level = os.environ.get("HF_HUB_OFFLINE"), logs.get_verbosity()
    bars = logs.is_progress_bar_enabled()
    os.environ["HF_HUB_OFFLINE"] = "1"
    logs.set_verbosity(logs.ERROR)
    logs.disable_progress_bar()
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        logs.set_verbosity(old_level)
        if bars:
            logs.enable_progress_bar()


def _is_repo_id(path: str) -> bool:
    return not Path(path).expanduser().exists() and _REPO_ID.match(path) is not None


def _missing_weights(what: str, path: str, default: str, err: Exception) -> HarnessError:
    """One line: which weights, where they were looked for, how to provide them."""
    how = (f"download them with `hf download {path if _is_repo_id(path) else default}` on a machine "
           f"with network and copy the cache here, or pass --encoder-path DIR (a folder with "
           f"config.json and the weights)")
    if _is_repo_id(path):
        from huggingface_hub import constants

        where = f"{path!r} not in the Hugging Face cache {constants.HF_HUB_CACHE}"
    else:
        folder = Path(path).expanduser()
        reason = "no such folder" if not folder.exists() else " ".join(str(err).split())[:200]
        where = f"not found at {str(folder)!r} ({reason})"
    return HarnessError(f"{what} weights {where}: {how}")


def _load(what: str, path: str, default: str, library: str, load: Any, **kwargs: Any) -> Any:
    """``load(path, local_files_only=True, **kwargs)`` offline; a missing file -> HarnessError."""
    try:
        with _offline_and_quiet(library):
            return load(path if _is_repo_id(path) else str(Path(path).expanduser()),
                        local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:  # transformers/diffusers/hub raise OSError subclasses
        raise _missing_weights(what, path, default, err) from err


def _load_model(what: str, path: str, default: str, library: str, load: Any,
                unused: tuple[str, ...] = (), **kwargs: Any) -> nn.Module:
    """Like ``_load``, but weights the checkpoint lacks are an error, not a silent random init
    (parameters under the ``unused`` prefixes excepted)."""
    model, info = _load(what, path, default, library, load, output_loading_info=True, **kwargs)
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(unused))
    if missing:
        raise HarnessError(f"{what}: the checkpoint at {path!r} lacks {len(missing)} of the model's "
                           f"weights (e.g. {', '.join(missing[:3])}); pass --encoder-path a {what} checkpoint")
    return model


def _check_type(what: str, path: str, config: Any, allowed: tuple[str, ...]) -> None:
    if config.model_type not in allowed:
        raise HarnessError(f"{what}: {path!r} holds a {config.model_type!r} model, expected "
                           f"{' or '.join(map(repr, allowed))}; pass --encoder-path a {what} checkpoint")


def _check_size(what: str, image_size: int, stride: int) -> None:
    if image_size <= 0 or image_size % stride:
        raise HarnessError(f"{what}: image_size must be a positive multiple of {stride}, got {image_size}")


class _Pretrained(Encoder):
    """Shared by the four: a frozen ``self.model`` (always in eval mode) and a ``spec()`` that
    stores the constructor arguments."""

    title: str = "?"  # for messages
    default_path: str = ""
    module: str = "transformers"

    def __init__(self, params: dict[str, Any]):
        super().__init__()
        require_module(self.module, f"{self.module} ({self.title} encoder)", "models")
        if params.get("config") is not None and not params.get("random_init"):
            raise HarnessError(f"{self.title}: config= overrides only apply with random_init=True "
                               f"(got config={params['config']!r} without it)")
        self._params = params

    @property
    def path(self) -> str:
        return self._params.get("path") or self.default_path

    def _load(self, load: Any, **kwargs: Any) -> Any:
        return _load(self.title, self.path, self.default_path, self.module, load, **kwargs)

    def _load_model(self, load: Any, **kwargs: Any) -> nn.Module:
        return _load_model(self.title, self.path, self.default_path, self.module, load, **kwargs)

    def _freeze(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        return model.eval()

    def train(self, mode: bool = True) -> _Pretrained:
        super().train(mode)
        self.model.eval()  # frozen: no dropout / drop-path even inside a training world model
        return self

    def spec(self) -> dict[str, Any]:
        params = {**self._params, "image_size": self.image_size}
        if not params.get("random_init"):
            params["path"] = self.path
        return {"name": self.kind, "params": params}

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.model.parameters())
        return p.device, p.dtype


def _select_layer(title: str, blocks: nn.ModuleList, layer: int) -> None:
    """Validate ``layer`` against the depth and drop the blocks it never reads."""
    depth = len(blocks)
    if layer != -1 and not 0 <= layer <= depth:
        raise HarnessError(f"{title}: layer must be -1 (final output) or 0..{depth} (hidden state "
                           f"index, 0 = patch embedding), got {layer}")
    if 0 <= layer < depth:  # transformers records hidden states only when at least one block runs
        del blocks[max(layer, 1):]


# V-JEPA 2 ------------------------------------------------------------------------------------
class VJEPA2Encoder(_Pretrained):
    """V-JEPA 2 video encoder (transformers ``VJEPA2Model``), per-frame patch tokens.

    V-JEPA 2 embeds tubelets of 2 frames x 16 x 16 pixels, so one frame alone is not a valid
    input: each frame is encoded as a clip of that frame repeated ``tubelet_size`` times, giving
    ``(S/16)^2`` tokens per frame (16 x 16 at 256 px). Frames are therefore encoded independently,
    with no temporal context. Positions are 3-D RoPE computed from ``config.crop_size``, so a
    non-default ``image_size`` is applied by setting ``crop_size`` (the weights do not depend on it).
    """

    kind = "vjepa"
    title = "V-JEPA 2"
    default_path = "facebook/vjepa2-vitl-fpc64-256"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, *, path: str | None = None, layer: int = -1, random_init: bool = False,
                 config: dict[str, Any] | None = None, image_size: int | None = None):
        super().__init__({"path": path, "layer": layer, "random_init": random_init,
                          "config": config, "image_size": image_size})
        from transformers import AutoConfig, VJEPA2Config, VJEPA2Model

        if random_init:
            cfg = VJEPA2Config(**(config or {}))
        else:
            cfg = self._load(AutoConfig.from_pretrained)
            _check_type(self.title, self.path, cfg, ("vjepa2",))
        self.image_size = image_size or cfg.crop_size
        _check_size(self.title, self.image_size, cfg.patch_size)
        cfg.crop_size = self.image_size
        if random_init:
            model = VJEPA2Model(cfg)
        else:
            # the predictor (for masked prediction) is never run here
            model = self._load_model(VJEPA2Model.from_pretrained, config=cfg, dtype=torch.float32,
                                     unused=("predictor.",))
        _select_layer(self.title, model.encoder.layer, layer)
        self.model = self._freeze(model)
        self.layer = layer
        self.tubelet = cfg.tubelet_size
        side = self.image_size // cfg.patch_size
        self.grid, self.dim = (side, side), cfg.hidden_size

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, D)."""
        device, dtype = self._device_dtype()
        clip = x.to(device, dtype).unsqueeze(1).expand(-1, self.tubelet, -1, -1, -1)  # (M, 2, 3, S, S)
        out = self.model(pixel_values_videos=clip, skip_predictor=True,
                         output_hidden_states=self.layer != -1)
        return (out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]).float()


# DINOv2 --------------------------------------------------------------------------------------
class Dinov2Encoder(_Pretrained):
    """DINOv2 (transformers ``Dinov2Model``): patch tokens without the CLS token.

    The default image size is 224 (the processor's crop, 16 x 16 tokens for patch 14), not the
    config's ``image_size`` (518 for the hub checkpoints, the size of the position table, which
    is interpolated to any size); a config smaller than 224 keeps its own size.
    """

    kind = "dino"
    title = "DINOv2"
    default_path = "facebook/dinov2-base"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, *, path: str | None = None, layer: int = -1, random_init: bool = False,
                 config: dict[str, Any] | None = None, image_size: int | None = None):
        super().__init__({"path": path, "layer": layer, "random_init": random_init,
                          "config": config, "image_size": image_size})
        from transformers import AutoConfig, Dinov2Config, Dinov2Model

        if random_init:
            model = Dinov2Model(Dinov2Config(**(config or {})))
        else:
            cfg = self._load(AutoConfig.from_pretrained)
            _check_type(self.title, self.path, cfg, ("dinov2",))
            model = self._load_model(Dinov2Model.from_pretrained, config=cfg, dtype=torch.float32)
        cfg = model.config
        self.image_size = image_size or min(cfg.image_size, 224)
        _check_size(self.title, self.image_size, cfg.patch_size)
        _select_layer(self.title, model.encoder.layer, layer)
        self.model = self._freeze(model)
        self.layer = layer
        side = self.image_size // cfg.patch_size
        self.grid, self.dim = (side, side), cfg.hidden_size

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, D)."""
        device, dtype = self._device_dtype()
        out = self.model(pixel_values=x.to(device, dtype), output_hidden_states=self.layer != -1)
        h = out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]  # (M, 1 + N, D)
        return h[:, 1:].float()


# SigLIP / SigLIP 2 ---------------------------------------------------------------------------
class SiglipEncoder(_Pretrained):
    """SigLIP or SigLIP 2 vision tower (transformers): all output tokens are patch tokens.

    The class is chosen by the checkpoint's config: ``siglip`` (SigLIP, and the fixed-resolution
    SigLIP 2 checkpoints such as ``google/siglip2-base-patch16-224``) -> ``SiglipVisionModel``;
    ``siglip2`` (NaFlex) -> ``Siglip2VisionModel``. ``arch`` picks it for ``random_init``.
    ``Siglip2VisionModel`` takes pre-patchified pixels ``(M, N, p*p*3)`` (each patch flattened
    row, column, channel) plus ``pixel_attention_mask`` ``(M, N)`` and ``spatial_shapes``
    ``(M, 2)``; they are built here for the fixed square ``image_size``.
    """

    kind = "siglip"
    title = "SigLIP"
    default_path = "google/siglip2-base-patch16-224"
    mean, std = HALF, HALF
    ARCHS = ("siglip", "siglip2")

    def __init__(self, *, path: str | None = None, layer: int = -1, random_init: bool = False,
                 config: dict[str, Any] | None = None, image_size: int | None = None,
                 arch: str = "siglip2"):
        super().__init__({"path": path, "layer": layer, "random_init": random_init,
                          "config": config, "image_size": image_size, "arch": arch})
        import transformers as tf

        if arch not in self.ARCHS:
            raise HarnessError(f"SigLIP: arch must be one of {', '.join(self.ARCHS)}, got {arch!r}")
        classes = {"siglip_vision_model": (tf.SiglipVisionConfig, tf.SiglipVisionModel),
                   "siglip2_vision_model": (tf.Siglip2VisionConfig, tf.Siglip2VisionModel)}
        if random_init:
            config_cls, model_cls = classes[f"{arch}_vision_model"]
            model = model_cls(config_cls(**(config or {})))
        else:
            cfg = self._load(tf.AutoConfig.from_pretrained)
            cfg = getattr(cfg, "vision_config", cfg)  # a full (text + vision) checkpoint
            _check_type(self.title, self.path, cfg, tuple(classes))
            model = self._load_model(classes[cfg.model_type][1].from_pretrained, config=cfg,
                                     dtype=torch.float32)
        cfg = model.config
        self.naflex = cfg.model_type == "siglip2_vision_model"
        self.patch = cfg.patch_size
        # SigLIP 2's position table is a sqrt(num_patches)^2 grid, resized to the input
        default = int(cfg.num_patches**0.5) * cfg.patch_size if self.naflex else cfg.image_size
        self.image_size = image_size or default
        _check_size(self.title, self.image_size, cfg.patch_size)
        self.interpolate = not self.naflex and self.image_size != cfg.image_size
        _select_layer(self.title, model.encoder.layers, layer)
        self.model = self._freeze(model)
        self.layer = layer
        side = self.image_size // cfg.patch_size
        self.grid, self.dim = (side, side), cfg.hidden_size

    def _patchify(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(M, 3, S, S) -> Siglip2VisionModel inputs for a full, unpadded square grid."""
        M, C, S, _ = x.shape
        p, h = self.patch, S // self.patch
        patches = x.reshape(M, C, h, p, h, p).permute(0, 2, 4, 3, 5, 1).reshape(M, h * h, p * p * C)
        return {"pixel_values": patches,
                "pixel_attention_mask": torch.ones(M, h * h, dtype=torch.long, device=x.device),
                "spatial_shapes": torch.tensor([[h, h]], dtype=torch.long, device=x.device).expand(M, 2)}

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, D)."""
        device, dtype = self._device_dtype()
        x = x.to(device, dtype)
        inputs = self._patchify(x) if self.naflex else {"pixel_values": x,
                                                        "interpolate_pos_encoding": self.interpolate}
        out = self.model(**inputs, output_hidden_states=self.layer != -1)
        return (out.last_hidden_state if self.layer == -1 else out.hidden_states[self.layer]).float()


# SD VAE --------------------------------------------------------------------------------------
class SDVAEEncoder(_Pretrained):
    """Stable Diffusion VAE (diffusers ``AutoencoderKL``), latents grouped into tokens.

    Latents are the posterior mean, ``(mean - shift_factor) * scaling_factor``; each ``patch x
    patch`` block of latent pixels becomes one token of ``latent_channels * patch^2`` dims, so a
    256 px image gives 32 x 32 x 4 latents -> 16 x 16 tokens of 16 dims. ``decode_images``
    undoes both and runs the VAE decoder. Pixels are normalised to [-1, 1], as the VAE expects.
    """

    kind = "vae"
    title = "SD VAE"
    default_path = "stabilityai/sd-vae-ft-mse"
    module = "diffusers"
    mean, std = HALF, HALF
    has_decoder = True

    def __init__(self, *, path: str | None = None, random_init: bool = False,
                 config: dict[str, Any] | None = None, image_size: int | None = None,
                 patch: int = 2):
        super().__init__({"path": path, "random_init": random_init, "config": config,
                          "image_size": image_size, "patch": patch})
        if patch < 1:
            raise HarnessError(f"{self.title}: patch must be >= 1, got {patch}")
        from diffusers import AutoencoderKL

        if random_init:
            vae = AutoencoderKL(**(config or {}))
        else:
            vae = self._load_model(AutoencoderKL.from_pretrained, torch_dtype=torch.float32)
        cfg = vae.config
        down = 2 ** (len(cfg.block_out_channels) - 1)
        self.image_size = image_size or cfg.sample_size
        _check_size(self.title, self.image_size, down * patch)
        self.model = self._freeze(vae)
        self.patch, self.channels = patch, cfg.latent_channels
        self.scale, self.shift = cfg.scaling_factor, cfg.shift_factor or 0.0
        side = self.image_size // (down * patch)
        self.grid, self.dim = (side, side), cfg.latent_channels * patch * patch

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(M, 3, S, S) -> (M, N, D)."""
        device, dtype = self._device_dtype()
        lat = self.model.encode(x.to(device, dtype)).latent_dist.mean  # (M, C, H, W)
        lat = (lat - self.shift) * self.scale
        M, C, H, W = lat.shape
        p, (h, w) = self.patch, self.grid
        z = lat.reshape(M, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5)  # (M, h, w, C, p, p)
        return z.reshape(M, h * w, C * p * p).float()

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """(M, N, D) -> (M, 3, S, S) in [-1, 1]."""
        device, dtype = self._device_dtype()
        M, N, D = z.shape
        p, (h, w), C = self.patch, self.grid, self.channels
        lat = z.to(device, dtype).reshape(M, h, w, C, p, p).permute(0, 3, 1, 4, 2, 5)
        lat = lat.reshape(M, C, h * p, w * p) / self.scale + self.shift  # (M, C, H, W)
        return self.model.decode(lat).sample.float()
