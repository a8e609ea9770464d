"""Fused CPU kernels for the DiT's inference (CEM candidates, world-model environments).

At 300 CEM candidates the tiny DiT's matmuls run near this CPU's peak, and most of the rest of
the call was elementwise passes over 1-5 MB tensors: LayerNorm, modulation and residual updates,
attention's scale/softmax/casts and layout copies; at batch 1 it was many small operations.
``kernels.c`` does each group in one pass (``ln_modulate``, ``spatial_attention``,
``frame_attention``, and a float32 ``gelu``), with float32 arithmetic on float32 or bfloat16
storage, 16-float vector code and OpenMP over units of work at torch's thread count. It also has
matrix kernels on weights packed once per layer (``packed``), in float32 everywhere and in
bfloat16 on CPUs with AVX512-BF16 (``bf16_dot``): ``linear`` (the bias added in the
accumulators) and ``mlp_residual`` (fc1, GELU, fc2 and the gated residual in one pass, the hidden
activations never leaving the cache); torch's float32 matmuls ran these small-K shapes at ~35% of
this CPU's peak, and its bf16 addmm first copies the bias into every output row.
It is built on first use with the system C compiler (``cc``, or ``$CC``) for this CPU
(``-O3 -march=native``) into ``$XDG_CACHE_HOME/wm-harness/kernels`` (default ``~/.cache``), keyed
by the source, the compiler and the CPU, so a home directory shared by different machines keeps
one build per CPU. Building takes about a second; the file is written atomically, so parallel
workers may race safely.

Without a compiler, or with ``WM_HARNESS_KERNELS=0``, ``library()`` is None and the DiT runs its
torch operations (same numbers to float rounding). The kernels are for inference only: callers
check ``applies`` (no autograd, CPU tensors, float32 or bfloat16).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
ENV_SWITCH = "WM_HARNESS_KERNELS"
DTYPES = (torch.float32, torch.bfloat16)
log = logging.getLogger(__name__)

_P = ctypes.c_void_p
_L = ctypes.c_long
# name: (return type, argument types); the attention kernels return 0, or -1 for a shape they lack
SIGNATURES = {
    "ln_modulate": (None, [ctypes.c_int, _P, _P, _P, _P, _P, _P, _L, _P, _L, _L, _L, ctypes.c_float, ctypes.c_int]),
    "spatial_attention": (ctypes.c_int, [ctypes.c_int, _P, _P, _L, _L, _L, _L, ctypes.c_int]),
    "gelu_tanh": (None, [ctypes.c_int, _P, _P, _L, ctypes.c_int]),
    "frame_attention": (ctypes.c_int, [ctypes.c_int, _P, _L, _P, _P, _P, _P, _P, _L, _L, _L, _L, _L, ctypes.c_int]),
    "mlp_residual": (ctypes.c_int, [ctypes.c_int, _L, _L, _L, _L, _P, _P, _P, _P, _P, _P, _L, _P, _P, ctypes.c_int]),
    "linear_packed": (ctypes.c_int, [ctypes.c_int, _L, _L, _L, _P, _P, _P, _P, ctypes.c_int]),
    "has_bf16_dot": (ctypes.c_int, []),
}
# bounds on the C side's stack scratch, which OpenMP worker threads hold on stacks of their own
# (2 MiB may be all they get): LayerNorm ~7 x width floats, frame attention ~3 x width x frames
# (at most 16k floats here), spatial attention ~3 x 64 x 64. The attention kernels have instances
# for heads (and spatial sequences) of 16, 32 or 64. The MLP kernel holds 8 rows of its hidden
# activations (at most 4 x 2048 wide: 128 KiB in bfloat16, 256 KiB in float32).
MAX_WIDTH, MAX_FRAME_FLOATS, SIZES, MAX_HIDDEN = 2048, 1 << 14, (16, 32, 64), 4 * 2048


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wm-harness" / "kernels"


CPU_FIELDS = ("model name", "flags", "Features", "CPU implementer", "CPU architecture", "CPU variant", "CPU part")


def cpu_signature() -> str:
    """What -march=native depends on: the machine, the CPU's model and its feature flags (x86's
    "model name"/"flags", Arm's "Features"/"CPU part"...), from the first core listed."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":", 1)[0].strip()
            if key in CPU_FIELDS and key not in fields:
                fields[key] = line
    except OSError:
        pass
    return "\n".join([platform.machine(), platform.processor(), *fields.values()])


def compiler() -> list[str] | None:
    """The C compiler's command: ``$CC`` (may carry a wrapper, e.g. "ccache gcc"), else cc or gcc.
    kernels.c uses GCC's vector extensions; another compiler fails to build it (torch ops then)."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else None


def build(directory: Path | None = None) -> Path:
    """Compile kernels.c for this CPU (once: cached by source, compiler and CPU) and return the
    shared library's path; raises RuntimeError with the compiler's message when it fails."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    except OSError as e:
        raise RuntimeError(f"C compiler {' '.join(cc)!r} does not run: {e}") from None
    key = hashlib.sha256(b"\0".join([source, " ".join([*cc, *FLAGS]).encode(), "".join(version).encode(),
                                     cpu_signature().encode()])).hexdigest()[:16]
    directory = directory or cache_dir()
    target = directory / f"kernels-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cc)} failed on {SOURCE.name}: {done.stderr.strip()[:500]}")
        os.chmod(tmp, 0o755)  # mkstemp makes it private; a shared cache is readable by others
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they cannot be built (logged once)."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as e:
        log.warning("fused CPU kernels unavailable, using torch operations: %s", e)
        return None
    for name, (result, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = result, args
    lib.bf16_dot = bool(lib.has_bf16_dot())  # asked once, not at every layer's call
    return lib


def describe() -> str:
    """What world-model inference in this process runs on, for a run's record, without building
    anything: the fused kernels when switched on and a compiler is there (built or cached),
    else torch's operations and why."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"torch operations ({ENV_SWITCH}=0)"
    if library.cache_info().currsize and library() is None:
        return "torch operations (the kernels did not build; see the logged warning)"
    cc = compiler()
    if cc is None:
        return "torch operations (no C compiler)"
    return f"fused CPU kernels (world_models/kernels.c, built with {' '.join(cc)})"


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels can stand in for torch here: a CPU float32/bf16 tensor with autograd
    off (``torch.no_grad`` or ``inference_mode``: the kernels record no graph, and any input of
    theirs, a weight included, may require grad), unless ``WM_HARNESS_KERNELS=0`` (read at each
    call, so tests and benchmarks can switch)."""
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in DTYPES
            and os.environ.get(ENV_SWITCH, "1") != "0" and library() is not None)


# below this many elements a kernel runs on the calling thread: an OpenMP team costs more than
# it saves (the embedded model's batch-1 rollout at torch's 2 threads: 12.7 ms with a team per
# call, 11.6 ms without)
PARALLEL_MIN = 1 << 15


def threads(x: torch.Tensor) -> int:
    """OpenMP threads for a kernel over ``x``: torch's count, or 1 for a small tensor."""
    return 1 if x.numel() < PARALLEL_MIN else torch.get_num_threads()


def _ptr(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _frame_vector(v: torch.Tensor, frames: int) -> tuple[torch.Tensor, int]:
    """A per-frame (B, T, C) view (a chunk of the adaLN output) as (tensor, frame stride) with
    frame f at f * stride, copied only when its strides do not allow that."""
    B, T, C = v.shape
    if v.stride(2) != 1 or (T > 1 and B > 1 and v.stride(0) != T * v.stride(1)):
        v = v.contiguous()
    stride = v.stride(1) if T > 1 else v.stride(0)
    return v, stride if frames > 1 else 0


def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                gate: torch.Tensor | None = None, h: torch.Tensor | None = None):
    """LayerNorm(x) * (1 + scale) + shift for x (B, T, N, C), shift/scale/gate (B, T, C) per frame.
    With ``gate`` and ``h``: x is first replaced by x + gate * h, and (new x, y) is returned."""
    B, T, N, C = x.shape
    if not ln_fits(C):
        raise ValueError(f"no LayerNorm kernel for width {C} (a multiple of 16 up to {MAX_WIDTH})")
    for name, v in (("shift", shift), ("scale", scale), ("gate", gate)):
        if v is not None and tuple(v.shape) != (B, T, C):
            raise ValueError(f"ln_modulate: {name} of shape {tuple(v.shape)} for x {tuple(x.shape)}; "
                             f"expected ({B}, {T}, {C})")
    if (gate is None) != (h is None) or (h is not None and h.shape != x.shape):
        raise ValueError(f"ln_modulate: gate and h go together, h shaped as x {tuple(x.shape)}")
    frames = B * T
    x = x.contiguous()
    vectors = [_frame_vector(v.to(x.dtype), frames) for v in (shift, scale, gate) if v is not None]
    if len({stride for _, stride in vectors}) > 1:  # one stride serves them all: else copy each
        vectors = [(v.contiguous(), C if frames > 1 else 0) for v, _ in vectors]
    (sh, stride), (sc, _) = vectors[:2]
    g = vectors[2][0] if gate is not None else None
    if gate is not None:
        h = h.to(x.dtype).contiguous()
        x_out = torch.empty_like(x)
    else:
        x_out = None
    y = torch.empty_like(x)
    library().ln_modulate(int(x.dtype == torch.bfloat16), x.data_ptr(), _ptr(g), _ptr(h), _ptr(x_out),
                          sh.data_ptr(), sc.data_ptr(), stride, y.data_ptr(), frames, N, C, eps, threads(x))
    return y if gate is None else (x_out, y)


def ln_fits(width: int) -> bool:
    """Whether ``ln_modulate`` takes this width (whole 16-float vectors)."""
    return width % 16 == 0 and width <= MAX_WIDTH


def frame_fits(width: int, head: int, frames: int) -> bool:
    """Whether ``frame_attention`` takes this width, head size and number of frames seen."""
    return width <= MAX_WIDTH and head in SIZES and width * frames <= MAX_FRAME_FLOATS


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, of a float32 or bfloat16 tensor (computed in float32)."""
    x = x.contiguous()
    y = torch.empty_like(x)
    library().gelu_tanh(int(x.dtype == torch.bfloat16), x.data_ptr(), y.data_ptr(), x.numel(), threads(x))
    return y


def spatial_fits(length: int, head: int) -> bool:
    """Whether ``spatial_attention`` has an instance for sequences of ``length`` and heads of ``head``."""
    return length in SIZES and head in SIZES


def spatial_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention within each sequence: qkv (L, S, 3 * C) from the qkv projection -> (L, S, C);
    S and C / heads as ``spatial_fits`` allows."""
    L, S, C3 = qkv.shape
    C = C3 // 3
    qkv = qkv.contiguous()
    out = torch.empty((L, S, C), dtype=qkv.dtype)
    done = library().spatial_attention(int(qkv.dtype == torch.bfloat16), qkv.data_ptr(), out.data_ptr(), L, S,
                                       heads, C // heads, threads(out))
    if done:
        raise ValueError(f"no spatial attention kernel for sequences of {S} and heads of {C // heads}")
    return out


def frame_attention(qkv: torch.Tensor, heads: int, past: list[torch.Tensor] | None = None,
                    past_v: list[torch.Tensor] | None = None, keep: bool = False):
    """Causal attention across frames at each token: qkv (B, T, N, 3 * C) from the temporal qkv
    projection; ``past``/``past_v``: per-frame float32 keys/values (Bp, N, heads, c), Bp = B or 1.
    Returns out (B, T, N, C) and, with ``keep``, this call's float32 keys and values
    (B, T, N, heads, c) each (for a context cache), else None. Heads as ``frame_fits`` allows."""
    B, T, N, C3 = qkv.shape
    C = C3 // 3
    c = C // heads
    qkv = qkv.contiguous()
    past, past_v = list(past or []), list(past_v or [])
    if len(past) != len(past_v):
        raise ValueError(f"frame_attention: {len(past)} past key frames but {len(past_v)} value frames")
    if not frame_fits(C, c, len(past) + T):
        raise ValueError(f"no frame attention kernel for heads of {c}, width {C}, {len(past) + T} frames")
    frames = []
    for k, v in zip(past, past_v):
        if k.shape != v.shape or k.shape[0] not in (1, B) or tuple(k.shape[1:]) != (N, heads, c):
            raise ValueError(f"frame_attention: past keys {tuple(k.shape)} / values {tuple(v.shape)}; "
                             f"expected (1 or {B}, {N}, {heads}, {c}) each")
        k, v = (t.float() if t.stride()[1:] == (C, c, 1) else t.float().contiguous() for t in (k, v))
        if k.stride(0) != v.stride(0):
            k, v = k.contiguous(), v.contiguous()
        frames.append((k, v, 0 if k.shape[0] == 1 else k.stride(0)))
    P = len(frames)
    pk = (ctypes.c_void_p * max(P, 1))(*[f[0].data_ptr() for f in frames])
    pv = (ctypes.c_void_p * max(P, 1))(*[f[1].data_ptr() for f in frames])
    ps = (ctypes.c_long * max(P, 1))(*[f[2] for f in frames])
    out = torch.empty((B, T, N, C), dtype=qkv.dtype)
    kv = torch.empty((2, B, T, N, heads, c), dtype=torch.float32) if keep else None
    done = library().frame_attention(int(qkv.dtype == torch.bfloat16), qkv.data_ptr(), P, pk, pv, ps,
                                     out.data_ptr(), _ptr(kv), B, T, N, heads, c, threads(out))
    if done:  # checked above; the C side refuses too
        raise ValueError(f"no frame attention kernel for heads of {c}")
    return out, (None if kv is None else (kv[0], kv[1]))


def bf16_dot() -> bool:
    """Whether this build has the bfloat16 matrix kernels (``linear``, ``mlp_residual`` for
    bfloat16 layers): they need the CPU's bfloat16 dot products (AVX512-BF16). The float32 ones
    build everywhere."""
    lib = library()
    return lib is not None and lib.bf16_dot


def mlp_fits(width: int, hidden: int, dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``mlp_residual`` takes this width and hidden width (multiples of 32: 16 lanes x
    kernels.c's MLP_OUT) in this dtype on this build."""
    return (width % 32 == 0 and hidden % 32 == 0 and width <= MAX_WIDTH and hidden <= MAX_HIDDEN
            and (dtype == torch.float32 or (dtype == torch.bfloat16 and bf16_dot())))


def linear_fits(layer: torch.nn.Linear) -> bool:
    """Whether ``linear`` takes this layer: a plain ``nn.Linear`` (not a subclass with a forward of
    its own, no hooks: the kernel stands in for its call) with a multiple of 32 outputs (16 lanes
    x kernels.c's MLP_OUT) and float32 weights, or bfloat16 ones with an even number of inputs on
    a build with ``bf16_dot``."""
    dtype = layer.weight.dtype
    return (type(layer) is torch.nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
            and layer.out_features % 32 == 0
            and (dtype == torch.float32 or (dtype == torch.bfloat16 and layer.in_features % 2 == 0 and bf16_dot())))


def pack_f32(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight (out, in) as the float32 matrix kernels read it: 16 outputs per
    input, (in, out / 16, 16), contiguous."""
    out, inp = weight.shape
    if out % 16:
        raise ValueError(f"pack_f32: weight of shape {tuple(weight.shape)}; expected (16k, m)")
    return weight.detach().float().reshape(out // 16, 16, inp).permute(2, 0, 1).contiguous()


def pack_pairs(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight (out, in) as the bfloat16 matrix kernels read it: bfloat16 pairs of
    inputs per 16 outputs, (in / 2, out / 16, 16, 2), contiguous."""
    out, inp = weight.shape
    if out % 16 or inp % 2:
        raise ValueError(f"pack_pairs: weight of shape {tuple(weight.shape)}; expected (16k, 2m)")
    return weight.detach().to(torch.bfloat16).reshape(out // 16, 16, inp // 2, 2).permute(2, 0, 1, 3).contiguous()


# layer -> (key, the packed tensors, the tensors they were packed from); weak keys: an entry
# goes with its layer, and is neither pickled nor deep-copied with it
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _version(t: torch.Tensor) -> int | None:
    # inference tensors keep no version counter (nor can they be written outside inference mode)
    return None if t.is_inference() else t._version


def packed(layer: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s weight packed for its dtype (``pack_pairs`` for bfloat16, ``pack_f32`` for
    float32) and its bias in float32 (zeros without one),
    packed once and again when the weight or bias changes: another storage (the packed-from
    storage is held, so its address cannot come back as a new one's) or an in-place write (the
    version counter). Writes that bypass the version counter (through ``.data``, a numpy view, or
    to inference tensors inside ``torch.inference_mode``) are not seen: call ``forget(module)``.
    An entry lives as long as its layer (a layer cast back to float32 keeps its bf16 copies until
    it is freed or forgotten)."""
    tensors = [t for t in (layer.weight, layer.bias) if t is not None]
    key = tuple((t.data_ptr(), _version(t), t.dtype) for t in tensors)
    cached = _PACKED.get(layer)
    if cached is None or cached[0] != key:
        bias = torch.zeros(layer.out_features) if layer.bias is None else layer.bias.detach().float()
        pack = pack_pairs if layer.weight.dtype == torch.bfloat16 else pack_f32
        cached = (key, (pack(layer.weight), bias), [t.detach() for t in tensors])
        _PACKED[layer] = cached
    return cached[1]


def forget(module: torch.nn.Module) -> None:
    """Drop the packed weights of ``module``'s linear layers (after writing their weights in a way
    the version counter does not see); they are packed again at the next call."""
    for m in module.modules():
        _PACKED.pop(m, None)


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)`` for x (..., in) in the layer's dtype (float32, or bfloat16) and a layer that
    ``linear_fits``, the bias added to the float32 accumulators (torch's bf16 addmm first copies
    it into every output row)."""
    if x.shape[-1] != layer.in_features or x.dtype != layer.weight.dtype or not linear_fits(layer):
        raise ValueError(f"no linear kernel for x {tuple(x.shape)} {x.dtype} into {layer} ({layer.weight.dtype}; "
                         f"x in the layer's dtype, outputs a multiple of 32, bf16 needs even inputs and AVX512-BF16)")
    w, b = packed(layer)
    x = x.contiguous()
    y = torch.empty((*x.shape[:-1], layer.out_features), dtype=x.dtype)
    rows = x.numel() // layer.in_features
    done = library().linear_packed(int(x.dtype == torch.bfloat16), rows, layer.in_features, layer.out_features,
                                   x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), threads(y))
    if done:  # checked above; the C side refuses too
        raise ValueError(f"no linear kernel for {layer} in this build")
    return y


def mlp_residual(x: torch.Tensor, h: torch.Tensor, gate: torch.Tensor, fc1: torch.nn.Linear,
                 fc2: torch.nn.Linear) -> torch.Tensor:
    """x + gate * fc2(gelu_tanh(fc1(h))) for x, h (B, T, N, C) and gate (B, T, C) per frame, in
    one pass, for layers C -> hidden -> C, all in float32 or all in bfloat16 (weights packed by
    ``packed``). The hidden activations (in bf16 rounded as torch would store them) never leave
    the cache. Returns the new x."""
    B, T, N, C = x.shape
    hidden = fc1.out_features
    if not mlp_fits(C, hidden, x.dtype):
        raise ValueError(f"no MLP kernel for width {C}, hidden {hidden}, {x.dtype} on this build (multiples of 32 "
                         f"up to {MAX_WIDTH} / {MAX_HIDDEN}; float32, or bfloat16 on a CPU with AVX512-BF16)")
    for name, (t, shape) in {"h": (h, (B, T, N, C)), "gate": (gate, (B, T, C))}.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"mlp_residual: {name} of shape {tuple(t.shape)} for x {tuple(x.shape)}; expected {shape}")
    if (fc1.in_features, fc2.in_features, fc2.out_features) != (C, hidden, C):
        raise ValueError(f"mlp_residual: layers {fc1} and {fc2} for width {C}; expected {C} -> {hidden} -> {C}")
    if not (x.dtype == fc1.weight.dtype == fc2.weight.dtype) or x.dtype not in DTYPES:
        raise ValueError(f"mlp_residual: x and both layers in float32 or all in bfloat16, got {x.dtype}, "
                         f"{fc1.weight.dtype}, {fc2.weight.dtype}")
    frames = B * T
    x, h = x.contiguous(), h.to(x.dtype).contiguous()
    g, stride = _frame_vector(gate.to(x.dtype), frames)
    (w1, b1), (w2, b2) = packed(fc1), packed(fc2)
    y = torch.empty_like(x)
    done = library().mlp_residual(int(x.dtype == torch.bfloat16), frames * N, N, C, hidden, h.data_ptr(),
                                  w1.data_ptr(), b1.data_ptr(),
                                  w2.data_ptr(), b2.data_ptr(), g.data_ptr(), stride, x.data_ptr(), y.data_ptr(),
                                  threads(x))
    if done:  # checked above; the C side refuses too
        raise ValueError(f"no MLP kernel for width {C}, hidden {hidden} in this build")
    return y
