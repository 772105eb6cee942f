"""Point-cloud BiXT models: a point tokeniser (:mod:`bixt.tokenizers.point`) + :class:`~bixt.BiXTEncoder` + a head.

:class:`PointClassifier` reads clouds ``(B, P, 3 + C)`` (xyz, then ``C`` per-point features such
as normals) and returns logits from the pooled latents (:class:`~bixt.heads.classification.ClassificationHead`).
:class:`PointSegmenter` refines the tokens in every layer and labels every point with a dense head
(:class:`~bixt.heads.part_segmentation.PartSegmentationHead`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bixt.heads.part_segmentation import PartSegmentationHead
from bixt.tokenizers.point import PointTokens

__all__ = ["PointClassifier", "PointSegmenter"]


class PointClassifier(nn.Module):
    """``head(encoder(tokenizer(xyz, features)).latents)`` for fixed-size clouds.

    Args:
        tokenizer: a point tokeniser (``PointGroupTokenizer`` or ``PointwiseTokenizer``); its
            ``in_features`` says how many channels after xyz are fed to it.
        encoder: a :class:`~bixt.BiXTEncoder` (a one-sided last layer suffices: only latents are read).
        head: maps the final latents (B, L, D) to logits.
    """

    def __init__(self, tokenizer: nn.Module, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = head

    def forward(self, points: torch.Tensor, point_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        in_features = int(self.tokenizer.in_features)
        if points.dim() != 3 or points.shape[-1] < 3 + in_features:
            raise ValueError(f"points must have shape (batch, points, {3 + in_features}) (xyz + {in_features} "
                             f"feature channels), got {tuple(points.shape)}")
        pos = points[..., :3]
        features = points[..., 3:3 + in_features] if in_features else None
        tokens = self.tokenizer(pos, point_mask, features)
        latents, _ = self.encoder(tokens.tokens, token_mask=tokens.token_mask)
        return self.head(latents)


class PointSegmenter(nn.Module):
    """Point tokeniser + BiXT encoder (tokens refined in every layer) + dense head."""

    def __init__(self, tokenizer: nn.Module, encoder: nn.Module, head: PartSegmentationHead) -> None:
        super().__init__()
        encoder.require_refined_tokens("PointSegmenter")
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = head

    def forward(
        self,
        pos: torch.Tensor,
        point_mask: Optional[torch.Tensor] = None,
        features: Optional[torch.Tensor] = None,
        category: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        point_tokens: PointTokens = self.tokenizer(pos, point_mask, features)
        latents, tokens = self.encoder(point_tokens.tokens, point_tokens.token_mask)
        return self.head(
            tokens, point_tokens.token_mask, point_tokens.centres, pos,
            features=features, latents=latents, category=category, tokens_are_points=point_tokens.tokens_are_points,
        )
