"""Bi-directional cross-attention: latents and tokens attend to each other through one similarity.

Latents project to (r_lat, v_lat), tokens to (r_tok, v_tok). A single similarity matrix per head,
``S = r_lat @ r_tok^T / sqrt(d_head)`` of shape (L, N), serves both directions: latents gather
token values with a softmax over the token axis of ``S``, tokens gather latent values with a
softmax over the latent axis (the columns of ``S``). Cost is O(L * N), linear in the sequence length.

:class:`CrossAttention` is one direction alone (queries from one side, keys and values from the
other), the building block of the ``"sequential"`` and ``"iterative"`` variants (see
:mod:`bixt.core.blocks`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import register_notrace_module
from torch import nn

ATTN_IMPLS = ("auto", "math", "sdpa")
#: What a cross-attention layer updates: both sides, the latents only, or the tokens only.
UPDATES = ("both", "latents", "tokens")
#: ``attn_impl="auto"`` trains through the shared similarity while it has at most this many
#: elements (B * heads * latents * tokens); above, through SDPA, which keeps no attention matrices.
SHARED_SIMILARITY_MAX_ELEMENTS = 1 << 24


def _split_heads(x: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    # Channel layout of the fused projections: [r | v], each head-major (h d).
    return tuple(rearrange(x, "b n (p h d) -> p b h n d", p=parts, h=num_heads).unbind(0))


def choose_impl(attn_impl: str, need_maps: bool, query: torch.Tensor, key: torch.Tensor) -> str:
    """The kernel for one cross-attention call (``attn_impl`` "auto" | "math" | "sdpa")."""
    if need_maps or attn_impl == "math":
        return "math"
    if attn_impl == "sdpa":
        return "sdpa"
    # "auto". While autograd records, one shared similarity runs 9 matrix products per step
    # (forward and backward) where two SDPA calls run 14, each recomputing it, so it wins as long
    # as the matrices it keeps for the backward stay small (long sequences: SDPA's kernels keep
    # none). In inference SDPA's fused kernels win: the explicit path softmaxes along a strided axis.
    batch, heads, num_queries, _ = query.shape
    if query.requires_grad and batch * heads * num_queries * key.shape[-2] <= SHARED_SIMILARITY_MAX_ELEMENTS:
        return "math"
    return "sdpa"


def attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: Optional[torch.Tensor] = None,
    impl: str = "math",
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Plain one-directional attention on (B, H, Q|K, d): ``(update (B, H, Q, d), map (B, H, Q, K) or
    None)``; the map only from the ``math`` path. ``key_mask`` (B, K) bool, True = a key to attend to."""
    if impl == "sdpa":
        mask = None if key_mask is None else key_mask[:, None, None, :]
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask), None
    sim = torch.matmul(query * query.shape[-1] ** -0.5, key.transpose(-2, -1))
    if key_mask is not None:
        sim = sim.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    attn = sim.softmax(dim=-1)
    return torch.matmul(attn, value), attn


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

    ``updates`` says which side the layer updates: ``"both"``; ``"latents"`` (the last layer of
    classifiers: latents read from tokens, no latent values, no token output projection); or
    ``"tokens"`` (a last layer whose latents nothing reads: no latent output projection).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        token_dim: int,
        attn_dim: int,
        num_heads: int,
        bias: bool = True,
        updates: str = "both",
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by cross-attention heads ({num_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        if updates not in UPDATES:
            raise ValueError(f"updates must be one of {UPDATES}, got {updates!r}")
        self.num_heads = num_heads
        self.updates = updates
        self.attn_impl = attn_impl
        # The parameter names and shapes are the official checkpoints' (the tokens-only kind keeps
        # the fused token (r, v) projection so that its weights load from a two-sided layer).
        if updates == "latents":
            self.r_latents = nn.Linear(latent_dim, attn_dim, bias=bias)
        else:
            self.rv_latents = nn.Linear(latent_dim, 2 * attn_dim, bias=bias)
        self.rv_tokens = nn.Linear(token_dim, 2 * attn_dim, bias=bias)
        if updates != "tokens":
            self.proj_latents = nn.Linear(attn_dim, latent_dim)
        if updates != "latents":
            self.proj_tokens = nn.Linear(attn_dim, token_dim)

    @property
    def one_sided(self) -> bool:
        return self.updates == "latents"

    def forward(
        self,
        latents: torch.Tensor,
        tokens: torch.Tensor,
        token_mask: Optional[torch.Tensor] = None,
        return_attention: bool = False,
    ):
        """Returns ``(latent_update, token_update, maps)``: updates (B, L, latent_dim) / (B, N, token_dim)
        (``None`` for the side the layer leaves alone), maps as :func:`bidirectional_attention`
        returns them."""
        h = self.num_heads
        if self.updates == "latents":
            (r_lat,) = _split_heads(self.r_latents(latents), 1, h)
            v_lat = None
        else:
            r_lat, v_lat = _split_heads(self.rv_latents(latents), 2, h)
        r_tok, v_tok = _split_heads(self.rv_tokens(tokens), 2, h)
        if self.updates == "tokens":
            v_tok = None
        lat, tok, maps = bidirectional_attention(
            r_lat, v_lat, r_tok, v_tok, token_mask, impl=choose_impl(self.attn_impl, return_attention, r_lat, r_tok)
        )
        # The token projections (twice the token stream) are not needed for the output projections:
        # without autograd keeping them, this is a long sequence's peak memory (bench_lra: 1/7 of it).
        del r_lat, v_lat, r_tok, v_tok
        if lat is not None:
            lat = self.proj_latents(rearrange(lat, "b h n d -> b n (h d)"))
        if tok is not None:
            tok = self.proj_tokens(rearrange(tok, "b h n d -> b n (h d)"))
        return lat, tok, maps


@register_notrace_module  # a leaf for torch.fx, which cannot trace einops' shape parsing
class CrossAttention(nn.Module):
    """One direction: queries from ``query_dim`` inputs read keys and values of ``context_dim`` inputs.

    ``forward(queries (B, Q, query_dim), context (B, K, context_dim), context_mask=None,
    return_attention=False) -> (update (B, Q, query_dim), map (B, H, Q, K) or None)``.
    """

    def __init__(self, *, query_dim: int, context_dim: int, attn_dim: int, num_heads: int, bias: bool = True,
                 attn_impl: str = "auto") -> None:
        super().__init__()
        if attn_dim % num_heads:
            raise ValueError(f"attn_dim ({attn_dim}) must be divisible by cross-attention heads ({num_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.num_heads = num_heads
        self.attn_impl = attn_impl
        self.q = nn.Linear(query_dim, attn_dim, bias=bias)
        self.kv = nn.Linear(context_dim, 2 * attn_dim, bias=bias)
        self.proj = nn.Linear(attn_dim, query_dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, context_mask: Optional[torch.Tensor] = None,
                return_attention: bool = False):
        (q,) = _split_heads(self.q(queries), 1, self.num_heads)
        k, v = _split_heads(self.kv(context), 2, self.num_heads)
        out, attn = attend(q, k, v, context_mask, impl=choose_impl(self.attn_impl, return_attention, q, k))
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), attn
