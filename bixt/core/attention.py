"""Bi-directional cross-attention: latents and tokens attend to each other through one similarity.

Latents project to (r_lat, v_lat), tokens to (r_tok, v_tok). A single similarity matrix per head,
``S = r_lat @ r_tok^T / sqrt(d_head)`` of shape (L, N), serves both directions: latents gather
token values with a softmax over the token axis of ``S``, tokens gather latent values with a
softmax over the latent axis (the columns of ``S``). Cost is O(L * N), linear in the sequence length.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import register_notrace_module
from torch import nn

ATTN_IMPLS = ("auto", "math", "sdpa")
#: ``attn_impl="auto"`` trains through the shared similarity while it has at most this many
#: elements (B * heads * latents * tokens); above, through SDPA, which keeps no attention matrices.
SHARED_SIMILARITY_MAX_ELEMENTS = 1 << 24


def _split_heads(x: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    # Channel layout of the fused projections: [r | v], each head-major (h d).
    return tuple(rearrange(x, "b n (p h d) -> p b h n d", p=parts, h=num_heads).unbind(0))


def bidirectional_attention(
    r_lat: torch.Tensor,
    v_lat: Optional[torch.Tensor],
    r_tok: torch.Tensor,
    v_tok: Optional[torch.Tensor],
    token_mask: Optional[torch.Tensor] = None,
    impl: str = "math",
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Attend both ways. Inputs are (B, H, L|N, d); ``v_lat=None`` makes it one-sided (latents
    only), ``v_tok=None`` the mirror (tokens only: a last layer whose latents nothing reads).

    Returns ``(latent_update, token_update, (attn_latents, attn_tokens))`` where the updates are
    (B, H, L, d) / (B, H, N, d); the attention maps are only returned by the ``math`` path.
    ``token_mask`` is (B, N) bool with True for real tokens.
    """
    if impl == "sdpa":
        key_mask = None if token_mask is None else token_mask[:, None, None, :]
        latent_update = None if v_tok is None else F.scaled_dot_product_attention(r_lat, r_tok, v_tok,
                                                                                  attn_mask=key_mask)
        token_update = None if v_lat is None else F.scaled_dot_product_attention(r_tok, r_lat, v_lat)
        return latent_update, token_update, None

    scale = r_lat.shape[-1] ** -0.5
    sim = torch.matmul(r_lat * scale, r_tok.transpose(-2, -1))  # (B, H, L, N)
    attn_lat = latent_update = None
    if v_tok is not None:
        sim_lat = sim if token_mask is None else sim.masked_fill(~token_mask[:, None, None, :], float("-inf"))
        attn_lat = sim_lat.softmax(dim=-1)
        latent_update = torch.matmul(attn_lat, v_tok)
    if v_lat is None:
        return latent_update, None, (attn_lat, None)
    attn_tok = sim.softmax(dim=-2)  # over latents, per token
    token_update = torch.matmul(attn_tok.transpose(-2, -1), v_lat)
    return latent_update, token_update, (attn_lat, attn_tok)


@register_notrace_module  # a leaf for torch.fx, which cannot trace einops' shape parsing
class BiCrossAttention(nn.Module):
    """Projections around :func:`bidirectional_attention`.

    ``one_sided=True`` builds the variant used as the last layer of classifiers: latents read
    from tokens, tokens are left alone (no latent values, no token output projection).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        token_dim: int,
        attn_dim: int,
        num_heads: int,
        bias: bool = True,
        one_sided: bool = False,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by cross-attention heads ({num_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.one_sided = one_sided
        self.attn_impl = attn_impl
        if one_sided:
            self.r_latents = nn.Linear(latent_dim, attn_dim, bias=bias)
        else:
            self.rv_latents = nn.Linear(latent_dim, 2 * attn_dim, bias=bias)
        self.rv_tokens = nn.Linear(token_dim, 2 * attn_dim, bias=bias)
        self.proj_latents = nn.Linear(attn_dim, latent_dim)
        self.proj_tokens = None if one_sided else nn.Linear(attn_dim, token_dim)

    def _impl(self, need_maps: bool, r_lat: torch.Tensor, r_tok: torch.Tensor) -> str:
        if need_maps or self.attn_impl == "math":
            return "math"
        if self.attn_impl == "sdpa":
            return "sdpa"
        # "auto". While autograd records, one shared similarity runs 9 matrix products per step
        # (forward and backward) where two SDPA calls run 14, each recomputing it, so it wins as long
        # as the matrices it keeps for the backward stay small (long sequences: SDPA's kernels keep
        # none). In inference SDPA's fused kernels win: the explicit path softmaxes along a strided axis.
        batch, heads, num_latents, _ = r_lat.shape
        if r_lat.requires_grad and batch * heads * num_latents * r_tok.shape[-2] <= SHARED_SIMILARITY_MAX_ELEMENTS:
            return "math"
        return "sdpa"

    def forward(
        self,
        latents: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: Optional[torch.Tensor] = None,
        return_attention: bool = False,
    ):
        """Returns ``(latent_update, token_update, maps)``: updates (B, L, latent_dim) / (B, N, token_dim)
        (``None`` for the side a one-sided or tokens-only layer leaves alone), maps as
        :func:`bidirectional_attention` returns them."""
        h = self.num_heads
        if self.one_sided:
            (r_lat,) = _split_heads(self.r_latents(latents), 1, h)
            v_lat = None
        else:
            r_lat, v_lat = _split_heads(self.rv_latents(latents), 2, h)
        r_tok, v_tok = _split_heads(self.rv_tokens(tokens), 2, h)
        if self.proj_latents is None:  # tokens only (drop_latent_update)
            v_tok = None
        lat, tok, maps = bidirectional_attention(
            r_lat, v_lat, r_tok, v_tok, token_mask, impl=self._impl(return_attention, r_lat, r_tok)
        )
        if lat is not None:
            lat = self.proj_latents(rearrange(lat, "b h n d -> b n (h d)"))
        if tok is not None:
            tok = self.proj_tokens(rearrange(tok, "b h n d -> b n (h d)"))
        return lat, tok, maps
