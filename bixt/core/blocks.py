"""One BiXT layer: cross-attention between latents and tokens, then latent self-attention.

The cross-attention comes in three variants (``cross_attention``), compared in the BiXT paper:

- ``"bidirectional"`` (BiXT): latents and tokens attend to each other through one similarity
  matrix per head (:class:`~bixt.core.attention.BiCrossAttention`).
- ``"sequential"``: latents attend to the tokens, then the tokens attend to the updated latents
  (after the latents' cross-attention and MLP): two similarity matrices, separate projections.
- ``"iterative"`` (Perceiver): latents attend to the tokens; the tokens pass through unchanged and
  the layer has no parameter that updates them.

A layer's kind (``updates``: ``"both"`` sides, ``"latents"`` only, ``"tokens"`` only) is fixed at
construction; an iterative layer updates the latents only.

Several named token streams (fusion, ``token_dim={"image": 192, "text": 128}``): the layer holds one
:class:`CrossBlock` per stream, in the order given, and the latents meet each present stream in
turn before their self-attention, so every stream is read with its own softmax over its own tokens
(a short question is not drowned by hundreds of image tokens) and refined in its own width. With
one stream present the layer is exactly a single-stream layer; a stream absent from a call is
skipped. Why per stream rather than one attention over the joined sequence: ARCHITECTURE.md.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import torch
from torch import nn

from bixt.core.attention import UPDATES, BiCrossAttention, CrossAttention
from bixt.core.layers import LayerNorm, Mlp, drop_path_or_identity, layer_scale, self_attention_block

CROSS_ATTENTIONS = ("bidirectional", "sequential", "iterative")


def check_cross_attention(cross_attention: str, updates: Optional[str] = None) -> None:
    """The variant's name (and, given, a layer kind it can have) checked, with the valid choices in the error."""
    if cross_attention not in CROSS_ATTENTIONS:
        raise ValueError(f"cross_attention must be one of {CROSS_ATTENTIONS}, got {cross_attention!r}")
    if updates is None:
        return
    if updates not in UPDATES:
        raise ValueError(f"updates must be one of {UPDATES}, got {updates!r}")
    if cross_attention == "iterative" and updates != "latents":
        raise ValueError(f"an iterative (Perceiver) layer updates the latents only: use updates='latents' "
                         f"(got {updates!r}), or cross_attention='bidirectional' / 'sequential' to refine the tokens")


class CrossBlock(nn.Module):
    """Pre-norm residual cross-attention with an MLP on each side it updates.

    The side a layer does not update (``updates``) has no parameters.
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
        cross_attention: str = "bidirectional",
        updates: str = "both",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        check_cross_attention(cross_attention, updates)
        self.cross_attention = cross_attention
        self.updates = updates
        reads_latents = updates != "tokens" or cross_attention == "bidirectional"
        if reads_latents:
            self.norm_latents = LayerNorm(latent_dim)
        self.norm_tokens = LayerNorm(token_dim)
        if cross_attention == "bidirectional":
            self.attn = BiCrossAttention(latent_dim=latent_dim, token_dim=token_dim, attn_dim=attn_dim,
                                         num_heads=num_heads, bias=rv_bias, updates=updates, attn_impl=attn_impl)
        elif updates != "tokens":  # latents read the tokens
            self.attn = CrossAttention(query_dim=latent_dim, context_dim=token_dim, attn_dim=attn_dim,
                                       num_heads=num_heads, bias=rv_bias, attn_impl=attn_impl)
        if updates != "tokens":
            self.ls_latents = layer_scale(latent_dim, init_values)
            self.drop_path_latents = drop_path_or_identity(drop_path)
            self.mlp_norm_latents = LayerNorm(latent_dim)
            self.mlp_latents = Mlp(latent_dim, int(latent_dim * mlp_ratio))
            self.mlp_ls_latents = layer_scale(latent_dim, init_values)
        if updates != "latents":
            if cross_attention == "sequential":  # tokens read the (updated) latents
                self.norm_context = LayerNorm(latent_dim)
                self.attn_tokens = CrossAttention(query_dim=token_dim, context_dim=latent_dim, attn_dim=attn_dim,
                                                  num_heads=num_heads, bias=rv_bias, attn_impl=attn_impl)
            self.ls_tokens = layer_scale(token_dim, init_values)
            self.drop_path_tokens = drop_path_or_identity(token_drop_path)
            self.mlp_norm_tokens = LayerNorm(token_dim)
            self.mlp_tokens = Mlp(token_dim, int(token_dim * (token_mlp_ratio or mlp_ratio)))
            self.mlp_ls_tokens = layer_scale(token_dim, init_values)

    @property
    def one_sided(self) -> bool:
        """True for a layer that updates the latents only."""
        return self.updates == "latents"

    def forward(self, latents, tokens, token_mask=None, return_attention: bool = False):
        """``(latents, tokens, maps)``; maps ``(latents->tokens (B, H, L, N) or None, tokens->latents
        (B, H, L, N) or None)`` with ``return_attention``, else None."""
        if self.cross_attention == "bidirectional":
            attended = self.attn(self.norm_latents(latents), self.norm_tokens(tokens), token_mask, return_attention)
            lat_update, tok_update, maps = attended[0], attended[1], attended[2]  # indexed: an fx leaf returns one value
            # branched on the kind, not on None: under torch.fx the leaf's outputs are proxies
            if self.updates != "tokens":
                latents = self._update_latents(latents, lat_update)
            if self.updates != "latents":
                tokens = self._update_tokens(tokens, tok_update)
            return latents, tokens, maps
        normed_tokens = self.norm_tokens(tokens)
        lat_map = tok_map = None
        if self.updates != "tokens":
            attended = self.attn(self.norm_latents(latents), normed_tokens, token_mask, return_attention)
            latents, lat_map = self._update_latents(latents, attended[0]), attended[1]
        if self.updates != "latents":
            attended = self.attn_tokens(normed_tokens, self.norm_context(latents), None, return_attention)
            tokens = self._update_tokens(tokens, attended[0])
            tok_map = None if attended[1] is None else attended[1].transpose(-2, -1)  # (B, H, L, N) as above
        return latents, tokens, ((lat_map, tok_map) if return_attention else None)

    def _update_latents(self, latents: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        latents = latents + self.drop_path_latents(self.ls_latents(update))
        return latents + self.drop_path_latents(self.mlp_ls_latents(self.mlp_latents(self.mlp_norm_latents(latents))))

    def _update_tokens(self, tokens: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.drop_path_tokens(self.ls_tokens(update))
        return tokens + self.drop_path_tokens(self.mlp_ls_tokens(self.mlp_tokens(self.mlp_norm_tokens(tokens))))


class BiXTLayer(nn.Module):
    """Cross-attention block followed by a standard transformer block on the latents (absent in a
    tokens-only layer, whose latents nothing reads).

    ``token_dim`` a mapping of stream name -> width: one cross block per stream (``cross.<name>``),
    and ``forward`` takes dicts of tokens and masks (see the module docstring)."""

    def __init__(
        self,
        *,
        latent_dim: int,
        token_dim: Union[int, Mapping[str, int]],
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
        cross_attention: str = "bidirectional",
        updates: str = "both",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        self.updates = updates
        cross = dict(
            latent_dim=latent_dim, attn_dim=attn_dim, num_heads=cross_heads,
            mlp_ratio=mlp_ratio, token_mlp_ratio=token_mlp_ratio, rv_bias=rv_bias, drop_path=drop_path,
            token_drop_path=token_drop_path, init_values=init_values, cross_attention=cross_attention,
            updates=updates, attn_impl=attn_impl,
        )
        if isinstance(token_dim, Mapping):
            self.cross = nn.ModuleDict({name: CrossBlock(token_dim=dim, **cross) for name, dim in token_dim.items()})
        else:
            self.cross = CrossBlock(token_dim=token_dim, **cross)
        if updates != "tokens":
            self.latent_attn = self_attention_block(dim=latent_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                                    qkv_bias=qkv_bias, init_values=init_values, drop_path=drop_path)

    def forward(self, latents: torch.Tensor, tokens, token_mask=None, return_attention: bool = False):
        """Single stream: ``(latents, tokens, maps)`` as :class:`CrossBlock`. Streams: ``tokens`` and
        ``token_mask`` dicts by name (a stream may be absent, a mask may be), and the refined tokens
        and maps come back as dicts of the streams given."""
        if isinstance(self.cross, nn.ModuleDict):
            refined, maps, masks = {}, {}, token_mask or {}
            for name, block in self.cross.items():
                if name in tokens:
                    latents, refined[name], maps[name] = block(latents, tokens[name], masks.get(name),
                                                               return_attention)
            tokens = refined
        else:
            latents, tokens, maps = self.cross(latents, tokens, token_mask, return_attention)
        return (latents if self.updates == "tokens" else self.latent_attn(latents)), tokens, maps
