"""Diffusion Transformer over per-frame patch tokens, conditioned on actions.

The network only: given a clip of latent frames ``(B, T, N, D)`` where the first ``H`` frames are
clean context and the rest are noisy targets at flow time ``t``, it predicts the velocity of the
targets. The process (loss, sampler) lives in ``flow_matching.py``.

Attention is factorised as in video DiTs: each block attends spatially within a frame (over the
``N`` tokens), then causally in time at each token position (frame ``i`` sees frames ``<= i``), then
applies an MLP. Every sub-layer is modulated per frame by adaLN-Zero from a conditioning vector
that sums the frame's flow-time embedding and the embedding of the action that led into it
(context frames, whose actions are unknown at reset, use a learned "no action" vector).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

# Widths as in DiT (S = 384/12/6, B = 768/12/12, L = 1024/24/16) and a CPU-sized tiny one.
DIT_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"width": 64, "depth": 4, "heads": 4},
    "S": {"width": 384, "depth": 12, "heads": 6},
    "B": {"width": 768, "depth": 12, "heads": 12},
    "L": {"width": 1024, "depth": 24, "heads": 16},
}


PREDICTIONS = ("velocity", "data")


@dataclass
class DiTConfig:
    latent_dim: int  # D, channels per token
    num_tokens: int  # N, tokens per frame
    action_dim: int  # A
    width: int = 128
    depth: int = 4
    heads: int = 4
    history: int = 2  # H context frames
    horizon: int = 1  # K frames predicted per call
    mlp_ratio: float = 4.0
    head: str = "linear"  # "linear", or "wide": an MLP head for high-dimensional latents (D >= 768)
    head_width: int = 2048
    # Give context frames their change from the frame before as a second input (in the units of
    # the delta target), and embed the (delta-space) targets in that same channel.
    context_deltas: bool = False
    # What the network outputs: "velocity" (x_data - noise, rectified flow's usual choice) or
    # "data" (the clean target itself, x-prediction; the sampler turns it into a velocity).
    prediction: str = "velocity"
    extra: dict = field(default_factory=dict)  # free-form notes kept with the checkpoint

    def __post_init__(self):
        for name in ("latent_dim", "num_tokens", "action_dim", "width", "depth", "heads", "history", "horizon"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"DiTConfig.width ({self.width}) must be divisible by heads ({self.heads})")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"DiTConfig.prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if self.head not in ("linear", "wide"):
            raise ValueError(f"DiTConfig.head must be 'linear' or 'wide', got {self.head!r}")

    @classmethod
    def from_size(cls, size: str, **kwargs) -> DiTConfig:
        if size not in DIT_SIZES:
            raise ValueError(f"unknown DiT size {size!r}; choose one of {', '.join(DIT_SIZES)}")
        return cls(**{**DIT_SIZES[size], **kwargs})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frames(self) -> int:
        return self.history + self.horizon


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, T, N, C); shift/scale (B, T, C): one modulation per frame, shared by its tokens.
    # One fused multiply-add: 300 CEM candidates' frames (4800 x 64) 0.07 vs 0.24 ms for x * s + t
    return torch.addcmul(shift.unsqueeze(2), x, 1 + scale.unsqueeze(2))


def gated(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The residual update x + gate * h (gate (B, T, C) per frame) in one fused op."""
    return torch.addcmul(x, gate.unsqueeze(2), h)


_GELU_K = 2.0 * math.sqrt(2.0 / math.pi)
SMALL_TENSOR = 1 << 15  # elements; below it per-operation overhead, not memory traffic, dominates


class TanhGELU(nn.Module):
    """GELU, tanh approximation (DiT's). For inference, in float32, the fused CPU kernel
    (``kernels.gelu``: x * sigmoid(2z), the same function, 0.5 * (1 + tanh(z)) = sigmoid(2z);
    4800 x 256 activations 0.35 vs 0.66 ms for the torch form below, batch 1 4.4 vs 7.0 us), else
    x * sigmoid(2z) in torch operations, because torch's CPU tanh is slow (0.71 vs 1.98 ms), within
    5e-7 of float64. In bfloat16 the exact (erf) GELU stands in (0.26 vs 1.68 ms for torch's
    tanh form, 0.63 for the kernel): it differs from the tanh form by at most 4.7e-4, below
    bfloat16's own rounding (torch's bf16 tanh-GELU is 7.8e-3 off float64 on N(0, 4) inputs, the
    erf one 8.2e-3). Training (autograd) and small tensors (batch 1) without the kernels use
    torch's kernel unchanged. A DiT block's inference through the kernels (float32, or bfloat16 on
    a CPU with AVX512-BF16) does not call this module where ``kernels.mlp_fits``:
    ``kernels.mlp_residual`` computes the tanh form itself, inside the MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and use_kernels(x):
            return kernels.gelu(x)
        if x.numel() < SMALL_TENSOR or (torch.is_grad_enabled() and x.requires_grad):
            # a batch-1 call: one kernel beats the five small ones below
            return F.gelu(x, approximate="tanh")
        if x.dtype == torch.bfloat16:
            return F.gelu(x)
        u = x * x
        u.mul_(0.044715 * _GELU_K).add_(_GELU_K).mul_(x)
        return u.sigmoid_().mul_(x)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times in [0, 1] (scaled by 1000 as DiT does for its steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def use_kernels(x: torch.Tensor) -> bool:
    """Whether to run through the fused CPU kernels (world_models/kernels.py) rather than torch's
    operations: CPU, autograd off, when they could be built. They are faster at every batch size
    measured (the embedded model's 5-step rollout, one core: batch 1 11.5 vs 15.8 ms; 300 CEM
    candidates in bfloat16 ~235-270 vs ~410-500 ms with the bf16 matrix kernels, session 10) and
    give the same numbers to float rounding."""
    return kernels.applies(x)


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, through the matrix kernel (``kernels.linear``) for float32 or bfloat16
    inference where it fits, else the layer itself. One core, bf16: a 300-candidate frame's qkv
    projection (4800 x 64 -> 192) 0.26 vs 0.31 ms for torch's, a batch-1 frame's 7.5 vs 18 us."""
    if x.dtype == layer.weight.dtype and use_kernels(x) and kernels.linear_fits(layer):
        return kernels.linear(x, layer)
    return layer(x)  # (a subclass or a layer with hooks too: linear_fits takes plain ones only)


# bfloat16 spatial attention is two matmuls for at least MANY_SEQUENCES sequences of at most
# SHORT_SEQUENCE tokens (see Attention); longer ones keep the fused kernel, which does not build
# the score matrix, and so does float32
MANY_SEQUENCES, SHORT_SEQUENCE = 16, 64


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        L, S, C = x.shape  # (sequences, length, width)
        return self.qkv(x).view(L, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (L, h, S, c)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        L, _, S, c = out.shape
        return self.proj(out.transpose(1, 2).reshape(L, S, self.heads * c))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        L, S, C = x.shape
        if not causal and use_kernels(x) and kernels.spatial_fits(S, C // self.heads):
            return linear(self.proj, kernels.spatial_attention(linear(self.qkv, x), self.heads))
        q, k, v = self.split(x)
        if (causal or q.dtype != torch.bfloat16 or q.shape[0] < MANY_SEQUENCES
                or q.shape[-2] > SHORT_SEQUENCE):
            return self.merge(F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        # bfloat16, many short sequences (a frame's tokens, per frame of a batch): two batched
        # matmuls beat torch's fused CPU kernel here. The whole module (projections included), one
        # core: width 64 / 4 heads, 64 frames of 16 tokens 0.37 vs 0.65 ms; DiT-S width, 64 frames
        # of 64 tokens 15.4 vs 18.3 ms. In float32 the fused kernel was the faster one at every
        # shape measured (0.55 vs 0.72 ms for the first). Softmax in float32.
        w = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        return self.merge(w.float().softmax(-1).to(v.dtype) @ v)


def past_frames(x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Cached keys or values as a list of per-frame tensors (Bp, N, heads, c): from one tensor
    (Bp, Hc, N, heads, c), or a list already (its frames may differ in Bp: 1 for a frame every
    row shares, B for the rows' own)."""
    return list(x.unbind(1)) if isinstance(x, torch.Tensor) else list(x)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    past: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal attention across frames at each token position: frame i sees the ``past`` frames
    and frames 0..i. Tensors stay in (B, T, N, heads, c) layout: a world-model window has a few
    frames, so this is a handful of elementwise products over the whole batch, where torch's fused
    CPU kernel runs B * N * heads sequences of length T one by one. Measured here (one core, 16
    tokens, 4 heads of 16, 2 past frames): batch 64 0.16 ms vs the fused kernel's 1.03 ms in
    float32 (0.45 vs 1.07 in bfloat16), 300 candidates 3.3 vs 6.7 ms; batch 1 0.042 vs 0.031 ms.
    ``past`` = (keys, values) of (Bp, Hc, N, heads, c), Bp = B or 1 (one context shared by every
    row, broadcast without copying), or lists of per-frame (Bp, N, heads, c) (``past_frames``).
    Scores are softmaxed in float32 whatever the dtype (``DiTBlock`` passes float32 tensors)."""
    keys = list(k.unbind(1))
    values = list(v.unbind(1))
    if past is not None:
        keys = past_frames(past[0]) + keys
        values = past_frames(past[1]) + values
    first = len(keys) - k.shape[1]  # frames every query sees
    scale = q.shape[-1] ** -0.5
    out = []
    for i, qi in enumerate((q * scale).unbind(1)):
        n = first + i + 1
        if n == 1:
            out.append(values[0].expand_as(qi))
            continue
        # the softmax over n = 2-3 scores, written out elementwise: torch's softmax over a last
        # dimension of 3 cost more than the rest of the attention (batch 64: 0.16 vs 0.37 ms)
        scores = [(qi * keys[j]).sum(-1, keepdim=True).float() for j in range(n)]
        top = scores[0]
        for s in scores[1:]:
            top = torch.maximum(top, s)
        e = [torch.exp(s - top) for s in scores]
        total = e[0]
        for x in e[1:]:
            total = total + x
        inv = total.reciprocal()
        o = (e[0] * inv).to(q.dtype) * values[0]
        for j in range(1, n):
            o = o + (e[j] * inv).to(q.dtype) * values[j]
        out.append(o)
    return torch.stack(out, 1)


class DiTBlock(nn.Module):
    """Spatial attention, causal temporal attention, MLP; each adaLN-Zero modulated.

    Because temporal attention is causal and the context frames are clean (t = 1) with the
    ``no_action`` conditioning, the context frames' states never depend on the target frames.
    ``context`` runs the block on the context alone and returns its temporal keys/values;
    ``target`` then runs only the target frames against them — the same numbers as ``forward``
    on the whole clip, without recomputing the context at every sampler step or per candidate.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_s = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(width, heads)
        self.norm_t = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_t = Attention(width, heads)
        self.norm_m = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), TanhGELU(), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def _run(self, x: torch.Tensor, c: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
             keep: bool = True):
        """The block on x (B, T, N, C) under per-frame conditioning c (B, T, C), its frames attending
        to ``past`` ones too; returns the new x and, with ``keep``, its temporal keys/values."""
        B, T, N, C = x.shape
        mods = linear(self.ada[1], self.ada[0](c))  # adaLN: SiLU, then the projection
        (sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m) = mods.chunk(9, dim=-1)  # each (B, T, C)
        if use_kernels(x) and c.shape[0] == B and kernels.ln_fits(C):
            pk, pv = ([], []) if past is None else (past_frames(past[0]), past_frames(past[1]))
            if kernels.frame_fits(C, C // self.attn_t.heads, T + len(pk)):
                return self._run_fused(x, pk, pv, (sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m), keep)

        h = modulate(self.norm_s(x), sh_s, sc_s).reshape(B * T, N, C)
        x = gated(x, g_s, self.attn_s(h).view(B, T, N, C))

        qkv = self.attn_t.qkv(modulate(self.norm_t(x), sh_t, sc_t))
        out, (k, v) = self.temporal(qkv, past)
        x = gated(x, g_t, self.attn_t.proj(out.to(x.dtype)))

        x = gated(x, g_m, self.mlp(modulate(self.norm_m(x), sh_m, sc_m)))
        return x, (k, v)

    def temporal(self, qkv: torch.Tensor, past) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Frame attention from the temporal qkv projection (B, T, N, 3C): (B, T, N, C) and this
        call's keys/values (B, T, N, heads, c)."""
        B, T, N, C3 = qkv.shape
        nh = self.attn_t.heads
        qkv = qkv.view(B, T, N, 3, nh, C3 // (3 * nh))
        # one copy into three contiguous float32 tensors (B, T, N, heads, c): the elementwise
        # attention then runs on contiguous memory, in float32 whatever the weights' dtype (bf16
        # elementwise kernels and broadcasts are slower on CPU, and the cached context keys and
        # values stay float32 for every sampler step). A 300-candidate bf16 CEM call on one core
        # spent 193 ms in frame attention before, 65 ms after; batch 1 is unchanged.
        # (``.to(float32, memory_format=contiguous)`` would return the strided view itself in
        # float32). A float32 batch of a few frames keeps the views: there the copy is the cost.
        if qkv.dtype == torch.float32 and B * T < MANY_SEQUENCES:
            q, k, v = qkv.unbind(3)
        else:
            split = torch.empty((3, *qkv.shape[:3], *qkv.shape[4:]), dtype=torch.float32, device=qkv.device)
            q, k, v = split.copy_(qkv.permute(3, 0, 1, 2, 4, 5)).unbind(0)
        return frame_attention(q, k, v, past).reshape(B, T, N, C3 // 3), (k, v)

    def _run_fused(self, x: torch.Tensor, pk: list[torch.Tensor], pv: list[torch.Tensor], mods, keep: bool):
        """``_run`` through the fused CPU kernels (world_models/kernels.py): each LayerNorm with its
        modulation and the residual update before it in one pass, frame attention straight from the
        qkv projection, against past keys/values ``pk``/``pv`` (per-frame lists, ``past_frames``);
        the same numbers to float rounding."""
        (sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m) = mods
        B, T, N, C = x.shape
        eps = self.norm_s.eps
        h = kernels.ln_modulate(x, sh_s, sc_s, eps).view(B * T, N, C)
        x, h = kernels.ln_modulate(x, sh_t, sc_t, eps, gate=g_s, h=self.attn_s(h).view(B, T, N, C))
        qkv = linear(self.attn_t.qkv, h)
        out, kv = kernels.frame_attention(qkv, self.attn_t.heads, pk, pv, keep=keep)
        x, h = kernels.ln_modulate(x, sh_m, sc_m, eps, gate=g_t, h=linear(self.attn_t.proj, out.to(x.dtype)))
        if (len(self.mlp) == 3 and type(self.mlp[1]) is TanhGELU
                and not (self.mlp[1]._forward_hooks or self.mlp[1]._forward_pre_hooks)
                and x.dtype == self.mlp[0].weight.dtype == self.mlp[2].weight.dtype
                and kernels.linear_fits(self.mlp[0]) and kernels.linear_fits(self.mlp[2])
                and kernels.mlp_fits(C, self.mlp[0].out_features, x.dtype)):
            return kernels.mlp_residual(x, h, g_m, self.mlp[0], self.mlp[2]), kv
        return gated(x, g_m, self.mlp(h)), kv

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self._run(x, c, keep=False)[0]

    def context(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self._run(x, c)

    def target(self, x: torch.Tensor, c: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self._run(x, c, past, keep=False)[0]

    def context_after(self, x: torch.Tensor, c: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Context frames that follow ``past`` ones: their states and their own keys/values."""
        return self._run(x, c, past)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int, head: str, head_width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        if head == "wide":
            # A wide MLP head lets a narrow trunk emit high-dimensional latents (the DiT^DH idea
            # used for 768-1152-dim semantic latents in "Reconstruction or Semantics?").
            self.out = nn.Sequential(nn.Linear(width, head_width), nn.GELU(approximate="tanh"),
                                     nn.Linear(head_width, out_dim))
        else:
            self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        if use_kernels(x) and c.shape[0] == x.shape[0] and kernels.ln_fits(x.shape[-1]):
            return self.out(kernels.ln_modulate(x, shift, scale, self.norm.eps))
        return self.out(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        W = cfg.width
        self.x_embed = nn.Linear(cfg.latent_dim, W)
        if cfg.context_deltas:
            self.d_embed = nn.Linear(cfg.latent_dim, W)
            # per-channel factor from a normalised latent's change to the delta target's units;
            # set by WorldModel from the statistics in the checkpoint (not a weight of its own)
            self.register_buffer("delta_gain", torch.ones(cfg.latent_dim), persistent=False)
        self.pos_space = nn.Parameter(torch.zeros(1, 1, cfg.num_tokens, W))
        self.pos_time = nn.Parameter(torch.zeros(1, cfg.frames, 1, W))
        self.t_embed = nn.Sequential(nn.Linear(W, W), nn.SiLU(), nn.Linear(W, W))
        self.a_embed = nn.Sequential(nn.Linear(cfg.action_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.no_action = nn.Parameter(torch.zeros(W))
        self.blocks = nn.ModuleList(DiTBlock(W, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.final = FinalLayer(W, cfg.latent_dim, cfg.head, cfg.head_width)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        nn.init.normal_(self.pos_space, std=0.02)
        nn.init.normal_(self.pos_time, std=0.02)
        nn.init.normal_(self.no_action, std=0.02)
        for mlp in (self.t_embed, self.a_embed):
            nn.init.normal_(mlp[0].weight, std=0.02)
            nn.init.normal_(mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch starts gated shut, so each block is the identity at init.
        for block in self.blocks:
            nn.init.zeros_(block.ada[-1].weight)
            nn.init.zeros_(block.ada[-1].bias)
        nn.init.zeros_(self.final.ada[-1].weight)
        nn.init.zeros_(self.final.ada[-1].bias)
        last = self.final.out[-1] if isinstance(self.final.out, nn.Sequential) else self.final.out
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype; inputs are cast to it (a bfloat16 copy runs batched planning)."""
        return self.x_embed.weight.dtype

    def embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """Clean (normalised) context frames (B, H, N, D) -> tokens (B, H, N, W), without positions."""
        h = self.x_embed(context.to(self.dtype))
        if self.config.context_deltas:
            # the first frame's own change is unknown: zero, as for a frame repeated after a reset;
            # the change is taken at the input's precision (small next to the latent itself)
            d = torch.diff(context, dim=1, prepend=context[:, :1]) * self.delta_gain.to(context.dtype)
            h = h + self.d_embed(d.to(self.dtype))
        return h

    def embed_target(self, x: torch.Tensor) -> torch.Tensor:
        return (self.d_embed if self.config.context_deltas else self.x_embed)(x.to(self.dtype))

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        return self.t_embed(timestep_embedding(t, self.config.width).to(self.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Velocity for every frame of the clip.

        x: (B, T, N, D) with T = H + K (context first); t: (B, T) flow time per frame (1 = clean);
        actions: (B, K, A), action k leads from frame H-1+k to frame H+k.
        """
        B, T, N, D = x.shape
        H = T - actions.shape[1]
        if T > self.config.frames or H < 1:
            raise ValueError(f"clip of {T} frames with {actions.shape[1]} actions does not fit "
                             f"history {self.config.history} + horizon {self.config.horizon}")
        h = torch.cat([self.embed_context(x[:, :H]), self.embed_target(x[:, H:])], dim=1)
        h = h + self.pos_space + self.pos_time[:, :T]  # (B, T, N, W)
        a = torch.cat([self.no_action.expand(B, H, -1), self.a_embed(actions.to(self.dtype))], dim=1)  # (B, T, W)
        c = self.condition(t) + a  # (B, T, W)
        for block in self.blocks:
            h = block(h, c)
        return self.final(h, c)  # (B, T, N, D)

    def encode_context(self, context: torch.Tensor, shared: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block temporal keys/values of clean context frames (B, H, N, D), for ``forward_target``.

        ``shared``: the first that many frames are the same in every row (CEM candidates a few
        steps into their rollout still see the real frames they started from): they are run once,
        at batch 1, and the rows' own frames attend to them by broadcasting. The cache then holds
        per-frame lists (``past_frames``); the numbers are those of running every row, to rounding
        (in bfloat16 a batch-1 matmul may round differently from a batch-B one)."""
        B, H, N, _ = context.shape
        h = self.embed_context(context) + self.pos_space + self.pos_time[:, :H]
        c = self.condition(torch.ones(B, H)) + self.no_action
        cache = []
        if not 0 < shared < H or B == 1:
            for block in self.blocks:
                h, kv = block.context(h, c)
                cache.append(kv)
            return cache
        # causal in time: the shared frames' states never depend on the frames after them
        hs, cs, h, c = h[:1, :shared], c[:1, :shared], h[:, shared:], c[:, shared:]
        for block in self.blocks:
            hs, (ks, vs) = block.context(hs, cs)
            h, (k, v) = block.context_after(h, c, (ks, vs))
            cache.append((past_frames(ks) + past_frames(k), past_frames(vs) + past_frames(v)))
        return cache

    def forward_target(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                       cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Velocity of the K target frames x (B, K, N, D) at flow times t (B, K) given the cached
        context (batch B, or 1 for one context shared by every row): equal to
        ``forward(cat([context, x]), ...)[:, H:]``."""
        B, K = x.shape[:2]
        H = len(past_frames(cache[0][0]))
        if H + K > self.config.frames:
            raise ValueError(f"{H} context + {K} target frames do not fit history {self.config.history} + "
                             f"horizon {self.config.horizon}")
        h = self.embed_target(x) + self.pos_space + self.pos_time[:, H:H + K]
        c = self.condition(t) + self.a_embed(actions.to(self.dtype))
        for block, kv in zip(self.blocks, cache):
            h = block.target(h, c, kv)
        return self.final(h, c)
