"""Fused CPU kernels (world_models/kernels.c) against the torch operations they replace."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from world_models import kernels
from world_models.dit import DiT, DiTConfig, frame_attention, modulate

needs_kernels = pytest.mark.skipif(kernels.compiler() is None, reason="no C compiler to build world_models/kernels.c")


@pytest.fixture
def lib():
    if kernels.library() is None:
        pytest.skip("world_models/kernels.c did not build here (see the logged warning)")
    return kernels.library()


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest difference relative to b's scale; bf16 results may differ by its rounding (2^-8)."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


TOL = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2}


@needs_kernels
def test_build_is_cached_per_source_and_cpu(tmp_path):
    first = kernels.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    again = kernels.build(tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp  # not rebuilt
    assert first.name.startswith("kernels-") and first.suffix == ".so"
    assert list(tmp_path.iterdir()) == [first]  # no temporary file left behind


def test_build_failure_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.raises(RuntimeError, match="false failed on kernels.c"):
        kernels.build(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_without_compiler_torch_operations_stand_in(monkeypatch, caplog):
    def broken(directory=None):
        raise RuntimeError("no C compiler found (install gcc, or set CC)")

    monkeypatch.setattr(kernels, "build", broken)
    kernels.library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="world_models.kernels"):
            assert kernels.library() is None
        assert "using torch operations: no C compiler" in caplog.text
        assert not kernels.applies(torch.zeros(3))
        model = DiT(DiTConfig(latent_dim=8, num_tokens=16, action_dim=2, width=32, depth=1, heads=2))
        with torch.no_grad():
            assert model(torch.randn(2, 3, 16, 8), torch.ones(2, 3), torch.zeros(2, 1, 2)).shape == (2, 3, 16, 8)
    finally:
        kernels.library.cache_clear()


def test_applies_only_with_autograd_off(lib, monkeypatch):
    x = torch.zeros(4)
    assert not kernels.applies(x)  # grad mode: torch's operations (a weight may require grad)
    with torch.no_grad():
        assert kernels.applies(x) and kernels.applies(torch.zeros(4, requires_grad=True))
        assert not kernels.applies(torch.zeros(4, dtype=torch.float64))
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
        assert not kernels.applies(x)
    with torch.inference_mode():
        monkeypatch.delenv(kernels.ENV_SWITCH)
        assert kernels.applies(x)


def test_build_key_follows_the_source_and_the_compiler_may_carry_a_wrapper(lib, tmp_path, monkeypatch):
    first = kernels.build(tmp_path)
    changed = tmp_path / "src" / "kernels.c"
    changed.parent.mkdir()
    changed.write_text(kernels.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(kernels, "SOURCE", changed)
    monkeypatch.setenv("CC", "env " + kernels.compiler()[0])  # a wrapper in front, as "ccache gcc"
    second = kernels.build(tmp_path)
    assert second != first and second.exists() and first.exists()
    assert second.stat().st_mode & 0o044  # readable by others: a shared cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,N", [(1, 1, 16), (5, 2, 16), (3, 1, 6)])  # 6 tokens: a partial group of 4 rows
def test_ln_modulate_matches_layer_norm_and_modulate(lib, dtype, B, T, N):
    g = torch.Generator().manual_seed(B * 10 + T)
    C = 64
    x = (torch.randn(B, T, N, C, generator=g) * 3 + 1).to(dtype)
    h = torch.randn(B, T, N, C, generator=g).to(dtype)
    ada = torch.randn(B, T, 9 * C, generator=g).to(dtype)  # strided per-frame chunks, as the DiT has them
    shift, scale, gate = ada.chunk(9, dim=-1)[3:6]
    ref = modulate(F.layer_norm(x, (C,), eps=1e-6), shift, scale)
    assert close(kernels.ln_modulate(x, shift, scale, 1e-6), ref, dtype) < TOL[dtype]

    x_ref = torch.addcmul(x, gate.unsqueeze(2), h)
    x_new, y = kernels.ln_modulate(x, shift, scale, 1e-6, gate=gate, h=h)
    assert torch.equal(x_new, x_ref) if dtype == torch.bfloat16 else close(x_new, x_ref, dtype) < TOL[dtype]
    assert close(y, modulate(F.layer_norm(x_ref, (C,), eps=1e-6), shift, scale), dtype) < TOL[dtype]


def test_ln_modulate_mixed_strides_and_shapes(lib):
    g = torch.Generator().manual_seed(3)
    B, T, N, C = 4, 2, 16, 32
    x, h = torch.randn(B, T, N, C, generator=g), torch.randn(B, T, N, C, generator=g)
    shift = torch.randn(B, T, C, generator=g)  # contiguous
    scale = torch.randn(B, T, 3 * C, generator=g)[..., C:2 * C]  # a strided chunk
    gate = torch.randn(B, T, C, generator=g).transpose(0, 1).contiguous().transpose(0, 1)  # other strides
    x_ref = torch.addcmul(x, gate.unsqueeze(2), h)
    x_new, y = kernels.ln_modulate(x, shift, scale, 1e-6, gate=gate, h=h)
    assert close(x_new, x_ref, torch.float32) < 1e-6
    assert close(y, modulate(F.layer_norm(x_ref, (C,), eps=1e-6), shift, scale), torch.float32) < 2e-6
    with pytest.raises(ValueError, match=r"shift of shape \(1, 2, 32\)"):  # torch would broadcast it
        kernels.ln_modulate(x, shift[:1], scale, 1e-6)
    with pytest.raises(ValueError, match="gate and h go together"):
        kernels.ln_modulate(x, shift, scale, 1e-6, gate=gate)


def test_ln_modulate_widths_without_an_instance(lib):
    assert kernels.ln_fits(384) and not kernels.ln_fits(40)
    with pytest.raises(ValueError, match="no LayerNorm kernel for width 40"):
        kernels.ln_modulate(torch.zeros(1, 1, 2, 40), torch.zeros(1, 1, 40), torch.zeros(1, 1, 40), 1e-6)


def test_ln_modulate_known_values(lib):
    x = torch.tensor([1.0, 2.0, 3.0, 4.0] * 4).view(1, 1, 1, 16)
    y = kernels.ln_modulate(x, torch.full((1, 1, 16), 0.5), torch.ones(1, 1, 16), 0.0)
    # mean 2.5, std sqrt(1.25): (x - 2.5) / 1.118 * 2 + 0.5
    expected = (torch.tensor([-1.5, -0.5, 0.5, 1.5]) / 1.25 ** 0.5 * 2 + 0.5).repeat(4)
    assert torch.allclose(y.flatten(), expected, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("S,c,heads", [(16, 16, 4), (16, 64, 2), (64, 32, 3), (32, 16, 1)])
def test_spatial_attention_matches_sdpa(lib, dtype, S, c, heads):
    g = torch.Generator().manual_seed(S + c)
    L, C = 7, heads * c
    qkv = (torch.randn(L, S, 3 * C, generator=g) * 2).to(dtype)
    q, k, v = qkv.float().view(L, S, 3, heads, c).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(L, S, C)
    assert kernels.spatial_fits(S, c)
    assert close(kernels.spatial_attention(qkv, heads), ref, dtype) < TOL[dtype]


def test_spatial_attention_shapes_without_an_instance(lib):
    assert not kernels.spatial_fits(24, 16) and not kernels.spatial_fits(16, 48)
    with pytest.raises(ValueError, match="no spatial attention kernel for sequences of 24"):
        kernels.spatial_attention(torch.zeros(2, 24, 3 * 32), 2)


def test_spatial_attention_one_hot_scores(lib):
    # a query far along one key's direction attends to that key alone: the output is its value
    S, c = 16, 16
    keys = torch.eye(S, c) * 50
    values = torch.arange(S * c, dtype=torch.float32).view(S, c)
    qkv = torch.cat([keys, keys, values], dim=1)[None]  # query i = key i
    assert torch.allclose(kernels.spatial_attention(qkv, 1)[0], values, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T,shared,c", [(1, 0, 16), (2, 0, 16), (1, 1, 16), (2, 2, 16), (1, 1, 32), (2, 1, 64)])
def test_frame_attention_matches_torch(lib, dtype, T, shared, c):
    g = torch.Generator().manual_seed(T * 3 + shared)
    B, N, heads = 6, 16, 4
    C = heads * c
    qkv = torch.randn(B, T, N, 3 * C, generator=g).to(dtype)
    q, k, v = qkv.float().view(B, T, N, 3, heads, c).unbind(3)
    # past frames: `shared` of them common to every row (batch 1), then one of each row's own
    pk = [torch.randn(1, N, heads, c, generator=g) for _ in range(shared)] + [torch.randn(B, N, heads, c, generator=g)]
    pv = [torch.randn(1, N, heads, c, generator=g) for _ in range(shared)] + [torch.randn(B, N, heads, c, generator=g)]
    ref = frame_attention(q, k, v, (pk, pv)).reshape(B, T, N, C)
    out, kv = kernels.frame_attention(qkv, heads, pk, pv, keep=True)
    assert close(out, ref, dtype) < TOL[dtype]
    assert torch.equal(kv[0], k) and torch.equal(kv[1], v)  # float32 keys/values for a context cache
    out, kv = kernels.frame_attention(qkv, heads)
    assert kv is None and close(out, frame_attention(q, k, v).reshape(B, T, N, C), dtype) < TOL[dtype]


def test_frame_attention_refuses_what_it_cannot_read(lib):
    qkv = torch.zeros(4, 1, 8, 3 * 32)
    good = torch.zeros(4, 8, 2, 16)
    for k, v, what in ((torch.zeros(2, 8, 2, 16), torch.zeros(2, 8, 2, 16), "past keys"),  # batch 2 of 4
                       (torch.zeros(4, 4, 2, 16), torch.zeros(4, 4, 2, 16), "past keys"),  # 4 tokens of 8
                       (torch.zeros(1, 8, 2, 16), good, "past keys")):  # keys shared, values per row
        with pytest.raises(ValueError, match=what):
            kernels.frame_attention(qkv, 2, [k], [v])
    with pytest.raises(ValueError, match="1 past key frames but 0 value frames"):
        kernels.frame_attention(qkv, 2, [good], [])
    # the stack scratch is bounded: width x frames seen
    assert kernels.frame_fits(1024, 64, 16) and not kernels.frame_fits(1024, 64, 17)


def test_frame_attention_heads_without_an_instance(lib):
    assert kernels.frame_fits(64, 16, 3) and not kernels.frame_fits(48, 24, 3) and not kernels.frame_fits(64, 16, 300)
    with pytest.raises(ValueError, match="no frame attention kernel for heads of 24"):
        kernels.frame_attention(torch.zeros(2, 1, 4, 3 * 48), 2)


def test_frame_attention_first_frame_copies_its_value(lib):
    # with nothing before it, a frame attends to itself only: out = v exactly
    qkv = torch.randn(3, 1, 16, 3 * 32)
    out, _ = kernels.frame_attention(qkv, 2)
    assert torch.equal(out, qkv[..., 64:])


@pytest.mark.parametrize("batch", [1, 40])
def test_dit_inference_same_with_and_without_kernels(lib, monkeypatch, batch):
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=16, num_tokens=16, action_dim=4, width=64, depth=2, heads=4, history=2,
                          horizon=1, context_deltas=True))
    for p in model.parameters():  # adaLN-Zero starts every branch shut: open them
        p.data.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(batch, 2, 16, 16, generator=g)
    x = torch.randn(batch, 1, 16, 16, generator=g)
    t = torch.full((batch, 1), 0.3)
    a = torch.randn(batch, 1, 4, generator=g)

    def run():
        with torch.no_grad():
            whole = model(torch.cat([ctx, x], 1), torch.cat([torch.ones(batch, 2), t], 1), a)[:, 2:]
            part = model.forward_target(x, t, a, model.encode_context(ctx))
            one = ctx[:1, :1].expand(batch, -1, -1, -1)  # a first context frame every row shares
            shared = model.forward_target(x, t, a, model.encode_context(torch.cat([one, ctx[:, 1:]], 1), shared=1))
        return whole, part, shared

    fused = run()
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    plain = run()
    for f, p in zip(fused, plain):
        assert close(f, p, torch.float32) < 2e-5
    assert close(fused[1], fused[0], torch.float32) < 2e-5  # the context cache gives the whole clip's numbers
    # with autograd on, torch's operations: a frozen model's gradient with respect to the actions
    # is the same with the kernels switched on (they would cut the graph)
    monkeypatch.delenv(kernels.ENV_SWITCH)
    model.requires_grad_(False)
    grads = []
    for switch in ("1", "0"):
        monkeypatch.setenv(kernels.ENV_SWITCH, switch)
        acts = a.clone().requires_grad_(True)
        model(torch.cat([ctx, x], 1), torch.cat([torch.ones(batch, 2), t], 1), acts).square().sum().backward()
        grads.append(acts.grad)
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
    model.requires_grad_(True)
    monkeypatch.delenv(kernels.ENV_SWITCH)
    # training runs through torch's operations: gradients flow
    out = model(torch.cat([ctx, x], 1), torch.cat([torch.ones(batch, 2), t], 1), a)
    out.square().mean().backward()
    assert model.blocks[0].attn_s.qkv.weight.grad is not None
    assert os.environ.get(kernels.ENV_SWITCH) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gelu_matches_torch_tanh_gelu(lib, dtype):
    # an odd length: the tail goes through a padded vector
    x = torch.cat([torch.linspace(-100, 100, 4001), torch.randn(10007) * 3]).to(dtype)
    ref = F.gelu(x.double(), approximate="tanh")
    y = kernels.gelu(x)
    assert y.dtype == dtype and y.shape == x.shape
    err = (y.double() - ref).abs().max().item()
    assert err < (2e-6 * 100 if dtype == torch.float32 else 0.5)  # relative to |x| <= 100: float rounding
    small = x.float().abs() < 4
    assert (y.double() - ref)[small].abs().max().item() < (2e-6 if dtype == torch.float32 else 2e-2)
    # known values: 0 at 0, the identity far right, 0 far left (no overflow to NaN)
    y = kernels.gelu(torch.tensor([0.0, 50.0, -50.0, 1.0]))
    assert y[0] == 0 and y[1] == 50 and abs(y[2].item()) < 1e-30
    assert abs(y[3].item() - 0.8411920071) < 1e-6


def test_dit_bfloat16_inference_with_kernels_stays_within_bf16_rounding(lib, monkeypatch):
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=16, num_tokens=16, action_dim=4, width=64, depth=2, heads=4))
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    low = DiT(model.config).to(torch.bfloat16)
    low.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(2)
    clip, t, a = torch.randn(30, 3, 16, 16, generator=g), torch.rand(30, 3, generator=g), torch.randn(30, 1, 4, generator=g)
    with torch.no_grad():
        ref = model(clip, t, a).double()
        fused = low(clip, t, a).double()
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
        plain = low(clip, t, a).double()
    scale = ref.abs().max()
    # the kernels' bf16 result is as close to float32 as torch's own bf16 operations are
    assert (fused - ref).abs().max() / scale < 1.5 * (plain - ref).abs().max() / scale + 1e-3
    assert (fused - ref).abs().max() / scale < 2e-2


@pytest.fixture
def mlp_lib(lib):
    if not kernels.mlp_fits(64, 256):
        pytest.skip("this CPU has no AVX512-BF16: the MLP kernel is not built (torch's operations run)")
    return lib


def mlp_reference(x, h, gate, fc1, fc2, round_hidden=True):
    """x + gate * fc2(gelu_tanh(fc1(h))) in float64, the hidden activations rounded to bfloat16
    (as the bf16 kernel stores them) unless ``round_hidden`` is False"""
    hid = F.gelu(h.double() @ fc1.weight.double().T + fc1.bias.double(), approximate="tanh")
    if round_hidden:
        hid = hid.to(torch.bfloat16).double()
    return x.double() + gate.double().unsqueeze(2) * (hid @ fc2.weight.double().T + fc2.bias.double())


def need(dtype):
    """Skip a bfloat16 case on a build without AVX512-BF16 (the float32 kernels build anywhere)."""
    if kernels.library() is None:
        pytest.skip("world_models/kernels.c did not build here (see the logged warning)")
    if dtype == torch.bfloat16 and not kernels.bf16_dot():
        pytest.skip("this CPU has no AVX512-BF16: the bf16 matrix kernels are not built")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,N,C", [(1, 1, 16, 64), (3, 2, 16, 64), (3, 1, 5, 64), (2, 2, 16, 96)])  # 15 rows: a partial tile
def test_mlp_residual_matches_torch(dtype, B, T, N, C):
    need(dtype)
    torch.manual_seed(0)
    fc1, fc2 = torch.nn.Linear(C, 4 * C).to(dtype), torch.nn.Linear(4 * C, C).to(dtype)
    x, h = torch.randn(B, T, N, C).to(dtype), torch.randn(B, T, N, C).to(dtype)
    gate = torch.randn(B, T, 9 * C).to(dtype)[..., 8 * C:]  # a chunk of the adaLN output: strided
    y = kernels.mlp_residual(x, h, gate, fc1, fc2)
    assert y.dtype == dtype and y.shape == x.shape
    ref = mlp_reference(x, h, gate, fc1, fc2, round_hidden=dtype == torch.bfloat16)
    assert close(y, ref, dtype) < (8e-3 if dtype == torch.bfloat16 else 2e-6)  # bf16 storage: 2^-8
    with torch.no_grad():  # torch's own operations are as far from float64
        plain = dit_gated(x, gate, fc2(F.gelu(fc1(h), approximate="tanh")))
    assert close(plain, ref, dtype) < (8e-3 if dtype == torch.bfloat16 else 2e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,out,bias", [((4800, 64), 192, True), ((3, 5, 64), 64, False), ((1, 96), 32, True),
                                            ((2, 7), 32, True)])  # 7 inputs: odd, float32 only
def test_linear_matches_torch(dtype, shape, out, bias):
    need(dtype)
    torch.manual_seed(0)
    layer = torch.nn.Linear(shape[-1], out, bias=bias).to(dtype)
    x = torch.randn(shape).to(dtype)
    if dtype == torch.bfloat16 and shape[-1] % 2:
        assert not kernels.linear_fits(layer)  # bf16 pairs: an even number of inputs
        return
    y = kernels.linear(x, layer)
    assert y.dtype == dtype and y.shape == (*shape[:-1], out)
    ref = x.double() @ layer.weight.double().T + (layer.bias.double() if bias else 0)
    assert close(y, ref, dtype) < (8e-3 if dtype == torch.bfloat16 else 2e-6)
    # known values: the identity's rows pick inputs, the bias adds exactly
    eye = torch.nn.Linear(64, 64).to(dtype)
    with torch.no_grad():
        eye.weight.copy_(torch.eye(64))
        eye.bias.fill_(0.5)
    x = torch.arange(64.0).to(dtype).expand(9, 64)  # 9 rows: a full tile of 8 and one row more
    assert torch.equal(kernels.linear(x, eye), (x.float() + 0.5).to(dtype))


def dit_gated(x, gate, h):
    from world_models.dit import gated
    return gated(x, gate, h)


def test_mlp_residual_known_values(mlp_lib):
    # fc1 copies h into the first 64 hidden units, fc2 copies them back: y = x + gate * gelu(h)
    C = 64
    fc1, fc2 = torch.nn.Linear(C, 4 * C).bfloat16(), torch.nn.Linear(4 * C, C, bias=False).bfloat16()
    with torch.no_grad():
        fc1.weight.zero_()[:C].copy_(torch.eye(C))
        fc2.weight.zero_()[:, :C].copy_(torch.eye(C))
        fc1.bias.zero_()
    h = torch.zeros(1, 2, 16, C, dtype=torch.bfloat16)
    h[..., :4] = torch.tensor([0.0, 1.0, 50.0, -50.0])
    x = torch.full((1, 2, 16, C), 0.5, dtype=torch.bfloat16)
    gate = torch.stack([torch.ones(C), torch.zeros(C)]).unsqueeze(0).bfloat16()  # frame 0 open, frame 1 shut
    y = kernels.mlp_residual(x, h, gate, fc1, fc2)
    # gelu(1) = 0.8411920 -> bf16 0.83984375 as a hidden activation; 0.5 + that = 1.33984375, half
    # way between bf16's 1.3359375 and 1.34375: to even, 1.34375
    assert y[0, 0, 0, :4].tolist() == [0.5, 1.34375, 50.5, 0.5]
    assert torch.equal(y[0, 1], x[0, 1])  # a shut gate leaves x as it was


def test_mlp_gelu_over_every_bfloat16_value(mlp_lib):
    # identity layers around the GELU: y = gelu(h) for every bf16 h in [-12, 12] (and a few huge
    # ones), within 0.6 ulp of the float64 tanh-GELU (its bf16 rounding alone is 0.5 ulp)
    import math

    C = 64
    fc1, fc2 = torch.nn.Linear(C, 4 * C, bias=False).bfloat16(), torch.nn.Linear(4 * C, C, bias=False).bfloat16()
    with torch.no_grad():
        fc1.weight.zero_()[:C].copy_(torch.eye(C))
        fc2.weight.zero_()[:, :C].copy_(torch.eye(C))
    values = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    values = values[torch.isfinite(values) & (values.float().abs() <= 12)]
    # (not inf or NaN: through the identity matmuls 0 * inf would spread NaN over the row)
    values = torch.cat([values, torch.tensor([-1e38, -3e38, -1e30, 1e30, 3e38]).bfloat16()])
    n = -(-values.numel() // C) * C
    h = torch.zeros(n, dtype=torch.bfloat16)
    h[:values.numel()] = values
    h = h.view(1, n // C, 1, C).transpose(1, 2).reshape(1, 1, n // C, C)  # one frame of n / 64 rows
    y = kernels.mlp_residual(torch.zeros_like(h), h, torch.ones(1, 1, C, dtype=torch.bfloat16), fc1, fc2)
    y = y.reshape(-1)[:values.numel()].double()
    x = values.double()
    # the tanh form as x * sigmoid(2z): 0.5 x (1 + tanh z) cancels in float64 too for x below -6
    ref = x * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
    normal = torch.isfinite(x) & (ref.abs() > 1e-30)
    ulp = torch.tensor([2.0 ** (math.frexp(r)[1] - 8) for r in ref[normal].tolist()], dtype=torch.float64)
    assert ((y[normal] - ref[normal]).abs() / ulp).max().item() < 0.6
    tiny = torch.isfinite(x) & ~normal  # far left, and 0: GELU is 0 to float32
    assert y[tiny].abs().max().item() <= 1e-30
    huge = values.float()
    assert y[huge.abs() > 1e29].tolist() == [0.0, 0.0, 0.0, huge[-2].item(), huge[-1].item()]  # no NaN, no x * 1e-39


def test_packed_weights_follow_changes_and_can_be_forgotten(mlp_lib):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 64).bfloat16()
    x = torch.randn(20, 64).bfloat16()

    def matches() -> bool:
        with torch.no_grad():
            return close(kernels.linear(x, layer), layer(x), torch.bfloat16) < 8e-3

    assert matches()
    with torch.no_grad():
        layer.bias.add_(1.0)  # in place: a new version
    assert matches()
    layer.weight = torch.nn.Parameter(torch.randn(64, 64).bfloat16())  # new storage
    assert matches()
    layer.weight.data.mul_(-1)  # through .data: no new version, so not seen...
    assert not matches()
    kernels.forget(layer)  # ...until forgotten
    assert matches()
    # not pickled or deep-copied with the layer
    import copy
    import pickle
    assert len(pickle.dumps(layer)) == len(pickle.dumps(torch.nn.Linear(64, 64).bfloat16()))
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        assert torch.equal(kernels.linear(x, twin), kernels.linear(x, layer))


def test_bfloat16_model_built_in_inference_mode(mlp_lib):
    # inference tensors keep no version counter: the cache keys them by storage alone
    with torch.inference_mode():
        model = DiT(DiTConfig(latent_dim=16, num_tokens=16, action_dim=4, width=64, depth=1, heads=4)).to(torch.bfloat16)
        clip, t, a = torch.randn(2, 3, 16, 16), torch.rand(2, 3), torch.randn(2, 1, 4)
        first = model(clip, t, a)
        assert torch.equal(model(clip, t, a), first)
    with torch.no_grad():
        assert torch.equal(model(clip, t, a), first)


def test_dit_takes_the_bf16_kernels_only_for_what_they_stand_in_for(mlp_lib, monkeypatch):
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=16, num_tokens=16, action_dim=4, width=64, depth=1, heads=4)).to(torch.bfloat16)
    block = model.blocks[0]
    calls = []
    block.attn_t.qkv.register_forward_hook(lambda *args: calls.append("qkv"))  # a hooked layer runs its own call
    block.mlp.append(torch.nn.Dropout(0.0))  # an MLP of another shape: torch's modules
    clip, t, a = torch.randn(2, 3, 16, 16), torch.rand(2, 3), torch.randn(2, 1, 4)
    used = []
    monkeypatch.setattr(kernels, "mlp_residual", lambda *args: used.append("mlp"))
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            out = model.to(dtype)(clip, t, a)
            assert out.dtype == dtype and torch.isfinite(out).all()
    assert calls == ["qkv", "qkv"] and used == []
    assert not kernels.linear_fits(block.attn_t.qkv) and kernels.linear_fits(block.attn_s.qkv.bfloat16())


def test_mlp_residual_refuses_what_it_cannot_read(mlp_lib):
    fc1, fc2 = torch.nn.Linear(64, 256).bfloat16(), torch.nn.Linear(256, 64).bfloat16()
    x, gate = torch.randn(2, 1, 16, 64).bfloat16(), torch.zeros(2, 1, 64).bfloat16()
    with pytest.raises(ValueError, match=r"gate of shape \(2, 1, 32\)"):
        kernels.mlp_residual(x, x, torch.zeros(2, 1, 32).bfloat16(), fc1, fc2)
    with pytest.raises(ValueError, match="expected 64 -> 256 -> 64"):
        kernels.mlp_residual(x, x, gate, fc1, fc1)
    with pytest.raises(ValueError, match="x and both layers in float32 or all in bfloat16"):
        kernels.mlp_residual(x.float(), x, gate, fc1, fc2)
    with pytest.raises(ValueError, match="x and both layers in float32 or all in bfloat16"):
        kernels.mlp_residual(x, x, gate, torch.nn.Linear(64, 256), fc2)  # a float32 layer
    with pytest.raises(ValueError, match="no MLP kernel for width 48"):
        kernels.mlp_residual(torch.zeros(1, 1, 16, 48).bfloat16(), x, x, fc1, fc2)
    with pytest.raises(ValueError, match="pack_pairs"):
        kernels.pack_pairs(torch.zeros(10, 4))
    with pytest.raises(ValueError, match="no linear kernel"):
        kernels.linear(x.float(), fc1)  # x not in the layer's dtype
    with pytest.raises(ValueError, match="no linear kernel"):
        kernels.linear(x, torch.nn.Linear(64, 40).bfloat16())  # outputs not a multiple of 32
    with pytest.raises(ValueError, match="pack_f32"):
        kernels.pack_f32(torch.zeros(10, 4))


def test_dit_repacks_mlp_weights_when_they_change(mlp_lib, monkeypatch):
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=16, num_tokens=16, action_dim=4, width=64, depth=1, heads=4)).to(torch.bfloat16)
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    clip, t, a = torch.randn(4, 3, 16, 16), torch.rand(4, 3), torch.randn(4, 1, 4)
    block = model.blocks[0]
    with torch.no_grad():
        before = model(clip, t, a)
        packed = kernels.packed(block.mlp[2])
        assert kernels.packed(block.mlp[2])[0] is packed[0]  # packed once
        block.mlp[2].weight.mul_(3)  # in place: a new version of the same storage
        after = model(clip, t, a)
        assert kernels.packed(block.mlp[2])[0] is not packed[0]
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
        plain = model(clip, t, a)
    assert close(after, plain, torch.bfloat16) < 2e-2 and close(before, plain, torch.bfloat16) > 0.05


def test_runs_with_a_world_model_record_what_it_ran_on(monkeypatch):
    from harness.config import EvalConfig
    from harness.evaluate import inference_backend

    assert inference_backend(EvalConfig(env="metaworld/reach-v3", policies=["random"])) == {}
    for config in (EvalConfig(env="metaworld/reach-v3", policies=["cem:wm=minivae_dit_tiny"]),
                   EvalConfig(env="metaworld/reach-v3", policies=["random"], wm="minivae_dit_tiny")):
        record = inference_backend(config)["world_model_kernels"]
        assert record.startswith("fused CPU kernels" if kernels.compiler() else "torch operations (no C compiler)")
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert inference_backend(config) == {"world_model_kernels": "torch operations (WM_HARNESS_KERNELS=0)"}
