"""Memory-lean inference: the token MLP in row chunks gives the plain result, and only in no-grad eval."""
from __future__ import annotations

import pytest
import torch

from bixt.core import BiXTEncoder
from bixt.core import layers


def _fc1_rows(module: torch.nn.Module) -> list[int]:
    seen: list[int] = []
    for mlp in (m for m in module.modules() if isinstance(m, layers.Mlp)):
        mlp.fc1.register_forward_hook(lambda mod, args, out: seen.append(out.numel() // out.shape[-1]))
    return seen


def test_mlp_runs_long_inputs_in_equal_row_chunks_with_the_plain_result(monkeypatch):
    torch.manual_seed(0)
    mlp = layers.Mlp(16, 64).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        whole = mlp(x)
        monkeypatch.setattr(layers, "MLP_CHUNK_ROWS", 4)  # 21 rows -> 6 chunks: 4, 4, 4, 4, 4, 1
        rows = _fc1_rows(mlp)
        chunked = mlp(x)
    assert rows == [4, 4, 4, 4, 4, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    assert layers.map_row_chunks(lambda r: r * 2, torch.arange(10.0).view(5, 2), 2).tolist() == [
        [0.0, 2.0], [4.0, 6.0], [8.0, 10.0], [12.0, 14.0], [16.0, 18.0]]


@pytest.mark.parametrize("case", ["grad", "train"])
def test_mlp_is_not_chunked_where_autograd_or_dropout_runs(monkeypatch, case):
    mlp = layers.Mlp(16, 64, drop=0.1 if case == "train" else 0.0)
    mlp.train(case == "train")
    monkeypatch.setattr(layers, "MLP_CHUNK_ROWS", 4)
    rows = _fc1_rows(mlp)
    x = torch.randn(3, 7, 16, requires_grad=True)
    if case == "train":
        with torch.no_grad():
            mlp(x)
    else:
        mlp(x).sum().backward()
        assert x.grad is not None
    assert rows == [21]


@pytest.mark.parametrize("cross_attention", ["bidirectional", "sequential", "iterative"])
def test_encoder_inference_in_chunks_matches_the_plain_encoder(monkeypatch, cross_attention):
    torch.manual_seed(0)
    encoder = BiXTEncoder(dim=32, depth=2, num_latents=8, num_heads=2, cross_attention=cross_attention,
                          last_layer="latents" if cross_attention == "iterative" else "both").eval()
    tokens = torch.randn(2, 37, 32)
    mask = torch.ones(2, 37, dtype=torch.bool)
    mask[1, 30:] = False
    with torch.no_grad():
        plain = encoder(tokens, token_mask=mask)
        monkeypatch.setattr(layers, "MLP_CHUNK_ROWS", 16)
        rows = _fc1_rows(encoder)
        chunked = encoder(tokens, token_mask=mask)
    assert max(rows) <= 16  # no MLP saw the whole sequence at once
    for a, b in zip(chunked, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
