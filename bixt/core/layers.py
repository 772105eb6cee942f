"""Shared layers of the BiXT core: plain PyTorch (and timm) modules, nothing device-specific.

The latent self-attention block and the MLPs are timm's (``Block``, ``Mlp``), so their parameter
names match the official checkpoints one to one. Eager CPU acceleration of a built model lives
outside the core, in :mod:`bixt.accel`.
"""
from __future__ import annotations

from typing import Optional

from timm.layers import DropPath, LayerScale
from timm.layers import Mlp as Mlp  # noqa: F401  (re-exported: fc1 -> GELU -> fc2)
from timm.models.vision_transformer import Block
from torch import nn


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
