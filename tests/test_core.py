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


def test_auto_trains_through_the_shared_similarity_and_infers_through_sdpa(monkeypatch):
    import bixt.core.attention as attention

    seen = []
    real = attention.bidirectional_attention

    def spy(*args, impl, **kwargs):
        seen.append(impl)
        return real(*args, impl=impl, **kwargs)

    monkeypatch.setattr(attention, "bidirectional_attention", spy)
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    enc = tiny().train()
    reference = tiny(attn_impl="sdpa").train()
    latents, tokens = enc(x, mask)
    assert seen == ["math", "math"]
    ref_latents, ref_tokens = reference(x, mask)
    (latents.square().sum() + tokens.square().sum()).backward()
    (ref_latents.square().sum() + ref_tokens.square().sum()).backward()
    for (name, p), q in zip(enc.named_parameters(), reference.parameters()):
        scale = q.grad.abs().max()  # relative to the largest entry: the squared loss makes large gradients
        torch.testing.assert_close(p.grad / scale, q.grad / scale, atol=1e-5, rtol=0, msg=name)
    seen.clear()
    with torch.no_grad():
        enc(x, mask)
    assert seen == ["sdpa", "sdpa"]
    # above the size limit the matrices kept for the backward would be large: SDPA keeps none
    seen.clear()
    monkeypatch.setattr(attention, "SHARED_SIMILARITY_MAX_ELEMENTS", 2 * 2 * 8 * 9 - 1)
    enc(x, mask)
    assert seen == ["sdpa", "sdpa"]


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


def test_positional_encoding_follows_every_weight_update():
    from bixt.tokenizers.image import FourierPosEncoding2d

    pos = FourierPosEncoding2d(16, (4, 4)).eval()
    with torch.no_grad():
        first = pos(4, 4)
        pos.proj.bias.add_(1.0)
        torch.testing.assert_close(pos(4, 4), first + 1.0)
        pos.proj.bias.data.sub_(1.0)  # behind autograd's back (no version bump): shows all the same
        torch.testing.assert_close(pos(4, 4), first)
    assert pos(4, 4).requires_grad


def test_num_latents_zero_is_refused():
    with pytest.raises(ValueError, match="num_latents must be >= 1, got 0"):
        BiXTEncoder(dim=32, depth=2, num_latents=0, num_heads=2)


def test_layer_scale_of_one_and_inactive_drop_path_change_nothing():
    plain, scaled = tiny(), tiny(init_values=1.0)
    scaled.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], scaled(x)[0], atol=1e-6, rtol=1e-6)
    dropping = tiny(drop_path_rate=0.9).train()  # training mode with drop path > 0 drops paths
    torch.manual_seed(0)
    a = dropping(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(a, dropping(x)[0])
    dropping.eval()
    with torch.no_grad():
        torch.testing.assert_close(dropping(x)[0], dropping(x)[0])


def test_core_uses_no_private_torch_ops():
    import pathlib

    import bixt.core

    for path in pathlib.Path(bixt.core.__file__).parent.glob("*.py"):
        text = path.read_text()
        for private in ("torch.ops.mkl", "torch.ops.mkldnn", "._version", "_linear_pointwise"):
            assert private not in text, f"{path.name} uses {private}"


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




def shared_weights(source, target):
    """``target`` with every weight it shares with ``source``: the same layer of another kind."""
    target.load_state_dict({k: v for k, v in source.state_dict().items() if k in target.state_dict()})
    return target


def test_tokens_only_last_layer_gives_the_same_tokens_and_keeps_no_latent_update():
    full = tiny()
    tokens_only = shared_weights(full, tiny(last_layer="tokens"))  # chosen at construction
    assert tokens_only.blocks[-1].updates == "tokens" and tokens_only.token_layers == [0, 1]
    assert tokens_only.update_tokens_last
    assert set(tokens_only.state_dict()) < set(full.state_dict())
    x = torch.randn(2, 9, 32)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    for impl in ("math", "sdpa"):
        for enc in (full, tokens_only):
            for m in enc.modules():
                if hasattr(m, "attn_impl"):
                    m.attn_impl = impl
        torch.testing.assert_close(tokens_only(x, mask)[1], full(x, mask)[1])
    names = [n for n, _ in tokens_only.blocks[-1].named_parameters()]
    assert not [n for n in names if "latent_attn" in n or "mlp_latents" in n or "proj_latents" in n]
