"""The fused encoder: several named token streams in one BiXTEncoder (issue 20)."""
from __future__ import annotations

import pytest
import torch

from bixt.core import BiXTEncoder

DIMS = {"image": 24, "text": 16}


def fused(**kwargs) -> BiXTEncoder:
    torch.manual_seed(0)
    return BiXTEncoder(32, 2, 4, num_heads=2, token_dims=DIMS, **kwargs).eval()


def streams(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return {"image": torch.randn(batch, 9, 24, generator=g), "text": torch.randn(batch, 5, 16, generator=g)}, mask


def single_stream_copy(enc: BiXTEncoder, name: str) -> BiXTEncoder:
    """A single-stream encoder holding the weights ``enc`` uses for stream ``name``."""
    single = BiXTEncoder(32, 2, 4, num_heads=2, token_dim=DIMS[name],
                         cross_attention=enc.cross_attention).eval()
    key = f".cross.{name}."
    weights = {k.replace(key, ".cross."): v for k, v in enc.state_dict().items()
               if not k.startswith("modality_embed") and (".cross." not in k or key in k)}
    single.load_state_dict(weights, strict=True)
    return single


@pytest.mark.parametrize("cross_attention", ["bidirectional", "sequential", "iterative"])
def test_one_stream_given_equals_the_single_stream_encoder(cross_attention):
    enc = fused(cross_attention=cross_attention)
    tokens, mask = streams()
    for name, masks in (("text", {"text": mask}), ("image", None)):
        latents, refined = enc({name: tokens[name]}, token_masks=masks)
        assert list(refined) == [name]
        single = single_stream_copy(enc, name)
        want_latents, want_tokens = single(tokens[name] + enc.modality_embed[name],
                                           None if masks is None else masks[name])
        torch.testing.assert_close(latents, want_latents, rtol=0, atol=1e-6)
        torch.testing.assert_close(refined[name], want_tokens, rtol=0, atol=1e-6)


def test_shapes_maps_per_stream_and_both_streams_matter():
    enc = fused()
    tokens, mask = streams()
    latents, refined, maps = enc(tokens, token_masks={"text": mask}, return_attention=True)
    assert latents.shape == (2, 4, 32)
    assert {k: v.shape for k, v in refined.items()} == {"image": (2, 9, 24), "text": (2, 5, 16)}
    assert set(maps) == {"image", "text"} and all(len(v) == 2 for v in maps.values())
    assert maps["text"][0][0].shape == (2, 2, 4, 5) and maps["image"][1][1].shape == (2, 2, 4, 9)
    # padded text tokens get no latent attention and come back zeroed
    assert maps["text"][0][0][0, :, :, 3:].abs().max() == 0
    assert refined["text"][0, 3:].abs().max() == 0
    # the latents read both streams: changing either one changes them
    for name in DIMS:
        changed = dict(tokens, **{name: tokens[name] + 1.0})
        assert not torch.allclose(enc(changed, token_masks={"text": mask})[0], latents)


def test_padding_of_a_stream_changes_nothing_real():
    enc = fused()
    tokens, mask = streams()
    latents, refined = enc(tokens, token_masks={"text": mask})
    garbage = tokens["text"].clone()
    garbage[0, 3:] = float("nan")
    latents2, refined2 = enc(dict(tokens, text=garbage), token_masks={"text": mask})
    torch.testing.assert_close(latents2, latents)
    torch.testing.assert_close(refined2["text"], refined["text"])
    # dropping the padding altogether gives the same sample
    short = enc({"image": tokens["image"][:1], "text": tokens["text"][:1, :3]})
    torch.testing.assert_close(short[0], latents[:1], rtol=1e-5, atol=1e-5)


def test_missing_stream_runs_and_differs_from_both():
    enc = fused()
    tokens, _ = streams()
    both = enc(tokens)[0]
    image_only, refined = enc({"image": tokens["image"]})
    assert list(refined) == ["image"] and image_only.shape == both.shape
    assert not torch.allclose(image_only, both)


def test_gradients_reach_every_stream_and_parameter():
    enc = fused().train()
    tokens, mask = streams()
    tokens = {k: v.requires_grad_() for k, v in tokens.items()}
    latents, refined = enc(tokens, token_masks={"text": mask})
    (latents.sum() + sum(x.pow(2).sum() for x in refined.values())).backward()
    for name, x in tokens.items():
        assert x.grad is not None and x.grad.abs().sum() > 0, name
    assert tokens["text"].grad[0, 3:].abs().max() == 0  # nothing flows into padding
    lacking = [n for n, p in enc.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not lacking


def test_grad_checkpointing_same_gradients():
    tokens, mask = streams()
    grads = []
    for ckpt in (False, True):
        enc = fused(grad_checkpointing=ckpt).train()
        enc(tokens, token_masks={"text": mask})[0].sum().backward()
        grads.append(enc.modality_embed["text"].grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("call, match", [
    (lambda enc, t, m: enc({**t, "audio": t["text"]}), r"stream\(s\) \['audio'\] this encoder was not built for"),
    (lambda enc, t, m: enc({"image": t["image"], "text": t["image"]}), r"tokens\['text'\] must have shape \(batch, tokens, 16\)"),
    (lambda enc, t, m: enc(t, token_masks={"text": m[:, :4]}), r"token_masks\['text'\] must have shape"),
    (lambda enc, t, m: enc(t, token_masks={"image": m}), r"token_masks\['image'\] must have shape"),
    (lambda enc, t, m: enc({"image": t["image"]}, token_masks={"text": m}), "which tokens does not hold"),
    (lambda enc, t, m: enc({}), "holds no stream"),
    (lambda enc, t, m: enc(t["image"]), "give tokens as a dict"),
    (lambda enc, t, m: enc(t, m), "token_masks="),
    (lambda enc, t, m: enc({"image": t["image"], "text": t["text"][:1]}), "batch size 1"),
])
def test_bad_input_names_the_stream(call, match):
    tokens, mask = streams()
    with pytest.raises((ValueError, TypeError), match=match):
        call(fused(), tokens, mask)


def test_bad_construction_and_single_stream_refuses_dicts():
    with pytest.raises(ValueError, match="not both"):
        BiXTEncoder(32, 1, 4, num_heads=2, token_dim=8, token_dims=DIMS)
    with pytest.raises(ValueError, match="identifier"):
        BiXTEncoder(32, 1, 4, num_heads=2, token_dims={"a.b": 8})
    with pytest.raises(TypeError, match="token_dims="):
        BiXTEncoder(32, 1, 4, num_heads=2)({"image": torch.randn(1, 3, 32)})


def test_fused_encoder_exports(tmp_path):
    enc = fused()
    tokens, mask = streams()
    with torch.no_grad():
        expected = enc(tokens, token_masks={"text": mask})
        exported = torch.export.export(enc, (tokens,), {"token_masks": {"text": mask}}).module()
        got = exported(tokens, token_masks={"text": mask})
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    for name in DIMS:
        torch.testing.assert_close(got[1][name], expected[1][name], rtol=1e-5, atol=1e-5)
