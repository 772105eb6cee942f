"""The three cross-attention variants (issue 21): each against a float64 reference written from its
definition, token pass-through of the iterative variant, gradients, padding that never reaches a real
output, tracing / export, and the errors for what a variant cannot do."""
from __future__ import annotations

import math

import pytest
import timm
import torch

from bixt import BiXTEncoder
from bixt.core import CROSS_ATTENTIONS

VARIANTS = ("bidirectional", "sequential", "iterative")


def tiny(cross_attention: str, **kwargs) -> BiXTEncoder:
    torch.manual_seed(0)
    cfg = dict(num_heads=2, cross_attention=cross_attention)
    cfg.update(kwargs)
    return BiXTEncoder(32, 2, 8, **cfg).eval()


def inputs(batch: int = 2, length: int = 9, dim: int = 32):
    tokens = torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, 6:] = False
    return tokens, mask


# --------------------------------------------------------------------------- float64 reference
def _ln(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _lin(x, linear):
    return x @ linear.weight.T + linear.bias


def _mlp(x, mlp):
    hidden = _lin(x, mlp.fc1)
    return _lin(0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2))), mlp.fc2)


def _heads(x, h):  # (B, n, h*d) -> (B, h, n, d), head-major channels
    return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)


def _merge(x):
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _attend(q, k, v, key_mask=None):
    """softmax over keys of q k^T / sqrt(d), times v: the textbook loop-free form."""
    sim = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        sim = sim.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", sim.softmax(-1), v)


def _self_attention_block(x, block, h):
    q, k, v = _lin(_ln(x, block.norm1), block.attn.qkv).chunk(3, dim=-1)
    x = x + _lin(_merge(_attend(_heads(q, h), _heads(k, h), _heads(v, h))), block.attn.proj)
    return x + _mlp(_ln(x, block.norm2), block.mlp)


def reference(encoder: BiXTEncoder, tokens, mask):
    """Each variant from its definition (no layer scale, no drop path), in the input's dtype."""
    latents = encoder.latents.expand(tokens.shape[0], -1, -1)
    tokens = tokens.masked_fill(~mask[..., None], 0.0)
    for layer in encoder.blocks:
        c, h = layer.cross, layer.cross.attn.num_heads
        if encoder.cross_attention == "bidirectional":
            # one similarity, softmaxed along the tokens for the latents, along the latents for the tokens
            r_lat, v_lat = _lin(_ln(latents, c.norm_latents), c.attn.rv_latents).chunk(2, dim=-1)
            r_tok, v_tok = _lin(_ln(tokens, c.norm_tokens), c.attn.rv_tokens).chunk(2, dim=-1)
            r_lat, v_lat, r_tok, v_tok = (_heads(t, h) for t in (r_lat, v_lat, r_tok, v_tok))
            sim = torch.einsum("bhld,bhnd->bhln", r_lat, r_tok) / math.sqrt(r_lat.shape[-1])
            lat_attn = sim.masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
            lat_update = torch.einsum("bhln,bhnd->bhld", lat_attn, v_tok)
            tok_update = torch.einsum("bhln,bhld->bhnd", sim.softmax(-2), v_lat)
            latents = latents + _lin(_merge(lat_update), c.attn.proj_latents)
            latents = latents + _mlp(_ln(latents, c.mlp_norm_latents), c.mlp_latents)
            tokens = tokens + _lin(_merge(tok_update), c.attn.proj_tokens)
            tokens = tokens + _mlp(_ln(tokens, c.mlp_norm_tokens), c.mlp_tokens)
        else:
            # latents attend to the tokens ...
            k, v = _lin(_ln(tokens, c.norm_tokens), c.attn.kv).chunk(2, dim=-1)
            q = _lin(_ln(latents, c.norm_latents), c.attn.q)
            latents = latents + _lin(_merge(_attend(_heads(q, h), _heads(k, h), _heads(v, h), mask)), c.attn.proj)
            latents = latents + _mlp(_ln(latents, c.mlp_norm_latents), c.mlp_latents)
            if encoder.cross_attention == "sequential":
                # ... then the tokens attend to the updated latents (a second similarity, own projections)
                q = _lin(_ln(tokens, c.norm_tokens), c.attn_tokens.q)
                k, v = _lin(_ln(latents, c.norm_context), c.attn_tokens.kv).chunk(2, dim=-1)
                tokens = tokens + _lin(_merge(_attend(_heads(q, h), _heads(k, h), _heads(v, h))), c.attn_tokens.proj)
                tokens = tokens + _mlp(_ln(tokens, c.mlp_norm_tokens), c.mlp_tokens)
        latents = _self_attention_block(latents, layer.latent_attn, layer.latent_attn.attn.num_heads)
    return latents, tokens.masked_fill(~mask[..., None], 0.0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_each_variant_matches_its_float64_reference(variant, impl):
    encoder = tiny(variant, attn_impl=impl).double()
    tokens, mask = inputs()
    tokens = tokens.double()
    with torch.no_grad():
        latents, out_tokens = encoder(tokens, mask)
        ref_latents, ref_tokens = reference(encoder, tokens, mask)
    torch.testing.assert_close(latents, ref_latents, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_tokens, ref_tokens, rtol=1e-10, atol=1e-10)


def test_iterative_tokens_pass_through_bit_identical():
    encoder = tiny("iterative")
    tokens, mask = inputs()
    with torch.no_grad():
        assert torch.equal(encoder(tokens)[1], tokens)
        masked = encoder(tokens, mask)[1]
    assert torch.equal(masked[mask], tokens[mask]) and not masked[~mask].any()
    assert encoder.token_layers == [] and not encoder.update_tokens_last


TOKEN_SIDE = ("proj_tokens", "mlp_tokens", "mlp_norm_tokens", "ls_tokens", "attn_tokens", "norm_context")


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_every_parameter_and_iterative_has_no_token_side(variant):
    encoder = tiny(variant, init_values=0.5).train()
    tokens, mask = inputs()
    latents, out_tokens = encoder(tokens, mask)
    (latents.sum() + out_tokens.pow(2).sum()).backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not no_grad, no_grad
    names = [n for n, _ in encoder.named_parameters()]
    if variant == "iterative":
        assert not [n for n in names if any(part in n for part in TOKEN_SIDE)]
    else:
        assert any("mlp_tokens" in n for n in names)


@pytest.mark.parametrize("variant", VARIANTS)
def test_drop_path_and_layer_scale_act_on_every_variant(variant):
    tokens, mask = inputs()
    dropping = tiny(variant, drop_path_rate=0.9).train()
    torch.manual_seed(0)
    first = dropping(tokens, mask)[0]
    torch.manual_seed(1)
    assert not torch.allclose(first, dropping(tokens, mask)[0])
    plain, scaled = tiny(variant), tiny(variant, init_values=1.0)
    scaled.load_state_dict(plain.state_dict(), strict=False)  # the gammas stay 1: the same function
    with torch.no_grad():
        torch.testing.assert_close(scaled(tokens, mask)[0], plain(tokens, mask)[0], rtol=1e-6, atol=1e-6)
        scaled.blocks[0].cross.ls_latents.gamma.zero_()
        assert not torch.allclose(scaled(tokens, mask)[0], plain(tokens, mask)[0])


def test_parameters_and_kinds_per_variant():
    count = {v: sum(p.numel() for p in tiny(v).parameters()) for v in VARIANTS}
    assert count["iterative"] < count["bidirectional"] < count["sequential"]
    assert [b.updates for b in tiny("sequential", last_layer="latents").blocks] == ["both", "latents"]
    assert [b.updates for b in tiny("sequential", last_layer="tokens").blocks] == ["both", "tokens"]
    assert [b.updates for b in tiny("iterative").blocks] == ["latents", "latents"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_attention_maps_and_gradient_checkpointing(variant):
    encoder = tiny(variant)
    tokens, mask = inputs()
    with torch.no_grad():
        latents, _, maps = encoder(tokens, mask, return_attention=True)
    assert len(maps) == 2
    for lat_map, tok_map in maps:
        assert lat_map.shape == (2, 2, 8, 9) and not lat_map[1, ..., 6:].any()
        torch.testing.assert_close(lat_map.sum(-1), torch.ones(2, 2, 8))
        if variant == "iterative":
            assert tok_map is None
        else:  # each token's weights over the latents
            assert tok_map.shape == (2, 2, 8, 9)
            torch.testing.assert_close(tok_map.sum(-2), torch.ones(2, 2, 9))
    grads = []
    for checkpointing in (False, True):
        model = tiny(variant, grad_checkpointing=checkpointing).train()
        lat, tok = model(tokens, mask)
        (lat.sum() + tok.pow(2).sum()).backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("impl", ["math", "sdpa"])
@pytest.mark.parametrize("junk", [float("nan"), float("inf"), 1e30])
def test_padding_never_reaches_a_real_output(variant, impl, junk):
    encoder = tiny(variant, attn_impl=impl)
    tokens, mask = inputs()
    dirty = tokens.masked_fill(~mask[..., None], junk)
    with torch.no_grad():
        clean_latents, clean_tokens = encoder(tokens, mask)
        latents, out_tokens = encoder(dirty, mask)
    assert torch.isfinite(latents).all() and torch.isfinite(out_tokens).all()
    torch.testing.assert_close(latents, clean_latents, rtol=0, atol=0)
    torch.testing.assert_close(out_tokens, clean_tokens, rtol=0, atol=0)


def test_compiled_encoder_refuses_an_all_padding_sample_like_eager():
    encoder = BiXTEncoder(16, 1, 2, num_heads=2).eval()
    tokens = torch.randn(2, 3, 16)
    empty = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError, match=r"sample\(s\) \[1\] as padding"):
        encoder(tokens, empty)
    torch._dynamo.reset()
    compiled = torch.compile(encoder, fullgraph=True)  # fullgraph: the check costs no graph break
    with torch.no_grad():
        compiled(tokens, torch.ones(2, 3, dtype=torch.bool))
        with pytest.raises(RuntimeError, match="marks every token of a sample as padding"):
            compiled(tokens, empty)


def test_bad_variants_and_layer_kinds_are_clear_errors():
    with pytest.raises(ValueError, match=r"cross_attention must be one of \('bidirectional', 'sequential', "
                                         r"'iterative'\), got 'perceiver'"):
        tiny("perceiver")
    assert CROSS_ATTENTIONS == VARIANTS
    with pytest.raises(ValueError, match="last_layer must be one of"):
        tiny("bidirectional", last_layer="none")
    with pytest.raises(ValueError, match="iterative.*never"):
        tiny("iterative", last_layer="tokens")
    with pytest.raises(ValueError, match="not both"):
        tiny("bidirectional", last_layer="both", update_tokens_last=False)
    with pytest.raises(TypeError):
        BiXTEncoder(32, 2, 8, 32)  # token_dim and the rest are keyword-only


def test_dense_consumers_refuse_iterative():
    from bixt.heads.part_segmentation import PartSegmentationHead
    from bixt.models.point import PointSegmenter
    from bixt.models.segmentation import BiXTSegmenter
    from bixt.tokenizers.point import PointwiseTokenizer

    with pytest.raises(ValueError, match="reads refined tokens, but cross_attention='iterative'"):
        tiny("iterative").forward_intermediates(torch.randn(1, 4, 32), indices=[0])
    image = timm.create_model("bixt_ti_l64_p16", embed_dim=32, depth=2, num_heads=2, num_latents=8, img_size=32,
                              num_classes=3, cross_attention="iterative")
    with pytest.raises(ValueError, match="timm's feature API .* cross_attention='iterative'"):
        image.forward_intermediates(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="BiXTSegmenter reads refined tokens, but cross_attention='iterative'"):
        BiXTSegmenter(backbone="bixt_ti_l64_p16", num_classes=3,
                      backbone_kwargs=dict(embed_dim=32, depth=2, num_heads=2, num_latents=8,
                                           cross_attention="iterative"))
    head = PartSegmentationHead(32, 4, hidden=16)
    with pytest.raises(ValueError, match="PointSegmenter reads refined tokens, but cross_attention='iterative'"):
        PointSegmenter(PointwiseTokenizer(32), tiny("iterative"), head)


@pytest.mark.parametrize("variant", ["sequential", "iterative"])
def test_variants_reach_the_image_point_and_text_models(variant):
    from bixt.models.text import BiXTSequenceEncoder

    image = timm.create_model("bixt_ti_l64_p16", embed_dim=32, depth=2, num_heads=2, num_latents=8, img_size=32,
                              num_classes=3, cross_attention=variant)
    assert image.encoder.cross_attention == variant and image(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    text = BiXTSequenceEncoder(dim=32, depth=2, num_latents=4, num_heads=2, max_len=16, cross_attention=variant)
    assert text.encoder.cross_attention == variant
    assert text(torch.randint(1, 200, (2, 16))).shape == (2, 32)
    if variant == "sequential":
        segmenter = tiny_segmenter(cross_attention=variant)
        assert segmenter.backbone.encoder.blocks[-1].updates == "tokens"
        assert segmenter(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def tiny_segmenter(**backbone_kwargs):
    from bixt.models.segmentation import BiXTSegmenter

    return BiXTSegmenter(backbone="bixt_ti_l64_p16", num_classes=3,
                         backbone_kwargs=dict(embed_dim=32, depth=3, num_heads=2, num_latents=8, **backbone_kwargs))


def test_a_checkpoint_of_another_variant_names_the_missing_and_unexpected_keys():
    from bixt.weights import load_weights

    sequential = timm.create_model("bixt_ti_l64_p16", embed_dim=32, depth=2, num_heads=2, num_latents=8,
                                   img_size=32, num_classes=3, cross_attention="sequential")
    bidirectional = timm.create_model("bixt_ti_l64_p16", embed_dim=32, depth=2, num_heads=2, num_latents=8,
                                      img_size=32, num_classes=3)
    with pytest.raises(RuntimeError, match=r"missing keys: .*cross\.attn\.q\.weight.*unexpected keys: "
                                           r".*cross\.attn\.rv_latents\.weight"):
        load_weights(sequential, bidirectional.state_dict())


# --------------------------------------------------------------------------- tracing and export
@pytest.mark.parametrize("variant", VARIANTS)
def test_fx_export_and_onnx_for_every_variant(variant, tmp_path):
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    encoder = tiny(variant)
    tokens, mask = inputs()
    with torch.no_grad():
        expected = encoder(tokens, mask)

    class Masked(torch.nn.Module):  # traced: tokens and mask in, one tensor out
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, tokens, mask):
            latents, out_tokens = self.encoder(tokens, mask)
            return torch.cat([latents.flatten(1), out_tokens.flatten(1)], dim=1)

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    _, nodes = get_graph_node_names(Masked(), tracer_kwargs=tracer_kwargs)
    traced = create_feature_extractor(Masked(), return_nodes=[nodes[-1]], tracer_kwargs=tracer_kwargs)
    with torch.no_grad():
        (got,) = traced(tokens, mask).values()
        torch.testing.assert_close(got, Masked()(tokens, mask))
        exported = torch.export.export(encoder, (tokens, mask)).module()(tokens, mask)
    for g, want in zip(exported, expected):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / f"{variant}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (tokens, mask), dynamo=True, verbose=False).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {arg.name: value.numpy() for arg, value in zip(session.get_inputs(), (tokens, mask))}
    for g, want in zip(session.run(None, feeds), expected):
        assert (torch.from_numpy(g) - want).abs().max() <= 1e-4


# --------------------------------------------------------------------------- the default is unchanged
def test_bidirectional_default_reproduces_main_before_the_variants():
    """Outputs, gradients and initial weights of fixed-seed tiny encoders, saved on main fafcaf1
    (tests/data/encoder_reference_fafcaf1.pt). Identical bit for bit on the machine that made them;
    the tolerance only allows for another CPU's matrix kernels."""
    from pathlib import Path

    ref = torch.load(Path(__file__).parent / "data" / "encoder_reference_fafcaf1.pt", weights_only=True)
    x, mask = ref["x"], ref["mask"]

    def build(**kwargs):
        torch.manual_seed(0)
        return BiXTEncoder(**dict(dim=32, depth=2, num_latents=8, num_heads=2, **kwargs))

    def close(got, want):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    encoder = build()
    for key, value in encoder.state_dict().items():
        assert torch.equal(value.double().sum(), ref["both/state_sums"][key]), key
    cases = {"both": ({}, x), "latents_last": (dict(update_tokens_last=False), x),
             "ls": (dict(init_values=0.1, token_dim=24, attn_dim=16, cross_heads=4), x[..., :24].contiguous())}
    for name, (kwargs, tokens) in cases.items():
        model = build(**kwargs).eval()
        for impl in ("math", "sdpa") if name == "both" else ("math",):
            for m in model.modules():
                if hasattr(m, "attn_impl"):
                    m.attn_impl = impl
            with torch.no_grad():
                latents, out_tokens = model(tokens, mask)
            close(latents, ref[f"{name}/{impl}/lat"])
            close(out_tokens, ref[f"{name}/{impl}/tok"])
    full = build().eval()
    tokens_last = build(last_layer="tokens").eval()  # the segmenter's last layer (drop_latent_update before)
    tokens_last.load_state_dict({k: v for k, v in full.state_dict().items() if k in tokens_last.state_dict()})
    with torch.no_grad():
        close(tokens_last(x, mask)[1], ref["tokens_last/tok"])
    encoder.train()
    latents, out_tokens = encoder(x, mask)
    (latents.sum() + out_tokens.pow(2).sum()).backward()
    for name, p in encoder.named_parameters():
        torch.testing.assert_close(p.grad.double().sum(), ref["both/grad_sums"][name], rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    image = timm.create_model("bixt_ti_l64_p16", embed_dim=32, depth=2, num_latents=8, num_heads=2, num_classes=5,
                              img_size=64).eval()
    with torch.no_grad():
        close(image(torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))), ref["cls"])
