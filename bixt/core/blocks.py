"""One BiXT layer: bi-directional cross-attention between latents and tokens, then latent self-attention."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bixt.core.attention import BiCrossAttention
from bixt.core.layers import LayerNorm, Mlp, drop_path_or_identity, layer_scale, self_attention_block


class CrossBlock(nn.Module):
    """Pre-norm residual bi-directional cross-attention with an MLP on each side.

    With ``one_sided=True`` only the latents are updated; the token side has no parameters.
    """

    def __init__(
        self,
        *,
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
        self.attn = BiCrossAttention(latent_dim=latent_dim, token_dim=token_dim, attn_dim=attn_dim,
                                     num_heads=num_heads, bias=rv_bias, one_sided=one_sided, attn_impl=attn_impl)
        self.ls_latents = layer_scale(latent_dim, init_values)
        self.drop_path_latents = drop_path_or_identity(drop_path)
        self.mlp_norm_latents = LayerNorm(latent_dim)
        self.mlp_latents = Mlp(latent_dim, int(latent_dim * mlp_ratio))
        self.mlp_ls_latents = layer_scale(latent_dim, init_values)
        if not one_sided:
            self.ls_tokens = layer_scale(token_dim, init_values)
            self.drop_path_tokens = drop_path_or_identity(token_drop_path)
            self.mlp_norm_tokens = LayerNorm(token_dim)
            self.mlp_tokens = Mlp(token_dim, int(token_dim * (token_mlp_ratio or mlp_ratio)))
            self.mlp_ls_tokens = layer_scale(token_dim, init_values)

    def forward(self, latents, tokens, token_mask=None, return_attention: bool = False):
        attended = self.attn(self.norm_latents(latents), self.norm_tokens(tokens), token_mask, return_attention)
        lat_update, tok_update, maps = attended[0], attended[1], attended[2]  # indexed: an fx leaf returns one value
        if lat_update is not None:
            latents = latents + self.drop_path_latents(self.ls_latents(lat_update))
            latents = latents + self.drop_path_latents(
                self.mlp_ls_latents(self.mlp_latents(self.mlp_norm_latents(latents))))
        if not self.one_sided:
            tokens = tokens + self.drop_path_tokens(self.ls_tokens(tok_update))
            tokens = tokens + self.drop_path_tokens(self.mlp_ls_tokens(self.mlp_tokens(self.mlp_norm_tokens(tokens))))
        return latents, tokens, maps

    def drop_latent_update(self) -> None:
        """Keep the token side only: for a last layer whose latents nothing reads (a dense head on
        the tokens), so that no work and no parameter is spent on a latent update."""
        if self.one_sided:
            raise ValueError("a one-sided layer updates the latents only: dropping that leaves nothing")
        self.attn.proj_latents = None
        self.ls_latents = self.mlp_norm_latents = self.mlp_latents = self.mlp_ls_latents = None


class BiXTLayer(nn.Module):
    """Cross-attention block followed by a standard transformer block on the latents."""

    def __init__(
        self,
        *,
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
            latent_dim=latent_dim, token_dim=token_dim, attn_dim=attn_dim, num_heads=cross_heads,
            mlp_ratio=mlp_ratio, token_mlp_ratio=token_mlp_ratio, rv_bias=rv_bias, drop_path=drop_path,
            token_drop_path=token_drop_path, init_values=init_values, one_sided=one_sided, attn_impl=attn_impl,
        )
        self.latent_attn = self_attention_block(dim=latent_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                                qkv_bias=qkv_bias, init_values=init_values, drop_path=drop_path)

    def forward(self, latents: torch.Tensor, tokens: torch.Tensor, token_mask=None, return_attention: bool = False):
        latents, tokens, maps = self.cross(latents, tokens, token_mask, return_attention)
        return (latents if self.latent_attn is None else self.latent_attn(latents)), tokens, maps

    def drop_latent_update(self) -> None:
        """Tokens-only layer (see :meth:`CrossBlock.drop_latent_update`); its latent self-attention goes too."""
        self.cross.drop_latent_update()
        self.latent_attn = None
