"""Shared layers of the BiXT core: plain PyTorch (and timm) modules, nothing device-specific.

The latent self-attention block and the MLPs are timm's (``Block``, ``Mlp``), so their parameter
names match the official checkpoints one to one. Eager CPU acceleration of a built model lives
outside the core, in :mod:`bixt.accel`.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from timm.layers import DropPath, LayerScale, register_notrace_module
from timm.layers import Mlp as TimmMlp
from timm.models.vision_transformer import Block
from torch import nn

#: Inference over long inputs runs a token MLP over chunks of at most this many rows, so that its
#: 4x-wide hidden activation exists for one chunk at a time instead of for the whole sequence.
MLP_CHUNK_ROWS = 4096


def map_row_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   chunk_rows: int = MLP_CHUNK_ROWS) -> torch.Tensor:
    """``fn(x)`` for a row-wise ``fn`` (each output row depends on its own input row only), run over
    equal chunks of at most ``chunk_rows`` rows of ``x`` (..., features) and written into one output."""
    rows = x.numel() // x.shape[-1]
    flat = x.reshape(rows, x.shape[-1])
    size = -(-rows // -(-rows // chunk_rows))  # equal chunks: no small remainder GEMM
    out = None
    for start in range(0, rows, size):
        part = fn(flat[start:start + size])
        if out is None:
            out = part.new_empty(rows, part.shape[-1])
        out[start:start + size] = part
    return out.view(*x.shape[:-1], out.shape[-1])


@register_notrace_module  # a leaf for torch.fx: the chunking branches on the input's size
class Mlp(TimmMlp):
    """timm's ``Mlp`` (fc1 -> GELU -> fc2, same parameters). In eval-mode inference (no autograd,
    not being compiled) over more than :data:`MLP_CHUNK_ROWS` rows it runs in row chunks: the same
    result, without the (rows, hidden) activation that dominates a long sequence's peak memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or torch.is_grad_enabled() or torch.compiler.is_compiling()
                or x.numel() <= MLP_CHUNK_ROWS * x.shape[-1]):
            return super().forward(x)
        return map_row_chunks(super().forward, x, MLP_CHUNK_ROWS)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with BiXT's eps of 1e-6; usable as timm's ``norm_layer`` (takes its kwargs)."""

    def __init__(self, dim: int, **kwargs) -> None:
        kwargs.setdefault("eps", 1e-6)
        super().__init__(dim, **kwargs)


def self_attention_block(*, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                         init_values: Optional[float] = None, drop_path: float = 0.0) -> Block:
    """timm's pre-norm ViT block (SDPA attention), as BiXT's latent self-attention."""
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
                 drop_path=drop_path, norm_layer=LayerNorm)


def layer_scale(dim: int, init_values: Optional[float]) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def drop_path_or_identity(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()
