"""BiXT for semantic segmentation: a timm BiXT backbone's token maps + a dense decode head.

images (B, 3, H, W) -> BiXT backbone (built up to the last token map read) -> token maps at the
token stride -> LinearSegHead (last map) or SemanticFPNHead (four maps) -> logits, bilinearly
upsampled to (B, num_classes, H, W).

- :class:`BiXTSegmenter`: the model (any BiXT image variant as backbone, e.g. the d13 ones).
- :func:`load_pretrained_backbone`: official / our own weights into the backbone, with a report.
- :func:`segment`: whole-image or sliding-window inference at any image size.
"""
from __future__ import annotations

import logging
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence, Union

import timm
import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function
from torch import nn

import bixt.models.bixt_image  # noqa: F401  (registers the BiXT names with timm)
from bixt.models.factory import encoder_kwargs
from bixt.heads.dense import LinearSegHead, SemanticFPNHead
from bixt.weights import LoadReport, load_weights

__all__ = ["BiXTSegmenter", "dense_backbone_drop", "load_pretrained_backbone", "segment", "default_feature_layers",
           "nearest_multiples", "HEADS"]
_logger = logging.getLogger(__name__)

HEADS = ("linear", "semfpn")
# Set by the segmenter itself; a backbone_kwargs entry would silently fight it.
_RESERVED_BACKBONE_KWARGS = ("num_classes", "dynamic_img_size", "drop_path_rate", "last_layer", "global_pool", "fc_norm")


def default_feature_layers(head: str, num_token_layers: int) -> list[int]:
    """Which token maps a head reads by default, for a backbone with ``num_token_layers`` of them.

    ``linear``: the last one. ``semfpn``: four, ending at the last, the others at 1/3, 1/2 and 2/3
    of the depth: ``[3, 5, 7, 11]`` for 12 (the layers XCiT and BEiT feed their FPNs).
    Shallow backbones repeat maps rather than fail (``[0, 0, 0, 1]`` for 2).
    """
    if num_token_layers < 1:
        raise ValueError(f"the backbone has no layer that refines its tokens (found {num_token_layers})")
    if head == "linear":
        return [num_token_layers - 1]
    if head == "semfpn":
        # floor(x + 0.5): round half up, so depths give the same layers on every Python
        spread = [max(0, math.floor(num_token_layers * f + 0.5) - 1) for f in (1 / 3, 1 / 2, 2 / 3)]
        return spread + [num_token_layers - 1]
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")


def nearest_multiples(n: int, stride: int) -> str:
    """The multiples of ``stride`` next to ``n``, for error messages: ``"24 or 32"``, ``"8"``, ``"32 (fits)"``."""
    down, up = (n // stride) * stride, -(-n // stride) * stride
    return f"{n} (fits)" if down == up else f"{up}" if down == 0 else f"{down} or {up}"


@register_notrace_function  # reads the input's size: under torch.fx it runs on the real tensor
def check_divisible(images: torch.Tensor, stride: int) -> torch.Tensor:
    """``images`` (B, 3, H, W), refused when H or W is not a multiple of the token ``stride``.

    Returns its input so that a traced graph keeps the check (a node without users is dropped)."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % stride or width % stride:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the segmenter's token stride {stride}; nearest valid "
            f"sizes: height {nearest_multiples(height, stride)}, width {nearest_multiples(width, stride)}. Resize or "
            "pad the images, or use "
            "bixt.models.segmentation.segment(model, images), which pads and crops back"
        )
    return images


def trained_backbone(backbone: str, backbone_kwargs: Mapping[str, Any], drop_path_rate: float) -> nn.Module:
    """The image model ``backbone`` as trained (e.g. the d13 classifier: 13 layers, 12 token maps),
    without classifier; refused when it cannot give dense features."""
    model = timm.create_model(backbone, num_classes=0, dynamic_img_size=True, drop_path_rate=drop_path_rate,
                              **backbone_kwargs)
    for attr in ("forward_intermediates", "feature_info", "encoder"):
        if not hasattr(model, attr):
            raise ValueError(f"backbone {backbone!r} has no {attr}: BiXTSegmenter needs a BiXT image model "
                             "(timm's feature API)")
    model.encoder.require_refined_tokens("BiXTSegmenter", in_last_layer=False)
    return model


@register_notrace_function  # calls the backbone's feature API, which checks the grid in Python
def backbone_token_maps(backbone: nn.Module, images: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """The backbone's token maps after the layers ``indices`` (sorted, distinct), each (B, C, h, w)."""
    return backbone.forward_intermediates(images, indices=indices, output_fmt="NCHW", intermediates_only=True)


class BiXTSegmenter(nn.Module):
    """A BiXT backbone with a dense decode head: images (B, 3, H, W) -> logits (B, num_classes, H, W).

    Args:
        backbone: a timm BiXT name, e.g. ``bixt_ti_l64_d13_p16`` (built with ``num_classes=0`` and
            ``dynamic_img_size=True``: any input size divisible by the token stride works).
        num_classes: classes to predict (150 for ADE20K).
        head: ``"linear"`` (the last token map) or ``"semfpn"`` (four token maps).
        feature_layers: the layers whose token maps the head reads (negative: from the last layer
            with token maps); default :func:`default_feature_layers`. Layers after the last one are
            not built, and the last one built refines its tokens only.
        pretrained: a weight file for the backbone (see :func:`load_pretrained_backbone`).
        drop_path_rate: stochastic depth of the backbone.
        head_dropout: channel dropout before the classifier.
        fpn_dim / head_dim: widths of the Semantic-FPN head.
        backbone_kwargs: further ``timm.create_model`` arguments (e.g. a smaller ``embed_dim``, ``depth``).
    """

    def __init__(
        self,
        *,
        backbone: str,
        num_classes: int,
        head: str = "linear",
        feature_layers: Optional[Sequence[int]] = None,
        pretrained: Optional[Union[str, os.PathLike]] = None,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.1,
        fpn_dim: int = 256,
        head_dim: int = 128,
        backbone_kwargs: Optional[Mapping[str, Any]] = None,
        encoder: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        # encoder: BiXTEncoder arguments, the one way every task's model config sets them
        backbone_kwargs = {**dict(backbone_kwargs or {}), **encoder_kwargs(encoder)}
        clash = [k for k in _RESERVED_BACKBONE_KWARGS if k in backbone_kwargs]
        if clash:
            raise ValueError(f"backbone_kwargs may not set {clash}: the segmenter sets them (use the segmenter's "
                             "drop_path_rate argument; num_classes is the decode head's)")
        self.backbone_name, self.head_name, self.num_classes = backbone, head, num_classes
        # The layers follow the backbone as trained (e.g. d13: 12 token maps, a one-sided layer 12);
        # the segmenter's backbone is built with only the layers up to the last map read, the last
        # one refining its tokens only (nothing reads its latents: no work, and no parameter
        # without a gradient, which DDP would refuse), and no classifier.
        # Built once as trained: its layout, and the initial weights drawn as that model draws them, so
        # a seed gives the segmenter the first layers of that model (the same weights on every version).
        trained = trained_backbone(backbone, backbone_kwargs, drop_path_rate)
        trained_depth, num_maps = len(trained.encoder.blocks), len(trained.feature_info)
        layers = list(feature_layers) if feature_layers is not None else default_feature_layers(head, num_maps)
        wanted = 1 if head == "linear" else 4
        if len(layers) != wanted:
            raise ValueError(f"head {head!r} reads {wanted} token map(s), got feature_layers={layers}")
        bad = [i for i in layers if not -num_maps <= i < num_maps]
        if bad:
            raise ValueError(f"feature_layers {bad} do not exist: backbone {backbone!r} has token maps after layers "
                             f"0..{num_maps - 1} (or -{num_maps}..-1 from the last)")
        self.feature_layers = [i % num_maps for i in layers]
        # The backbone returns each map once, in layer order; the head may read one map twice.
        self._take = sorted(set(self.feature_layers))
        self._order = [self._take.index(i) for i in self.feature_layers]
        depth = self._take[-1] + 1
        # stochastic depth per layer as in the backbone as trained (it grows linearly to the last layer)
        scale = max(depth - 1, 1) / max(trained_depth - 1, 1)
        if backbone_kwargs.get("token_drop_path_rate") is not None:
            backbone_kwargs["token_drop_path_rate"] *= scale
        backbone_kwargs.update(depth=depth, last_layer="tokens", num_classes=0, global_pool="", fc_norm=False)
        with torch.random.fork_rng(devices=[]):  # its weights come from the trained layout's draw
            self.backbone = timm.create_model(backbone, dynamic_img_size=True, drop_path_rate=drop_path_rate * scale,
                                              **backbone_kwargs)
        initial = trained.state_dict()
        self.backbone.load_state_dict({k: initial[k] for k in self.backbone.state_dict()})
        del trained, initial
        info = self.backbone.feature_info
        self.stride = int(info[-1]["reduction"])

        dims = [int(info[i]["num_chs"]) for i in self.feature_layers]
        if head == "linear":
            self.head = LinearSegHead(in_dim=dims[0], num_classes=num_classes, dropout=head_dropout)
        else:
            self.head = SemanticFPNHead(in_dims=dims, token_stride=self.stride, num_classes=num_classes,
                                        fpn_dim=fpn_dim, head_dim=head_dim, dropout=head_dropout)
        self.load_report: Optional[LoadReport] = None
        if pretrained is not None:
            self.load_report = load_pretrained_backbone(self, pretrained)

    # --- timm-style passthroughs (optimizer groups, layer decay, memory) ----------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{k}" for k in inner}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # The backbone's patterns, anchored below "backbone."; the decode head matches none, so
        # layer-wise decay treats it as the last group (full learning rate).
        inner = self.backbone.group_matcher(coarse)
        return {k: re.sub(r"\^", r"^backbone\\.", v) if isinstance(v, str) else v for k, v in inner.items()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    # --- forward ------------------------------------------------------------------------------------
    def token_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The token maps the head reads, in ``feature_layers`` order, each (B, C, H/stride, W/stride)."""
        images = check_divisible(images, self.stride)
        maps = backbone_token_maps(self.backbone, images, self._take)
        return [maps[i] for i in self._order]

    def forward_head(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Logits at the head's own stride (token stride for linear, 4 for semfpn)."""
        return self.head(maps[0]) if self.head_name == "linear" else self.head(maps)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward_head(self.token_maps(images))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


# --- pretrained backbones ---------------------------------------------------------------------------
_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.")
_CLASSIFIER = ("head.", "fc_norm.")


def dense_backbone_drop(state: Mapping[str, torch.Tensor], backbone: nn.Module) -> dict[str, list[str]]:
    """The segmenter's drop rule (:mod:`bixt.weights`): a classifier's or a whole model's tensors
    that a dense backbone has no use for, by reason: the classifier, the layers after the last token
    map (for d13 files: the one-sided layer 12), the latent update of the last layer kept (the head
    reads only its tokens), anything else the backbone lacks."""
    expected, depth = backbone.state_dict(), len(backbone.encoder.blocks)
    dropped: dict[str, list[str]] = {}
    for key in state:
        block = _BLOCK.match(key)
        index = int(block.group(1)) if block else None
        if key.startswith(_CLASSIFIER):
            why = "classifier"
        elif index is not None and index >= depth:
            one_sided = any(k.startswith(f"encoder.blocks.{index}.cross.attn.r_latents.") for k in state)
            why = (f"layer {index} (one-sided, not used for dense prediction)" if one_sided
                   else f"layer {index} (after the last token map the head reads)")
        elif key in expected:
            continue
        elif index == depth - 1:
            why = f"layer {depth - 1}'s latent update (the last layer kept: the head reads only its tokens)"
        else:
            why = "not in this backbone"
        dropped.setdefault(why, []).append(key)
    return dropped


def load_pretrained_backbone(model: BiXTSegmenter, path: Union[str, os.PathLike], *,
                             allow_missing: bool = False, use_ema: bool = False) -> LoadReport:
    """Load a BiXT weight file into ``model.backbone`` and log what was used.

    Accepts what :func:`bixt.weights.read_checkpoint` reads holding an official or our own BiXT
    image model, or an engine checkpoint of a whole :class:`BiXTSegmenter` (its ``backbone.*``
    tensors), through :func:`bixt.weights.load_weights` with :func:`dense_backbone_drop`; the
    decode head keeps its random init. ``use_ema``: take the file's EMA weights.

    Raises ``FileNotFoundError`` for a missing file, ``RuntimeError`` naming the file when a shape
    differs, nothing matches, or (unless ``allow_missing``) backbone tensors are not in the file.
    """
    report = load_weights(
        model.backbone, path, strict=not allow_missing, use_ema=use_ema, within="backbone", drop=dense_backbone_drop,
        what="backbone", hint="Pick the backbone variant the weights were trained as (embed dim, latents, patch size, "
        "stride; a d12 classifier's last layer is one-sided: pick the d12 name, or d13 weights), or pass "
        "allow_missing=True to keep the missing tensors at their init")
    report.note = f"the {model.head_name} decode head starts from random init"
    report.log_to(_logger, "pretrained backbone: ")
    return report


# --- inference at any size --------------------------------------------------------------------------
def _pair(value: Union[int, Sequence[int]], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) <= 0:
        raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")
    return pair


def _pad_to(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad bottom/right up to (height, width) (zero: the mean colour after normalisation)."""
    pad_h, pad_w = height - images.shape[-2], width - images.shape[-1]
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


def _window_starts(size: int, crop: int, step: int) -> list[int]:
    """Window offsets along one axis: every ``step``, the last one flush with the border."""
    count = max(size - crop + step - 1, 0) // step + 1
    return sorted({min(i * step, size - crop) for i in range(count)})


def segment(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mode: str = "whole",
    crop_size: Optional[Union[int, tuple[int, int]]] = None,
    crop_stride: Optional[Union[int, tuple[int, int]]] = None,
) -> torch.Tensor:
    """Logits (B, C, H, W) for images (B, 3, H, W) of any size. Call under ``torch.no_grad()``.

    ``"whole"``: one pass over the image zero-padded bottom/right to a multiple of ``model.stride``,
    logits cropped back. ``"slide"``: overlapping ``crop_size`` windows every ``crop_stride``
    (default 2/3 of the crop), the last window flush with the border, images smaller than the crop
    padded; overlapping logits are averaged (a count map per pixel).
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (batch, channels, height, width), got {tuple(images.shape)}")
    stride = int(model.stride)
    height, width = images.shape[-2:]
    if mode == "whole":
        padded = _pad_to(images, -(-height // stride) * stride, -(-width // stride) * stride)
        return model(padded)[..., :height, :width]
    if mode != "slide":
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if crop_size is None:
        raise ValueError("mode='slide' needs crop_size=(height, width), e.g. (512, 512) for ADE20K")
    crop_h, crop_w = _pair(crop_size, "crop_size")
    if crop_h % stride or crop_w % stride:
        raise ValueError(f"crop_size {crop_h}x{crop_w} is not divisible by the model's token stride {stride}; "
                         f"nearest valid: height {nearest_multiples(crop_h, stride)}, width "
                         f"{nearest_multiples(crop_w, stride)}")
    step_h, step_w = _pair(crop_stride, "crop_stride") if crop_stride is not None else (
        max(1, crop_h * 2 // 3), max(1, crop_w * 2 // 3))
    if step_h > crop_h or step_w > crop_w:
        raise ValueError(f"crop_stride {step_h}x{step_w} exceeds crop_size {crop_h}x{crop_w}: pixels between windows "
                         "would get no prediction")
    padded = _pad_to(images, max(height, crop_h), max(width, crop_w))
    full_h, full_w = padded.shape[-2:]
    logits = count = None
    for top in _window_starts(full_h, crop_h, step_h):
        for left in _window_starts(full_w, crop_w, step_w):
            out = model(padded[..., top:top + crop_h, left:left + crop_w]).float()
            if logits is None:
                logits = out.new_zeros(out.shape[0], out.shape[1], full_h, full_w)
                count = out.new_zeros(1, 1, full_h, full_w)
            logits[..., top:top + crop_h, left:left + crop_w] += out
            count[..., top:top + crop_h, left:left + crop_w] += 1
    return (logits / count)[..., :height, :width]
