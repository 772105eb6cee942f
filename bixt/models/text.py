"""Sequence models over token ids, shared by the text tasks (LRA retrieval and ListOps).

- :class:`BiXTSequenceEncoder`: ids (B, N) + padding mask -> pooled vector (B, dim): embed
  (bytes or a small token vocabulary), :class:`~bixt.core.BiXTEncoder`, mean over the latents.
  The retrieval task's document encoder (:class:`bixt.models.retrieval.DualEncoderRetriever`).
- :class:`SequenceClassifier`: any such encoder (this one, or the full-attention baseline
  :class:`bixt.baselines.transformer.TransformerDocumentEncoder`) + the shared
  :class:`~bixt.heads.classification.ClassificationHead` (LayerNorm -> Linear on the pooled vector).

Every encoder here maps ``(input_ids (B, N), token_mask (B, N) or None) -> (B, dim)``, so the
tasks choose one by config (``model=bixt`` / ``model=transformer``) and everything else stays.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from bixt.core import BiXTEncoder
from bixt.core.layers import LayerNorm
from bixt.heads.classification import ClassificationHead
from bixt.tokenizers.text import PAD_ID, ensure_visible_token, make_embedding


class BiXTSequenceEncoder(nn.Module):
    """Token ids -> pooled sequence vector with BiXT: embed, encode, mean over the latents.

    ``vocab_size=None`` reads byte ids (1..256, the retrieval task); an int is the size of a
    token-level vocabulary, padding included (ListOps: 18).

    ``pool_norm`` adds a LayerNorm after the pooling (like ``fc_norm`` of the classifiers). It is off
    by default because it slows learning on the embedded matching task: early on the pooled latents
    are dominated by their shared learned part, and normalising shrinks the document-specific
    differences the head compares.

    ``token_dim`` (default ``dim``) sets the token width separately from the latent width:
    the token side is where the cost grows with the sequence length.
    The last layer is one-sided by default: only the pooled latents are used, so refining the
    tokens once more would be wasted work. ``encoder_kwargs``: further :class:`~bixt.core.BiXTEncoder`
    arguments (``attn_impl``, ``cross_heads``, ...), so that every BiXTEncoder argument is a
    ``model.encoder.<arg>`` override in every task.
    """

    def __init__(
        self,
        dim: int = 128,
        depth: int = 4,
        num_latents: int = 32,
        num_heads: int = 4,
        token_dim: Optional[int] = None,
        mlp_ratio: float = 4.0,
        token_mlp_ratio: Optional[float] = None,
        max_len: int = 4000,
        pos_embed: str = "sinusoidal",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        update_tokens_last: bool = False,
        grad_checkpointing: bool = False,
        pool_norm: bool = False,
        vocab_size: Optional[int] = None,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.embed = make_embedding(token_dim or dim, vocab_size, max_len=max_len, pos_embed=pos_embed,
                                    drop_rate=drop_rate)
        self.encoder = BiXTEncoder(
            dim=dim, depth=depth, num_latents=num_latents, num_heads=num_heads, token_dim=token_dim,
            mlp_ratio=mlp_ratio,
            token_mlp_ratio=token_mlp_ratio, drop_path_rate=drop_path_rate,
            update_tokens_last=update_tokens_last, grad_checkpointing=grad_checkpointing, **encoder_kwargs,
        )
        self.norm = LayerNorm(dim) if pool_norm else nn.Identity()

    def forward(self, input_ids: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        latents, _ = self.encoder(self.embed(input_ids), token_mask=token_mask)
        return self.norm(latents.mean(dim=1))


class SequenceClassifier(nn.Module):
    """A sequence encoder (pooled (B, dim) output) + :class:`ClassificationHead` -> logits.

    ``forward(input_ids, token_mask=None)``: without a mask, the real tokens are the non-padding
    ids (id 0 is padding in every vocabulary here; position 0 always counts, as in the
    tokenisers), so the model also takes a bare id tensor, which is what the shared
    :class:`~bixt.tasks.classification.ClassificationAdapter` hands it (``model(batch[0])``).
    The head's mean over latents is over the single pooled vector: the encoder pools (BiXT: mean
    over its latents, the baseline: mean over the real tokens), the head normalises and classifies.
    """

    def __init__(self, encoder: nn.Module, head: ClassificationHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, input_ids: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if token_mask is None:
            token_mask = ensure_visible_token(input_ids != PAD_ID)
        pooled = self.encoder(input_ids, token_mask)
        return self.head(pooled.unsqueeze(1))
