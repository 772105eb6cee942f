"""The matching head of two-tower document retrieval (LRA byte-level retrieval): it classifies a
pair from ``[u, v, u * v, u - v]`` of the two pooled document vectors. The whole model is
:class:`bixt.models.retrieval.DualEncoderRetriever`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class RetrievalHead(nn.Module):
    """Classifies a pair of pooled document vectors from ``[u, v, u * v, u - v]``.

    The default hidden widths (512, 256) with ReLU follow the LRA matching head.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int = 2,
        hidden_dims: Sequence[int] = (512, 256),
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        width = 4 * dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(drop_rate)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if u.shape != v.shape or u.dim() != 2 or u.shape[1] != self.dim:
            raise ValueError(
                f"expected two pooled document vectors of shape (batch, {self.dim}), got {tuple(u.shape)} "
                f"and {tuple(v.shape)}"
            )
        return self.mlp(torch.cat([u, v, u * v, u - v], dim=-1))


# The document encoder is the text tasks' shared sequence encoder (kept here under its old name).
