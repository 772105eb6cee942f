"""BiXTEncoder: shapes, masks, gradients, drop-path, determinism, attention paths, bad input."""
import platform
import sys

import pytest
import torch

from bixt import BiXTEncoder
from bixt.core.attention import bidirectional_attention


def tiny(**kwargs):
    torch.manual_seed(0)
    cfg = dict(dim=32, depth=2, num_latents=8, num_heads=2)
    cfg.update(kwargs)
    return BiXTEncoder(**cfg).eval()


def test_shapes_and_separate_dims():
    enc = tiny(token_dim=24, attn_dim=16, cross_heads=4)
    latents, tokens = enc(torch.randn(3, 11, 24))
    assert latents.shape == (3, 8, 32)
    assert tokens.shape == (3, 11, 24)


def test_one_sided_last_layer_leaves_tokens_and_has_no_token_params():
    enc = tiny(update_tokens_last=False)
    names = [n for n, _ in enc.blocks[-1].named_parameters()]
    assert not any("tokens" in n and "rv_tokens" not in n and "norm_tokens" not in n for n in names)
    x = torch.randn(2, 5, 32)
    # tokens returned by a one-sided last layer are those produced by the layer before it
    _, tokens_full = enc(x)
    enc_first = tiny(update_tokens_last=False)
    enc_first.blocks = enc_first.blocks[:1]
    enc_first.load_state_dict({k: v for k, v in enc.state_dict().items() if not k.startswith("blocks.1")})
    _, tokens_first = enc_first(x)
    torch.testing.assert_close(tokens_full, tokens_first)


def test_attention_math_matches_reference_and_sdpa():
    torch.manual_seed(0)
    b, h, l, n, d = 2, 3, 5, 7, 4
    r_lat, v_lat = torch.randn(b, h, l, d), torch.randn(b, h, l, d)
    r_tok, v_tok = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 4:] = False
    lat, tok, (a_lat, a_tok) = bidirectional_attention(r_lat, v_lat, r_tok, v_tok, mask, impl="math")
    # reference: explicit loops over the definition with float64
    sim = torch.einsum("bhld,bhnd->bhln", r_lat.double(), r_tok.double()) / d ** 0.5
    ref_lat = torch.einsum("bhln,bhnd->bhld", sim.masked_fill(~mask[:, None, None], -1e300).softmax(-1), v_tok.double())
    ref_tok = torch.einsum("bhln,bhld->bhnd", sim.softmax(-2), v_lat.double())
    torch.testing.assert_close(lat.double(), ref_lat, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tok.double(), ref_tok, atol=1e-6, rtol=1e-5)
    assert torch.allclose(a_lat.sum(-1), torch.ones(()))
    assert torch.allclose(a_tok.sum(-2), torch.ones(()))
    assert a_lat[1, :, :, 4:].abs().max() == 0
    s_lat, s_tok, _ = bidirectional_attention(r_lat, v_lat, r_tok, v_tok, mask, impl="sdpa")
    torch.testing.assert_close(s_lat, lat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_tok, tok, atol=1e-5, rtol=1e-5)


def test_encoder_math_and_sdpa_paths_agree():
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    out_math = tiny(attn_impl="math")(x, mask)
    out_sdpa = tiny(attn_impl="sdpa")(x, mask)
    for a, b in zip(out_math, out_sdpa):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_padding_mask_invariance():
    enc = tiny()
    torch.manual_seed(1)
    lengths = [7, 4, 1]
    seqs = [torch.randn(n, 32) for n in lengths]
    padded = torch.zeros(3, 7, 32)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    for i, s in enumerate(seqs):
        padded[i, : len(s)] = s
        padded[i, len(s):] = 100.0  # garbage in padding must not leak
        mask[i, : len(s)] = True
    lat_pad, tok_pad = enc(padded, mask)
    for i, s in enumerate(seqs):
        lat, tok = enc(s[None])
        assert (lat_pad[i] - lat[0]).abs().max() <= 1e-5
        assert (tok_pad[i, : len(s)] - tok[0]).abs().max() <= 1e-5
        assert torch.count_nonzero(tok_pad[i, len(s):]) == 0


def test_gradients_reach_every_parameter():
    enc = tiny(init_values=1e-2).train()
    x = torch.randn(2, 6, 32, requires_grad=True)
    latents, tokens = enc(x)
    (latents.square().mean() + tokens.square().mean()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_grad_checkpointing_same_gradients():
    x = torch.randn(2, 6, 32)
    grads = []
    for ckpt in (False, True):
        enc = tiny(grad_checkpointing=ckpt).train()
        sum(o.sum() for o in enc(x)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in enc.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_active_in_train_only():
    enc = tiny(drop_path_rate=0.5)
    x = torch.randn(4, 6, 32)
    enc.eval()
    torch.testing.assert_close(enc(x)[0], enc(x)[0])
    enc.train()
    torch.manual_seed(0)
    a = enc(x)[0]
    torch.manual_seed(1)
    b = enc(x)[0]
    assert not torch.allclose(a, b)


def test_deterministic_for_seed():
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(tiny()(x)[0], tiny()(x)[0], rtol=0, atol=0)


def test_return_attention_maps():
    enc = tiny(update_tokens_last=False)
    latents, tokens, maps = enc(torch.randn(2, 5, 32), return_attention=True)
    assert len(maps) == 2
    assert maps[0][0].shape == (2, 2, 8, 5) and maps[0][1].shape == (2, 2, 8, 5)
    assert maps[1][1] is None  # one-sided last layer


@pytest.mark.parametrize(
    "tokens, mask, match",
    [
        (torch.randn(2, 5, 16), None, r"tokens must have shape \(batch, tokens, 32\), got \(2, 5, 16\)"),
        (torch.randn(5, 32), None, r"got \(5, 32\)"),
        (torch.randn(2, 5, 32), torch.ones(2, 4, dtype=torch.bool), r"token_mask must have shape .* \(2, 5\), got \(2, 4\)"),
        (torch.randn(2, 5, 32), torch.ones(2, 5), "bool tensor"),
        (torch.randn(2, 5, 32), torch.tensor([[True] * 5, [False] * 5]), r"sample\(s\) \[1\] as padding"),
    ],
)
def test_bad_input_errors(tokens, mask, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny()(tokens, mask)


def test_bad_construction():
    with pytest.raises(ValueError, match="divisible"):
        BiXTEncoder(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="attn_impl"):
        BiXTEncoder(dim=32, num_heads=2, attn_impl="flash")


def test_encoder_traces_without_graph_breaks():
    enc = tiny()
    explanation = torch._dynamo.explain(enc)(torch.randn(2, 5, 32), torch.ones(2, 5, dtype=torch.bool))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    # bf16 autocast inference: bf16 residual streams and bf16 norms trace too
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(enc)(torch.randn(2, 5, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_positional_encoding_cache_follows_weight_updates():
    from bixt.tokenizers.image import FourierPosEncoding2d

    pos = FourierPosEncoding2d(16, (4, 4)).eval()
    with torch.no_grad():
        first = pos(4, 4)
        assert pos(4, 4) is first  # cached in inference
        pos.proj.bias.add_(1.0)
        second = pos(4, 4)
    torch.testing.assert_close(second, first + 1.0)
    assert pos(4, 4).requires_grad  # training path is never cached


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_inference_path_matches_plain_path(autocast):
    from bixt.core.layers import set_fused_inference

    enc = tiny(update_tokens_last=False)
    x = torch.randn(2, 9, 32)
    outputs = []
    for fused in (True, False):
        previous = set_fused_inference(fused)
        try:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                outputs.append(enc(x)[0].float())
        finally:
            set_fused_inference(previous)
    if not autocast:
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
        return
    # bf16: the fast path keeps activations bf16 throughout, autocast only inside GEMMs; both stay
    # within 2 % of fp32 (relative to the largest magnitude), the bound for bf16 features.
    with torch.no_grad():
        reference = enc(x)[0]
    for out in outputs:
        assert (out - reference).abs().max() / reference.abs().max() < 2e-2
    assert outputs[0].dtype == torch.float32 and not torch.equal(outputs[0], reference)


def test_fused_residual_matches_layer_scale_and_drop_path_path():
    # layer scale turns the in-GEMM residual add off; with init_values=1 it is numerically a no-op
    plain, scaled = tiny(), tiny(init_values=1.0)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], scaled(x)[0], atol=1e-6, rtol=1e-6)
    # training mode with drop path > 0 must still drop paths (not fused away)
    dropping = tiny(drop_path_rate=0.9).train()
    torch.manual_seed(0)
    a = dropping(x)[0]
    torch.manual_seed(1)
    b = dropping(x)[0]
    assert not torch.allclose(a, b)


def test_packed_weight_cache_follows_weight_updates():
    from bixt.core.layers import Linear

    layer = Linear(32, 16)
    x = torch.randn(5, 32)
    with torch.no_grad():
        first = layer(x)
        torch.testing.assert_close(first, torch.nn.functional.linear(x, layer.weight, layer.bias), atol=1e-6, rtol=0)
        layer.weight.mul_(2.0)  # in-place update: the packed copy must be rebuilt
        layer.bias.zero_()
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight), atol=1e-5, rtol=0)
        layer.load_state_dict({"weight": torch.ones(16, 32), "bias": torch.ones(16)})
        torch.testing.assert_close(layer(x), x.sum(-1, keepdim=True).expand(5, 16) + 1, atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = layer(x)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), x.sum(-1, keepdim=True).expand(5, 16) + 1, atol=0.1, rtol=1e-2)
    with torch.no_grad():  # fp32 copies are packed per row count: every batch size stays exact
        for rows in (1, 3, 5, 7, 9, 11, 5):
            xs = torch.randn(rows, 32)
            torch.testing.assert_close(layer(xs), torch.nn.functional.linear(xs, layer.weight, layer.bias),
                                       atol=1e-5, rtol=0)
    copy = __import__("copy").deepcopy(layer)  # packed copies live outside the module: none is shared
    with torch.no_grad():
        before = layer(x)
        copy.weight.mul_(-1.0)
        torch.testing.assert_close(layer(x), before)
        torch.testing.assert_close(copy(x), torch.nn.functional.linear(x, copy.weight, copy.bias), atol=1e-5, rtol=0)


def test_layer_norm_keeps_bf16_activations_under_cpu_autocast():
    from bixt.core.layers import LayerNorm

    norm = LayerNorm(32)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(4, 7, 32) * 3 + 1
    reference = torch.nn.functional.layer_norm(x, (32,), norm.weight, norm.bias, 1e-6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = norm(x.bfloat16())
        out32 = norm(x)  # fp32 input keeps autocast's fp32 norm
    assert out16.dtype == torch.bfloat16 and out32.dtype == torch.float32
    torch.testing.assert_close(out16.float(), reference, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(out32, reference)


def test_tune_cpu_allocator_is_idempotent_and_respects_user_settings(monkeypatch):
    import bixt.runtime as runtime

    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert runtime.tune_cpu_allocator() is False  # the user's own malloc settings win
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(runtime, "_applied", None)
    first = runtime.tune_cpu_allocator()
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert first is glibc
    assert runtime.tune_cpu_allocator() is first


@pytest.mark.parametrize("switch_modes", [True, False])
def test_packed_weights_never_go_stale_between_training_steps(switch_modes):
    # fused AdamW updates parameters without bumping their version counters
    enc = tiny()
    optimizer = torch.optim.AdamW(enc.parameters(), lr=0.1, fused=True)
    x = torch.randn(2, 9, 32)
    for _ in range(2):
        enc.eval()
        with torch.no_grad():
            fast = enc(x)[0]
        from bixt.core.layers import set_fused_inference
        previous = set_fused_inference(False)
        try:
            with torch.no_grad():
                torch.testing.assert_close(fast, enc(x)[0], atol=1e-5, rtol=1e-5)
        finally:
            set_fused_inference(previous)
        if switch_modes:
            enc.train()
        optimizer.zero_grad()
        enc(x)[0].square().mean().backward()  # train step, in eval mode too when not switching
        optimizer.step()


def test_mlp_row_chunks_in_inference_match_one_pass(monkeypatch):
    import bixt.core.layers as layers

    torch.manual_seed(0)
    mlp = layers.Mlp(16, 64).eval()
    x, residual = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    with torch.no_grad():
        whole = mlp(x, residual=residual)
        monkeypatch.setattr(layers, "MLP_CHUNK_ROWS", 4)  # 21 rows -> 6 chunks of 4 (last: 1)
        chunked = mlp(x, residual=residual)
        chunked_no_residual = mlp(x)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked_no_residual + residual, whole, atol=1e-5, rtol=1e-5)
    assert chunked.shape == (3, 7, 16)


def test_cpu_kernel_probe_treats_a_refusing_kernel_as_missing(monkeypatch):
    from bixt.core.layers import cpu_kernel_available, cpu_kernels_forced_off, probe_cpu_kernel

    def refuse(*args, **kwargs):  # what oneDNN says on an AVX2-only CPU
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert or "
                           "avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    assert probe_cpu_kernel("bf16") is False
    with pytest.raises(ValueError, match="kind must be one of"):
        cpu_kernel_available("int8")
    with cpu_kernels_forced_off("fp32", "bf16"):
        assert not cpu_kernel_available("fp32") and not cpu_kernel_available("bf16")
        with cpu_kernels_forced_off("fp32"):  # nested: leaving the inner block keeps the outer one
            pass
        assert not cpu_kernel_available("fp32")
    monkeypatch.undo()
    assert cpu_kernel_available("fp32") == probe_cpu_kernel("fp32")
    assert cpu_kernel_available("bf16") == probe_cpu_kernel("bf16")


@pytest.mark.parametrize("kind", ["fp32", "bf16"])
def test_fast_path_forced_off_matches_the_plain_path(kind):
    from bixt.core.layers import cpu_kernels_forced_off, set_fused_inference

    enc = tiny(update_tokens_last=False)
    x = torch.randn(2, 9, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
        with cpu_kernels_forced_off(kind):
            forced_off = enc(x)[0]
        previous = set_fused_inference(False)
        try:
            plain = enc(x)[0]
        finally:
            set_fused_inference(previous)
    torch.testing.assert_close(forced_off, plain, rtol=0, atol=0)
