"""Diffusion Transformer over per-frame patch tokens, conditioned on actions.

The network only: given a clip of latent frames ``(B, T, N, D)`` where the first ``H`` frames are
clean context and the rest are noisy targets at flow time ``t``, it predicts the velocity (or,
with ``prediction="data"``, the clean value) of the targets. The process (loss, sampler) lives in
``flow_matching.py``.

Attention is factorised as in video DiTs: each block attends spatially within a frame (over the
``N`` tokens), then causally in time at each token position (frame ``i`` sees frames ``<= i``), then
applies an MLP. Every sub-layer is modulated per frame by adaLN-Zero from a conditioning vector
that sums the frame's flow-time embedding and the embedding of the action that led into it
(context frames, whose actions are unknown at reset, use a learned "no action" vector).

Because temporal attention is causal and context frames are clean (``t = 1``, no action), a
context frame's states never depend on the target frames. ``encode_context`` runs the context
once and keeps each block's temporal keys and values; ``forward_target`` runs only the targets
against them. Both go through the same ``DiTBlock.forward`` as training does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

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


# Temporal keys/values of the frames seen so far, per block: one (B or 1, N, heads, c) tensor per
# frame, oldest first. A frame every row shares (the real frames CEM candidates start from) is kept
# at batch 1 and broadcast.
FrameCache = tuple[list[torch.Tensor], list[torch.Tensor]]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, per frame: x (B, T, N, C), shift and scale (B, T, 1, C)."""
    return torch.addcmul(shift, x, 1 + scale)  # one pass over x instead of two


def gated(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The residual update x + gate * h, gate (B, T, 1, C) per frame."""
    return torch.addcmul(x, gate, h)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow times in [0, 1] (scaled by 1000 as DiT does for its steps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Attention(nn.Module):
    """Multi-head self-attention over the tokens of each frame."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, S, C = x.shape  # (frames, tokens, width)
        q, k, v = self.qkv(x).view(L, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (L, h, S, c)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(L, S, C))


def frame_attention(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> torch.Tensor:
    """Causal attention across frames at each token position.

    q (B, T, N, h, c) holds the queries of the last T of the frames whose keys and values are
    listed (each (B or 1, N, h, c)); query frame i sees every frame up to itself. A world-model
    window has a few frames, so scores are elementwise products summed over channels: torch's
    fused attention would run B * N * h sequences of length 2-3 one by one. Softmax in float32.
    """
    S, T = len(keys), q.shape[1]
    q = q * q.shape[-1] ** -0.5
    out = []
    for i in range(T):
        seen = S - T + i + 1
        scores = torch.stack([(q[:, i] * k).sum(-1) for k in keys[:seen]])  # (seen, B, N, h)
        w = scores.float().softmax(0).to(q.dtype).unsqueeze(-1)
        out.append(sum(w[j] * values[j] for j in range(seen)))  # (B, N, h, c)
    return torch.stack(out, 1)


class FrameAttention(Attention):
    """Multi-head causal attention across frames, per token position, with a cache of earlier
    frames: the same projections as ``Attention``, another pattern of who sees whom."""

    def forward(self, x: torch.Tensor, past: FrameCache | None = None) -> tuple[torch.Tensor, FrameCache]:
        B, T, N, C = x.shape
        q, k, v = self.qkv(x).view(B, T, N, 3, self.heads, C // self.heads).unbind(3)  # (B, T, N, h, c)
        keys, values = list(k.unbind(1)), list(v.unbind(1))
        seen_k, seen_v = ([], []) if past is None else past
        out = frame_attention(q, seen_k + keys, seen_v + values)
        return self.proj(out.reshape(B, T, N, C)), (keys, values)


class DiTBlock(nn.Module):
    """Spatial attention, causal temporal attention, MLP; each adaLN-Zero modulated per frame."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm_s = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(width, heads)
        self.norm_t = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_t = FrameAttention(width, heads)
        self.norm_m = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, past: FrameCache | None = None
                ) -> tuple[torch.Tensor, FrameCache]:
        """x (B, T, N, C) frames under conditioning c (B, T, C), attending in time to ``past``
        frames too. Returns the new x and these frames' temporal keys/values."""
        B, T, N, C = x.shape
        (shift_s, scale_s, gate_s, shift_t, scale_t, gate_t,
         shift_m, scale_m, gate_m) = self.ada(c).unsqueeze(2).chunk(9, dim=-1)  # each (B, T, 1, C)
        h = self.attn_s(modulate(self.norm_s(x), shift_s, scale_s).reshape(B * T, N, C))
        x = gated(x, gate_s, h.view(B, T, N, C))
        h, kv = self.attn_t(modulate(self.norm_t(x), shift_t, scale_t), past)
        x = gated(x, gate_t, h)
        x = gated(x, gate_m, self.mlp(modulate(self.norm_m(x), shift_m, scale_m)))
        return x, kv


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
        shift, scale = self.ada(c).unsqueeze(2).chunk(2, dim=-1)  # each (B, T, 1, C)
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
            # the first frame's own change is unknown: zero, as for a frame repeated after a reset
            d = torch.diff(context, dim=1, prepend=context[:, :1]) * self.delta_gain.to(context.dtype)
            h = h + self.d_embed(d.to(self.dtype))
        return h

    def embed_target(self, x: torch.Tensor) -> torch.Tensor:
        return (self.d_embed if self.config.context_deltas else self.x_embed)(x.to(self.dtype))

    def condition(self, t: torch.Tensor) -> torch.Tensor:
        return self.t_embed(timestep_embedding(t, self.config.width).to(self.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Output for every frame of the clip.

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
            h, _ = block(h, c)
        return self.final(h, c)  # (B, T, N, D)

    def encode_context(self, context: torch.Tensor, shared: int = 0) -> list[FrameCache]:
        """Per-block temporal keys/values of clean context frames (B, H, N, D), for ``forward_target``.

        ``shared``: the first that many frames are the same in every row (CEM candidates a few
        steps into their rollout still see the real frames they started from): they run once, at
        batch 1, and every row's own frames attend to them by broadcasting."""
        B, H, N, _ = context.shape
        h = self.embed_context(context) + self.pos_space + self.pos_time[:, :H]  # (B, H, N, W)
        c = self.condition(torch.ones(B, H, device=context.device)) + self.no_action  # (B, H, W)
        split = shared if 0 < shared < H and B > 1 else 0
        # causal in time: the shared frames' states never depend on the frames after them
        h_shared, c_shared = h[:1, :split], c[:1, :split]  # (1, split, N, W), (1, split, W)
        h, c = h[:, split:], c[:, split:]
        cache = []
        for block in self.blocks:
            past = None
            if split:
                h_shared, past = block(h_shared, c_shared)
            h, (keys, values) = block(h, c, past)
            cache.append((keys, values) if past is None else (past[0] + keys, past[1] + values))
        return cache

    def forward_target(self, x: torch.Tensor, t: torch.Tensor, actions: torch.Tensor,
                       cache: list[FrameCache]) -> torch.Tensor:
        """Output for the K target frames x (B, K, N, D) at flow times t (B, K) given the cached
        context: equal to ``forward(cat([context, x]), ...)[:, H:]``."""
        B, K = x.shape[:2]
        H = len(cache[0][0])
        if H + K > self.config.frames:
            raise ValueError(f"{H} context + {K} target frames do not fit history {self.config.history} + "
                             f"horizon {self.config.horizon}")
        h = self.embed_target(x) + self.pos_space + self.pos_time[:, H:H + K]  # (B, K, N, W)
        c = self.condition(t) + self.a_embed(actions.to(self.dtype))  # (B, K, W)
        for block, past in zip(self.blocks, cache):
            h, _ = block(h, c, past)
        return self.final(h, c)  # (B, K, N, D)
