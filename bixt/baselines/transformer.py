"""Full-attention Transformer document encoder: the LRA baseline to compare BiXT against.

LRA configuration for byte-level retrieval: 4 layers, dim 128, 4 heads, MLP 512 (ratio 4), with
pre-norm blocks and GELU MLPs (timm's ViT ``Block``); positions are added by
:class:`~bixt.tokenizers.text.TokenEmbedding` (fixed sinusoidal by default, or learned); sequences
are pooled by the mean over their real (unpadded) tokens. Attention cost is quadratic in the
document length, which is the point of the comparison.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.models.vision_transformer import Block
from torch import nn

from bixt.core.encoder import init_weights_jax
from bixt.core.layers import LayerNorm
from bixt.tokenizers.text import make_embedding


def masked_mean(tokens: torch.Tensor, token_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over the real tokens: (B, N, D), (B, N) bool -> (B, D)."""
    if token_mask is None:
        return tokens.mean(dim=1)
    weights = token_mask.to(tokens.dtype)
    return torch.einsum("bn,bnd->bd", weights, tokens) / weights.sum(dim=1, keepdim=True).clamp_min(1.0)


class TransformerDocumentEncoder(nn.Module):
    """Token ids -> pooled sequence vector with full self-attention over all tokens.

    ``vocab_size=None`` reads byte ids (retrieval); an int is a token-level vocabulary's size,
    padding included (ListOps).
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_len: int = 4000,
        pos_embed: str = "sinusoidal",
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        vocab_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embed = make_embedding(dim, vocab_size, max_len=max_len, pos_embed=pos_embed, drop_rate=drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=rates[i], norm_layer=LayerNorm,
            )
            for i in range(depth)
        )
        self.norm = LayerNorm(dim)
        init_weights_jax(self.blocks)

    def forward(self, input_ids: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.embed(input_ids)
        # Boolean SDPA mask (B, 1, 1, N), True = may attend: padded keys are hidden from every query.
        # Rows stay finite because every document keeps at least one real token (ByteTokenizer).
        attn_mask = None if token_mask is None else token_mask[:, None, None, :]
        for block in self.blocks:
            tokens = block(tokens, attn_mask=attn_mask)
        return self.norm(masked_mean(tokens, token_mask))
