"""Two-tower document matching (LRA byte-level retrieval).

One shared document encoder reads both documents of a pair and pools each into a vector; the
head (:class:`bixt.heads.retrieval.RetrievalHead`) classifies the pair from ``[u, v, u * v, u - v]``.
Any module mapping ``(input_ids (B, N), token_mask (B, N)) -> (B, dim)`` can be the document
encoder: :class:`bixt.models.text.BiXTSequenceEncoder`, or the full-attention baseline in
``bixt.baselines.transformer``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bixt.heads.retrieval import RetrievalHead
from bixt.tokenizers.text import PAD_ID

__all__ = ["DualEncoderRetriever"]


class DualEncoderRetriever(nn.Module):
    """Shared document encoder over both documents of a pair, then :class:`RetrievalHead`.

    Both documents go through the encoder as one batch of 2B sequences (padded to the longer of
    the two), which is one encoder call instead of two and identical in result.
    """

    def __init__(self, encoder: nn.Module, head: RetrievalHead) -> None:
        super().__init__()
        self.document_encoder = encoder  # the name its checkpoints' keys carry
        self.head = head

    def encode(self, input_ids: torch.Tensor, token_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Pooled vectors (B, dim) of a batch of documents."""
        return self.document_encoder(input_ids, token_mask)

    def forward(
        self,
        input_ids1: torch.Tensor,
        token_mask1: torch.Tensor,
        input_ids2: torch.Tensor,
        token_mask2: torch.Tensor,
    ) -> torch.Tensor:
        if input_ids1.shape[0] != input_ids2.shape[0]:
            raise ValueError(
                "both documents of a pair need the same batch size, "
                f"got {input_ids1.shape[0]} and {input_ids2.shape[0]}"
            )
        length = max(input_ids1.shape[1], input_ids2.shape[1])
        input_ids = torch.cat([_pad_to(input_ids1, length, PAD_ID), _pad_to(input_ids2, length, PAD_ID)])
        token_mask = torch.cat([_pad_to(token_mask1, length, False), _pad_to(token_mask2, length, False)])
        u, v = self.encode(input_ids, token_mask).chunk(2)
        return self.head(u, v)


def _pad_to(x: torch.Tensor, length: int, value) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    return torch.nn.functional.pad(x, (0, length - x.shape[1]), value=value)
