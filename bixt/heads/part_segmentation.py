"""Dense (per-point) segmentation from BiXT's refined tokens.

BiXT keeps the token side alive through every layer, so the refined tokens carry both local
detail and, through the latents, global context. A dense head spreads them back to every input
point by inverse-distance interpolation from the nearest token positions (PointNet++ feature
propagation) and classifies each point, conditioned on the object category as in the standard
ShapeNetPart protocol.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bixt.tokenizers.point import gather, knn

__all__ = ["interpolate_to_points", "PartSegmentationHead"]


def interpolate_to_points(
    values: torch.Tensor,
    centres: torch.Tensor,
    points: torch.Tensor,
    centre_mask: Optional[torch.Tensor] = None,
    k: int = 3,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Inverse-squared-distance interpolation of per-centre ``values`` (B, G, C) onto ``points`` (B, N, 3).

    Each point averages its ``k`` nearest real centres with weights 1 / (d^2 + eps); a point that
    coincides with a centre takes (almost exactly) that centre's value. Gradients flow into ``values``.
    """
    if values.shape[:2] != centres.shape[:2]:
        raise ValueError(f"values {tuple(values.shape)} and centres {tuple(centres.shape)} disagree on (batch, G)")
    k = min(k, centres.shape[1])
    sq_dist, index = knn(points, centres, k, centre_mask)  # (B, N, k)
    weights = 1.0 / (sq_dist + eps)
    weights = (weights / weights.sum(dim=-1, keepdim=True)).to(values.dtype)
    return (gather(values, index) * weights.unsqueeze(-1)).sum(dim=2)


class PartSegmentationHead(nn.Module):
    """Per-point logits from refined tokens, pooled context and the object category.

    For every point it combines: the refined tokens interpolated from the ``interp_k`` nearest
    token positions, an embedding of the point's own coordinates (+ features such as normals),
    and per-cloud context (max over tokens, mean over latents, a learned category embedding).

    Args:
        token_dim: width of the refined tokens.
        num_classes: number of part labels (50 for ShapeNetPart).
        num_categories: object categories to condition on (0 disables conditioning).
        latent_dim: width of the latents (None: do not use latents).
        point_features: per-point input channels of the point embedding (3 for xyz, 6 with normals).
        hidden: width of the per-point classifier.
        category_dim / point_dim: widths of the category and point embeddings.
        interp_k: centres per point in the interpolation (not used when the tokens are the points).
        dropout: dropout inside the classifier.
    """

    def __init__(
        self,
        token_dim: int,
        num_classes: int,
        num_categories: int = 0,
        latent_dim: Optional[int] = None,
        point_features: int = 3,
        hidden: int = 256,
        category_dim: int = 64,
        point_dim: int = 64,
        interp_k: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_categories = num_categories
        self.interp_k = interp_k
        self.point_features = point_features
        self.token_norm = nn.LayerNorm(token_dim, eps=1e-6)
        self.latent_norm = nn.LayerNorm(latent_dim, eps=1e-6) if latent_dim else None
        self.category_embed = nn.Embedding(num_categories, category_dim) if num_categories else None
        self.point_embed = nn.Sequential(
            nn.Linear(point_features, point_dim), nn.LayerNorm(point_dim), nn.GELU(), nn.Linear(point_dim, point_dim)
        )
        context_dim = token_dim + (latent_dim or 0) + (category_dim if num_categories else 0)
        # The first classifier layer acts on [per-point features, per-cloud context]; it is split in
        # two so that the context is projected once per cloud and broadcast, not once per point.
        self.point_proj = nn.Linear(token_dim + point_dim, hidden)
        self.context_proj = nn.Linear(context_dim, hidden, bias=False)
        self.classifier = nn.Sequential(
            nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2), nn.LayerNorm(hidden // 2), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(
        self,
        tokens: torch.Tensor,
        token_mask: Optional[torch.Tensor],
        centres: torch.Tensor,
        pos: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        latents: Optional[torch.Tensor] = None,
        category: Optional[torch.Tensor] = None,
        tokens_are_points: bool = False,
    ) -> torch.Tensor:
        """Returns logits (B, N, num_classes); rows of padded points are garbage and must be masked.

        ``tokens_are_points`` (the tokeniser's :attr:`~bixt.tokenizers.point.PointTokens.tokens_are_points`):
        token i is point i, so each point reads its own token and ``interp_k`` is not used.
        """
        tokens = self.token_norm(tokens)
        if tokens_are_points:
            per_point = tokens
        else:
            per_point = interpolate_to_points(tokens, centres, pos, token_mask, self.interp_k)
        point_inputs = pos if features is None else torch.cat([pos, features], dim=-1)
        if point_inputs.shape[-1] != self.point_features:
            raise ValueError(
                f"head expects {self.point_features} per-point input channels (xyz + features), got "
                f"{point_inputs.shape[-1]}; set point_features to match the data (3 xyz, 6 with normals)"
            )
        per_point = torch.cat([per_point, self.point_embed(point_inputs)], dim=-1)

        real_tokens = tokens if token_mask is None else tokens.masked_fill(~token_mask.unsqueeze(-1), float("-inf"))
        context = [real_tokens.amax(dim=1)]
        if self.latent_norm is not None:
            if latents is None:
                raise ValueError("this head was built with latent_dim set, so it needs the encoder's latents")
            context.append(self.latent_norm(latents).mean(dim=1))
        if self.category_embed is not None:
            if category is None:
                raise ValueError(
                    f"this head is conditioned on the object category (num_categories={self.num_categories}); "
                    "pass category (B,) with the category index of each cloud"
                )
            context.append(self.category_embed(category))
        hidden = self.point_proj(per_point) + self.context_proj(torch.cat(context, dim=-1)).unsqueeze(1)
        return self.classifier(hidden)
