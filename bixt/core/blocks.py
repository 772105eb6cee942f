"""One BiXT layer: bi-directional cross-attention between latents and tokens, then latent self-attention."""
from __future__ import annotations

from typing import Optional

import torch
from timm.layers import register_notrace_module
from torch import nn

from bixt.core.attention import BiCrossAttention
from bixt.core.layers import LayerNorm, Mlp, SelfAttentionBlock
from bixt.core.layers import drop_path_or_identity as _drop
from bixt.core.layers import layer_scale as _scale
from bixt.core.layers import add_residual, plain_residual


class CrossBlock(nn.Module):
    """Pre-norm residual bi-directional cross-attention with an MLP on each side.

    With ``one_sided=True`` only the latents are updated; the token side has no parameters.
    """

    def __init__(
        self,
        latent_dim: int,
        token_dim: int,
        attn_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        token_mlp_ratio: Optional[float] = None,
        rv_bias: bool = True,
        drop_path: float = 0.0,
        token_drop_path: float = 0.0,
        init_values: Optional[float] = None,
        one_sided: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.one_sided = one_sided
        self.norm_latents = LayerNorm(latent_dim)
        self.norm_tokens = LayerNorm(token_dim)
        self.attn = BiCrossAttention(latent_dim, token_dim, attn_dim, num_heads, rv_bias, one_sided, attn_impl)
        self.ls_latents = _scale(latent_dim, init_values)
        self.drop_path_latents = _drop(drop_path)
        self.mlp_norm_latents = LayerNorm(latent_dim)
        self.mlp_latents = Mlp(latent_dim, int(latent_dim * mlp_ratio))
        self.mlp_ls_latents = _scale(latent_dim, init_values)
        if not one_sided:
            self.ls_tokens = _scale(token_dim, init_values)
            self.drop_path_tokens = _drop(token_drop_path)
            self.mlp_norm_tokens = LayerNorm(token_dim)
            self.mlp_tokens = Mlp(token_dim, int(token_dim * (token_mlp_ratio or mlp_ratio)))
            self.mlp_ls_tokens = _scale(token_dim, init_values)

    def forward(self, latents, tokens, token_mask=None, return_attention: bool = False):
        # Where layer scale and drop path are inactive, the residual adds run inside the output GEMMs.
        fuse_lat = plain_residual(self.ls_latents, self.drop_path_latents)
        fuse_tok = not self.one_sided and plain_residual(self.ls_tokens, self.drop_path_tokens)
        lat_update, tok_update, maps = self.attn(
            self.norm_latents(latents), self.norm_tokens(tokens), token_mask, return_attention,
            residual_latents=latents if fuse_lat else None, residual_tokens=tokens if fuse_tok else None,
        )
        latents = lat_update if fuse_lat else latents + self.drop_path_latents(self.ls_latents(lat_update))
        latents = add_residual(latents, self.mlp_latents, self.mlp_norm_latents(latents), self.mlp_ls_latents,
                               self.drop_path_latents)
        if not self.one_sided:
            tokens = tok_update if fuse_tok else tokens + self.drop_path_tokens(self.ls_tokens(tok_update))
            tokens = add_residual(tokens, self.mlp_tokens, self.mlp_norm_tokens(tokens), self.mlp_ls_tokens,
                                  self.drop_path_tokens)
        return latents, tokens, maps


@register_notrace_module  # a leaf for torch.fx: the eager fast paths inside branch on dtypes and devices
class BiXTLayer(nn.Module):
    """Cross-attention block followed by a standard transformer block on the latents."""

    def __init__(
        self,
        latent_dim: int,
        token_dim: int,
        attn_dim: int,
        num_heads: int,
        cross_heads: int,
        mlp_ratio: float = 4.0,
        token_mlp_ratio: Optional[float] = None,
        qkv_bias: bool = True,
        rv_bias: bool = True,
        drop_path: float = 0.0,
        token_drop_path: float = 0.0,
        init_values: Optional[float] = None,
        one_sided: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.cross = CrossBlock(
            latent_dim, token_dim, attn_dim, cross_heads, mlp_ratio, token_mlp_ratio, rv_bias,
            drop_path, token_drop_path, init_values, one_sided, attn_impl,
        )
        self.latent_attn = SelfAttentionBlock(
            latent_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, init_values=init_values,
            drop_path=drop_path,
        )

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, token_mask=None, return_attention: bool = False):
        latents, tokens, maps = self.cross(latents, tokens, token_mask, return_attention)
        return self.latent_attn(latents), tokens, maps
