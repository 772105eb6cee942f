"""Classification from pooled latents: mean over the latents, layer norm, dropout, (a hidden
layer,) linear.

The image classifiers (:mod:`bixt.models.bixt_image`) keep timm's flat attribute names
(``fc_norm``, ``head_drop``, ``head``) for the official checkpoints and call
:func:`classify_latents` like this head does.
"""
from __future__ import annotations

from typing import Optional

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
    """Logits (B, num_classes) from the final latents (B, L, dim).

    ``hidden_dim`` puts a hidden layer (Linear + GELU) before the classifier. An answer that depends
    on two inputs at once (is the colour the question names in the image?) is a product of
    features; a linear map of the mean latent can only add them, so it then waits for the encoder
    to form the product itself, and a hidden layer does not.
    """

    def __init__(self, *, dim: int, num_classes: int, drop: float = 0.0, hidden_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fc_norm = LayerNorm(dim)
        self.head_drop = nn.Dropout(drop)
        self.pre_logits = (nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU()) if hidden_dim
                           else nn.Identity())
        self.fc = nn.Linear(hidden_dim or dim, num_classes)
        nn.init.zeros_(self.fc.weight)  # as the official classifiers: start from uniform predictions
        nn.init.zeros_(self.fc.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre_logits(classify_latents(latents, self.fc_norm, self.head_drop, self.fc,
                                                        pre_logits=True)))
