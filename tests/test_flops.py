"""bixt.flops: forward FLOPs (matrix products, attention kernels on CPU too) and parameter counts."""
import torch
from torch import nn

from bixt import BiXTEncoder
from bixt.flops import count_call_flops, count_flops, count_parameters, describe_counts, describe_model, format_count


def test_linear_flops_and_parameters():
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).train()
    assert count_flops(model, torch.randn(3, 8)) == 2 * 3 * (8 * 16 + 16 * 4)
    assert model.training  # the mode is restored
    assert count_parameters(model) == 8 * 16 + 16 + 16 * 4 + 4
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 16 * 4 + 4


def test_cpu_attention_kernels_are_counted():
    class Attend(nn.Module):
        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    assert count_flops(Attend(), q, k, v) == 2 * (2 * 2 * 3 * 5 * 7 * 4)  # two products of 2*B*H*Q*K*d


def test_variants_differ_in_flops_as_their_definitions_say():
    tokens = torch.randn(1, 64, 32)
    flops = {v: count_flops(BiXTEncoder(32, 2, 8, num_heads=2, cross_attention=v), tokens)
             for v in ("bidirectional", "sequential", "iterative")}
    assert flops["iterative"] < flops["bidirectional"] < flops["sequential"]
    assert "parameters" in describe_model(BiXTEncoder(32, 2, 8, num_heads=2), tokens)
    assert format_count(1_234_567) == "1.23 M" and format_count(3.3e9, "FLOPs") == "3.3 GFLOPs"
    assert format_count(12) == "12"


def test_count_call_flops_counts_linear_and_cpu_fused_attention_forward_and_backward():
    x = torch.randn(4, 8)
    layer = torch.nn.Linear(8, 16)
    assert count_call_flops(lambda: layer(x)) == 2 * 4 * 8 * 16
    b, h, n, d = 1, 2, 16, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    forward = 2 * (2 * b * h * n * n * d)  # scores and weighted values
    assert count_call_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q)) == forward
    # forward + backward of the fused CPU kernel (PyTorch's formula recomputes the scores: 5 products)
    assert count_call_flops(lambda: nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()) == forward * 7 // 2


def test_describe_counts_says_why_flops_were_not_counted():
    model = nn.Linear(4, 2)
    assert describe_counts(model, 16.0) == "10 parameters (10 trainable), 16 FLOPs per sample forward"
    assert describe_counts(model, None, "ValueError: no sample") == \
        "10 parameters (10 trainable), FLOPs: not counted (ValueError: no sample)"
