"""benchmarks/published_ops.py: the plain-ops reference computes what the bixt model computes."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from published_ops import published_ops  # noqa: E402

import bixt  # noqa: E402,F401  (registers the models)

TINY = dict(embed_dim=32, depth=3, num_heads=2, num_latents=8, num_classes=5, img_size=64)


def pair():
    torch.manual_seed(0)
    model = timm.create_model("bixt_ti_l64_p16", **TINY)
    for p in model.parameters():  # the head starts at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.1)
    reference = published_ops(timm.create_model("bixt_ti_l64_p16", **TINY))
    reference.load_state_dict(model.state_dict())
    return model, reference


def test_reference_matches_the_model_in_eval_and_training():
    model, reference = pair()
    images, targets = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(images), model.eval()(images), atol=1e-5, rtol=1e-4)
    for m in (model.train(), reference.train()):
        F.cross_entropy(m(images), targets).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(q.grad / scale, p.grad / scale, atol=1e-5, rtol=0, msg=name)
    # the swapped pieces really run: explicit self-attention, a strided token view
    assert all(not m.fused_attn for m in reference.modules() if hasattr(m, "fused_attn"))
    assert not reference.patch_embed(images).is_contiguous()


def test_reference_mlps_never_run_in_row_chunks(monkeypatch):
    import bixt.core.layers as layers

    calls = []
    chunked = layers.map_row_chunks
    monkeypatch.setattr(layers, "MLP_CHUNK_ROWS", 8)  # every MLP input here is longer
    monkeypatch.setattr(layers, "map_row_chunks", lambda *a, **k: calls.append(1) or chunked(*a, **k))
    model, reference = pair()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.eval()(images)
        assert calls, "the bixt model should chunk here, or this test checks nothing"
        calls.clear()
        torch.testing.assert_close(reference.eval()(images), expected, atol=1e-5, rtol=1e-4)
    assert not calls


def test_reference_refuses_what_the_published_code_cannot_run():
    _, reference = pair()
    with pytest.raises(ValueError, match="unmasked"):
        reference.encoder(torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="no BiCrossAttention"):
        published_ops(torch.nn.Linear(2, 2))
