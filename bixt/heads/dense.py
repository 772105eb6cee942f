"""Dense (per-pixel) decode heads on BiXT token maps for semantic segmentation.

BiXT refines one token map per layer, all at the tokeniser's stride. Two heads read them:

- :class:`LinearSegHead`: the paper's "single linear layer" on the final token map.
- :class:`SemanticFPNHead`: four token maps rescaled to strides 4/8/16/32 (as XCiT does for its
  dense tasks), an FPN and the Semantic-FPN decoder (Kirillov et al., 2019), logits at stride 4.

Both return logits at their own stride; :class:`bixt.models.segmentation.BiXTSegmenter` upsamples
them to the input size.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearSegHead", "SemanticFPNHead", "PYRAMID_STRIDES", "group_norm_groups"]

#: output strides of the four pyramid levels
PYRAMID_STRIDES = (4, 8, 16, 32)


def _init_classifier(conv: nn.Conv2d) -> None:
    # Small logits at the start: every class begins near-equally likely (as mmseg's decode heads).
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")


class LinearSegHead(nn.Module):
    """Per-token class logits: (B, in_dim, h, w) -> (B, num_classes, h, w).

    BatchNorm, dropout, 1x1 conv. BiXT has no final token norm, so the head normalises the map
    itself; BatchNorm (as mmseg's linear heads) is affine at inference and folds into the 1x1 conv,
    so the deployed head stays a single linear layer per token. With a few images per GPU under
    DDP, convert it to SyncBatchNorm (``nn.SyncBatchNorm.convert_sync_batchnorm``).
    """

    def __init__(self, *, in_dim: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        _check_positive(in_dim=in_dim, num_classes=num_classes)
        _check_dropout(dropout)
        self.in_dim, self.num_classes = in_dim, num_classes
        self.norm = nn.BatchNorm2d(in_dim)
        # Whole-channel dropout: neighbouring tokens are correlated, so element dropout barely regularises.
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_dim, num_classes, kernel_size=1)
        _init_classifier(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.norm(x)))


def group_norm_groups(channels: int, preferred: int = 32) -> int:
    """The largest group count <= ``preferred`` that divides ``channels`` with >= 2 channels per
    group (32 for the usual widths): a one-value group at a 1x1 level cannot be normalised."""
    return math.gcd(channels, max(1, min(preferred, channels // 2)))


def _rescale(dim: int, factor: float) -> nn.Module:
    """Token map at stride s -> stride s / factor: transposed convs up, identity, max-pool down."""
    if factor == 1:
        return nn.Identity()
    if factor < 1:
        return nn.MaxPool2d(kernel_size=round(1 / factor), stride=round(1 / factor))
    # x2 per transposed conv; BatchNorm + GELU between them, as XCiT's x4 branch.
    steps = round(math.log2(factor))
    layers: list[nn.Module] = []
    for i in range(steps):
        if i:
            layers += [nn.BatchNorm2d(dim), nn.GELU()]
        layers.append(nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def _conv_gn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=False),  # GroupNorm adds the bias
        nn.GroupNorm(group_norm_groups(out_dim), out_dim),
        nn.ReLU(inplace=True),
    )


class SemanticFPNHead(nn.Module):
    """Semantic FPN on four single-stride token maps: list of (B, in_dims[i], h, w) -> (B, num_classes, H/4, W/4).

    Args:
        in_dims: channels of the four token maps (shallow to deep).
        token_stride: stride of the token maps (16 for p16, 8 for p16s8, 4 for p16s4); a power of 2.
        num_classes: classes to predict.
        fpn_dim: channels of the FPN levels.
        head_dim: channels of the per-level decoder stages.
        dropout: channel dropout before the classifier.
    """

    def __init__(self, *, in_dims: Sequence[int], token_stride: int, num_classes: int, fpn_dim: int = 256,
                 head_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        in_dims = list(in_dims)
        if len(in_dims) != len(PYRAMID_STRIDES):
            raise ValueError(f"SemanticFPNHead takes {len(PYRAMID_STRIDES)} token maps (strides {PYRAMID_STRIDES}), "
                             f"got in_dims={in_dims}; pass one channel count per feature layer")
        _check_positive(token_stride=token_stride, num_classes=num_classes, fpn_dim=fpn_dim, head_dim=head_dim,
                        **{f"in_dims[{i}]": d for i, d in enumerate(in_dims)})
        _check_dropout(dropout)
        if token_stride & (token_stride - 1):
            raise ValueError(f"token_stride must be a power of 2 (the pyramid rescales by factors of 2), got "
                             f"{token_stride}")
        self.in_dims, self.token_stride, self.num_classes = in_dims, token_stride, num_classes
        self.rescale = nn.ModuleList(_rescale(d, token_stride / s) for d, s in zip(in_dims, PYRAMID_STRIDES))
        self.lateral = nn.ModuleList(nn.Conv2d(d, fpn_dim, kernel_size=1) for d in in_dims)
        self.fpn_out = nn.ModuleList(nn.Conv2d(fpn_dim, fpn_dim, kernel_size=3, padding=1) for _ in in_dims)
        # Level i (stride 4 * 2^i) gets max(1, i) conv stages, each but the lone stage of level 0
        # followed by a x2 upsampling, so every level arrives at stride 4.
        self.decoder = nn.ModuleList(
            nn.ModuleList(_conv_gn_relu(fpn_dim if k == 0 else head_dim, head_dim) for k in range(max(1, i)))
            for i in range(len(in_dims))
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_dim, num_classes, kernel_size=1)
        _init_classifier(self.classifier)

    def pyramid(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The FPN outputs at strides 4, 8, 16, 32 (fpn_dim channels each)."""
        if len(maps) != len(self.rescale):
            raise ValueError(f"SemanticFPNHead takes {len(self.rescale)} token maps, got {len(maps)}")
        levels = [scale(x) for scale, x in zip(self.rescale, maps)]
        laterals = [conv(x) for conv, x in zip(self.lateral, levels)]
        # Top-down: coarse context added into every finer level. Sizes come from the finer map
        # (not a fixed x2): a token grid of odd size pools to floor(h/2).
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_out, laterals)]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = self.pyramid(maps)
        out = None
        for i, (stages, x) in enumerate(zip(self.decoder, levels)):
            for k, stage in enumerate(stages):
                x = stage(x)
                if i:  # to the next finer level's size: x2 on even grids, exact on odd ones
                    x = F.interpolate(x, size=levels[i - k - 1].shape[-2:], mode="bilinear", align_corners=False)
            out = x if out is None else out + x
        return self.classifier(self.dropout(out))
