"""Classification from pooled latents: mean over the latents, layer norm, dropout, linear.

The image classifiers (:mod:`bixt.models.bixt_image`) keep timm's flat attribute names
(``fc_norm``, ``head_drop``, ``head``) for the official checkpoints and call
:func:`classify_latents` like this head does.
"""
from __future__ import annotations

import torch
from torch import nn

from bixt.core.layers import LayerNorm


def classify_latents(latents: torch.Tensor, norm: nn.Module, drop: nn.Module, fc: nn.Module,
                     pool: bool = True, pre_logits: bool = False) -> torch.Tensor:
    """``fc(drop(norm(mean of latents)))`` for latents (B, L, D); ``pool=False`` takes (B, D) as given."""
    x = latents.mean(dim=1) if pool else latents
    x = drop(norm(x))
    return x if pre_logits else fc(x)


class ClassificationHead(nn.Module):
    """Logits (B, num_classes) from the final latents (B, L, dim)."""

    def __init__(self, *, dim: int, num_classes: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc_norm = LayerNorm(dim)
        self.head_drop = nn.Dropout(drop)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.fc.weight)  # as the official classifiers: start from uniform predictions
        nn.init.zeros_(self.fc.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return classify_latents(latents, self.fc_norm, self.head_drop, self.fc)
