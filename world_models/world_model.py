"""WorldModel = frozen encoder + DiT transition (flow matching) + decoder, batched.

    encode(frames uint8 (B, T, H, W, 3)) -> latents (B, T, N, D)
    predict(latents (B, T_ctx, N, D), actions (B, K, A)) -> latents (B, K, N, D)
    decode(latents (B, T, N, D)) -> frames uint8 (B, T, S, S, 3)

Latents outside this class are the encoder's raw ones; the transition model works on latents
normalised per channel with statistics measured on the training set and stored in the checkpoint.
By default it predicts the *change* of each frame from the one before (normalised by the training
set's per-channel change statistics) rather than the frame itself: consecutive control steps
differ by a few percent of a latent's spread, so an absolute target would bury the dynamics under
the content, and a model that outputs zero starts as the copy-last-frame baseline.
``predict`` rolls out autoregressively in chunks of the model's horizon with a sliding window of
the last ``history`` frames; a context shorter than ``history`` (one frame after a reset) is
padded by repeating its first frame, which is how training windows at an episode's start look.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .checkpoint import WM_FORMAT, load_checkpoint, load_state, save_checkpoint
from .distill import DECODERS
from .dit import DiT, DiTConfig
from .encoders import Encoder, build_encoder, is_trained_here
from .flow_matching import SAMPLERS, resolve_shift, sample
from .inference import prepare_for_inference
from .pixel_decoder import PixelDecoder


@dataclass
class SamplerConfig:
    steps: int = 4
    method: str = "euler"
    shift: float | str = "auto"
    temperature: float = 1.0  # scale of the starting noise; 0 = the deterministic flow from the mean

    def __post_init__(self):
        if not 0.0 <= float(self.temperature) <= 2.0:
            raise ValueError(f"sampler temperature must be in [0, 2], got {self.temperature}")
        if int(self.steps) < 1:
            raise ValueError(f"sampler steps must be >= 1, got {self.steps}")
        if self.method not in SAMPLERS:
            raise ValueError(f"sampler method must be one of {', '.join(SAMPLERS)}, got {self.method!r}")
        if self.shift != "auto":
            resolve_shift(self.shift, 1, 1)


class WorldModel(nn.Module):
    def __init__(self, encoder: Encoder, transition: DiT, decoder: PixelDecoder | None,
                 latent_mean: torch.Tensor, latent_std: torch.Tensor, sampler: SamplerConfig | None = None,
                 info: dict[str, Any] | None = None, delta_mean: torch.Tensor | None = None,
                 delta_std: torch.Tensor | None = None):
        super().__init__()
        cfg = transition.config
        if (cfg.num_tokens, cfg.latent_dim) != (encoder.num_tokens, encoder.dim):
            raise ValueError(f"transition expects {cfg.num_tokens} tokens x {cfg.latent_dim} dims, encoder gives "
                             f"{encoder.num_tokens} x {encoder.dim}")
        if decoder is None and not encoder.has_decoder:
            raise ValueError(f"encoder {encoder.kind!r} has no decoder: pass a PixelDecoder")
        self.encoder = encoder
        self.transition = transition
        self.decoder = decoder
        self.register_buffer("latent_mean", latent_mean.float().reshape(-1).clone())
        self.register_buffer("latent_std", latent_std.float().reshape(-1).clone())
        self.predicts_delta = delta_mean is not None
        if self.predicts_delta:
            self.register_buffer("delta_mean", delta_mean.float().reshape(-1).clone())
            self.register_buffer("delta_std", delta_std.float().reshape(-1).clone())
        if cfg.context_deltas:
            if not self.predicts_delta:
                raise ValueError("a transition model with context_deltas needs delta statistics (target 'delta')")
            transition.delta_gain.copy_(self.latent_std / self.delta_std)
        self.sampler = sampler or SamplerConfig()
        self.info = dict(info or {})
        self._casts: dict[tuple[str, torch.dtype], nn.Module] = {}  # reduced-precision copies (not saved)
        self.folder: Path | None = None  # the checkpoint folder it was loaded from
        self.distilled: PixelDecoder | None = None  # the cheap decoder, loaded on first use (distill.py)
        self.proprio = None  # the proprioception readout, loaded on first use (proprio.py)
        self.inference: dict[str, Any] = {"path": "torch modules", "why": "not prepared for inference"}
        self.eval()
        self.requires_grad_(False)

    # facts ---------------------------------------------------------------------------------
    @property
    def history(self) -> int:
        return self.transition.config.history

    @property
    def horizon(self) -> int:
        return self.transition.config.horizon

    @property
    def action_dim(self) -> int:
        return self.transition.config.action_dim

    @property
    def frameskip(self) -> int:
        """Control steps per world-model step; ``predict`` takes actions of ``frameskip * A``."""
        return int(self.info.get("frameskip", 1))

    @property
    def env_action_dim(self) -> int:
        return self.action_dim // self.frameskip

    @property
    def alpha(self) -> float:
        c = self.transition.config
        return resolve_shift(self.sampler.shift, c.num_tokens, c.latent_dim)

    @property
    def image_size(self) -> int:
        return self.encoder.image_size

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    def to_target(self, last: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        """Raw latents of K future frames -> the transition model's target space.
        last (B, 1, N, D) is the frame before the first target."""
        if not self.predicts_delta:
            return self.normalize(future)
        steps = torch.diff(torch.cat([last, future], dim=1), dim=1)
        return (steps - self.delta_mean) / self.delta_std

    def from_target(self, last: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Inverse of ``to_target``: (B, K, N, D) in target space -> raw latents."""
        if not self.predicts_delta:
            return self.denormalize(x)
        return last + torch.cumsum(x * self.delta_std + self.delta_mean, dim=1)

    def transition_as(self, dtype: torch.dtype | None) -> DiT:
        """The transition model in ``dtype``: itself for float32, else a copy made on first use
        and kept (the model is frozen). bfloat16 pays only on CPUs with native bf16 dot products
        (AVX512-BF16, AMX); elsewhere its matmuls are slower than float32's."""
        return self._in("transition", dtype)

    def _in(self, part: str, dtype: torch.dtype | None) -> nn.Module:
        """A network of this model (transition, encoder, decoder, distilled) to run in ``dtype``:
        itself for float32, else its cast copy (``_cast``)."""
        if dtype is None or dtype == torch.float32:
            return getattr(self, part)
        return self._cast(part, dtype)

    def _cast(self, part: str, dtype: torch.dtype) -> nn.Module:
        if (part, dtype) not in self._casts:
            module = getattr(self, part)
            self._casts[(part, dtype)] = copy.deepcopy(module).to(dtype).requires_grad_(False).eval()
        return self._casts[(part, dtype)]

    # the contract ------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(frames)

    @torch.no_grad()
    def predict(self, latents: torch.Tensor, actions: np.ndarray | torch.Tensor,
                generator: torch.Generator | list[torch.Generator] | None = None, steps: int | None = None,
                temperature: float | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Raw latents of the K frames that follow ``latents`` under ``actions`` (any K).

        ``latents`` (B, T, N, D), or (1, T, N, D) for one context shared by B action sequences
        (CEM candidates): the context is then computed once for all of them. ``generator``: one
        for the batch, or one per row, so that an episode draws the same noise whichever batch
        it runs in. ``dtype``: run the transition network in that precision (torch.bfloat16);
        latents, noise and the integration stay float32."""
        _, T, N, D = latents.shape
        actions = torch.as_tensor(np.asarray(actions) if not isinstance(actions, torch.Tensor) else actions,
                                  dtype=torch.float32)
        B = actions.shape[0] if actions.ndim == 3 else -1
        if actions.ndim != 3 or latents.shape[0] not in (1, B) or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must be (B={latents.shape[0]}, K, A={self.action_dim}), got "
                             f"{tuple(actions.shape)}")
        H, chunk = self.history, self.horizon
        ctx = latents[:, -H:].float()  # raw
        if ctx.shape[1] < H:
            ctx = torch.cat([ctx[:, :1].expand(-1, H - ctx.shape[1], -1, -1), ctx], dim=1)
        temp = self.sampler.temperature if temperature is None else temperature
        out = []
        one_context = latents.shape[0] == 1 and B > 1  # CEM candidates: the frames they start from are common
        for k0 in range(0, actions.shape[1], chunk):
            a = actions[:, k0:k0 + chunk]
            if isinstance(generator, (list, tuple)):
                if len(generator) != B:
                    raise ValueError(f"predict got {len(generator)} generators for a batch of {B}")
                noise = torch.cat([torch.randn((1, a.shape[1], N, D), generator=g) for g in generator]) * temp
            else:
                noise = torch.randn((B, a.shape[1], N, D), generator=generator) * temp
            shared = max(0, H - k0) if one_context else 0  # leading context frames still the common ones
            x = sample(self.transition_as(dtype), self.normalize(ctx), a, steps=steps or self.sampler.steps,
                       method=self.sampler.method, alpha=self.alpha, noise=noise, shared=shared)  # (B, k, N, D)
            z = self.from_target(ctx[:, -1:], x)
            out.append(z)
            ctx = torch.cat([ctx.expand(B, -1, -1, -1), z], dim=1)[:, -H:]
        return torch.cat(out, dim=1)

    def distilled_decoder(self) -> PixelDecoder:
        """The distilled decoder (``<checkpoint>/distilled_decoder``), loaded once; one clear line
        saying how to make one when there is none."""
        if self.distilled is None:
            from .distill import load_distilled_decoder

            # a plain attribute, not a registered submodule: not part of state_dict() or modules()
            object.__setattr__(self, "distilled", load_distilled_decoder(self))
        return self.distilled

    def proprio_readout(self):
        """The proprioception readout (``<checkpoint>/proprio``, ``harness fit-proprio``), loaded
        once; one clear line saying how to fit one when there is none."""
        if self.proprio is None:
            from .proprio import load_proprio_readout

            self.proprio = load_proprio_readout(self)
        return self.proprio

    @torch.no_grad()
    def decoder_output(self, z: torch.Tensor, dtype: torch.dtype | None = None, decoder: str = "full") -> torch.Tensor:
        """Raw latents (M, N, D) -> the decoder's output (M, 3, S, S) in the encoder's normalised
        pixel space, before ``postprocess``. ``decoder`` "full": the pixel decoder, else the
        encoder's own (a VAE's); "distilled": the cheap one distilled from the full one (which
        learns from the full one's output here). ``dtype`` as in ``decode``."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be 'full' or 'distilled', got {decoder!r}")
        if decoder == "distilled":
            self.distilled_decoder()  # loaded once; one clear line when there is none
        part = "distilled" if decoder == "distilled" else "encoder" if self.decoder is None else "decoder"
        net = self._in(part, dtype)
        x = z if dtype is None else z.to(dtype)
        return net.decode_images(x) if part == "encoder" else net(x)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, dtype: torch.dtype | None = None, decoder: str = "full") -> torch.Tensor:
        """uint8 frames of raw latents. ``dtype`` torch.bfloat16 runs the decoder network in bf16
        (about 2x faster on CPUs with native bf16; within a few intensity levels of float32).
        ``decoder`` "distilled": through the cheap decoder distilled from the full one
        (``harness distill-decoder``; world_models/distill.py) instead of the full one."""
        if decoder == "full" and self.decoder is None:  # the encoder's own: Encoder.decode, 64 frames at a time
            return self._in("encoder", dtype).decode(latents if dtype is None else latents.to(dtype))
        B, T, N, D = latents.shape
        frames = self.encoder.postprocess(self.decoder_output(latents.reshape(B * T, N, D), dtype, decoder))
        return frames.view(B, T, *frames.shape[1:])

    # checkpoints -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "format": WM_FORMAT,
            "encoder": self.encoder.spec(),
            "encoder_weights": "embedded" if is_trained_here(self.encoder.kind) else "external",
            "transition": self.transition.config.to_dict(),
            "decoder": self.decoder.config if self.decoder is not None else None,
            "sampler": asdict(self.sampler),
            "info": self.info,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"transition.{k}": v for k, v in self.transition.state_dict().items()}
        out["latent_mean"] = self.latent_mean
        out["latent_std"] = self.latent_std
        if self.predicts_delta:
            out["delta_mean"] = self.delta_mean
            out["delta_std"] = self.delta_std
        if self.decoder is not None:
            out.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        if is_trained_here(self.encoder.kind):
            out.update({f"encoder.{k}": v for k, v in self.encoder.frozen_state().items()})
        return out

    def save(self, folder: str | os.PathLike, extra_files: dict[str, Any] | None = None) -> Path:
        return save_checkpoint(folder, self.config_dict(), self.tensors(), extra_files)

    @classmethod
    def load(cls, folder: str | os.PathLike, encoder: Encoder | None = None, hint: str = "") -> WorldModel:
        """Rebuild from a checkpoint folder. A pretrained encoder is loaded from the path in the
        config unless one is passed (it is frozen, so it is never stored twice)."""
        from harness.errors import HarnessError

        config, tensors = load_checkpoint(folder, "world model", WM_FORMAT, hint)
        where = str(folder)
        try:
            transition = DiT(DiTConfig(**config["transition"]))
            sampler = SamplerConfig(**config.get("sampler", {}))
            if encoder is None:
                encoder = build_encoder(config["encoder"])
                if is_trained_here(encoder.kind):
                    load_state(encoder, tensors, "encoder.", where)
            dec_cfg = config.get("decoder")
            decoder = None
            if dec_cfg is not None:
                decoder = PixelDecoder.from_config(dec_cfg)
        except (KeyError, TypeError, ValueError) as e:
            raise HarnessError(f"world model checkpoint {where}/config.json is inconsistent ({type(e).__name__}: "
                               f"{e}); re-train it or restore the original config.json") from None
        load_state(transition, tensors, "transition.", where)
        if decoder is not None:
            load_state(decoder, tensors, "decoder.", where)
        for key in ("latent_mean", "latent_std"):
            if key not in tensors or tensors[key].numel() != transition.config.latent_dim:
                raise HarnessError(f"checkpoint {where} lacks latent statistics {key!r} of size "
                                   f"{transition.config.latent_dim}; re-train it")
        encoder.eval()
        encoder.requires_grad_(False)
        wm = cls(encoder, transition, decoder, tensors["latent_mean"], tensors["latent_std"], sampler,
                 config.get("info", {}), tensors.get("delta_mean"), tensors.get("delta_std"))
        wm.folder = Path(folder)
        wm.inference = prepare_for_inference(wm.transition)
        return wm
