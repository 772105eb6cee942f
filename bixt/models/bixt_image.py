"""BiXT image classifiers (Hiller et al., NeurIPS 2024), registered in timm under the official names.

image -> tokeniser (+ Fourier positional encoding) -> BiXTEncoder -> mean of latents -> fc_norm -> head

Variants: ``bixt_{ti|ed256}[LS]_[cnv_]l{32|64|128}[_d13]_p{16|16s8|16s4|8|4}[_ft384]`` where ``ti`` is
dim 192 / 6 heads, ``ed256`` dim 256 / 8 heads, ``LS`` layer scale, ``cnv`` the conv tokeniser,
``l`` the number of latents, ``d13`` 13 layers (dense-task backbones), ``p16s8`` 16x16 patches with
stride 8, ``ft384`` fine-tuned at 384 px with resolution-adaptive positional encoding.
"""
from __future__ import annotations

import logging
import re
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import lecun_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from bixt.core.layers import LayerNorm
from bixt.core.encoder import BiXTEncoder
from bixt.heads.classification import classify_latents
from bixt.tokenizers.image import ConvTokenizer, FourierPosEncoding2d, PatchTokenizer, image_token_grid
from bixt.weights import load_weights

__all__ = ["BiXT", "checkpoint_filter_fn"]
_logger = logging.getLogger(__name__)

# Official constructor argument names -> ours.
OFFICIAL_KWARGS = {
    "embed_dim_lat": "embed_dim",
    "embed_dim_pat": "token_dim",
    "embed_dim_attn": "attn_dim",
    "sa_num_heads": "num_heads",
    "ca_num_heads": "cross_heads",
}
# The Fourier features are a function of the token grid alone; we recompute rather than load them.
_DERIVED = "fourier_pos_encode.pos"
_IGNORED_OFFICIAL = ("latinit", "posenc_type_pat", "weight_init", "embed_layer", "pretrained_filter_fn", "pretrained_strict")


class BiXT(nn.Module):
    """BiXT image classifier with timm's model interface.

    ``last_layer``: what the encoder's last layer updates, ``"latents"`` for a classifier (the
    official layout: its tokens would be read by nothing), ``"tokens"`` for a dense backbone whose
    last latents nothing reads, ``"both"``. ``fc_norm``: the norm of the pooled latents before the
    classifier (False for a backbone without one).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        stride: Optional[int] = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 192,
        token_dim: Optional[int] = None,
        attn_dim: Optional[int] = None,
        depth: int = 12,
        num_latents: int = 64,
        num_heads: int = 6,
        cross_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        rv_bias: bool = True,
        init_values: Optional[float] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        token_drop_path_rate: Optional[float] = None,
        tokenizer: str = "patch",
        dynamic_img_size: bool = False,
        attn_impl: str = "auto",
        cross_attention: str = "bidirectional",
        last_layer: str = "latents",
        fc_norm: bool = True,
        **official_kwargs,
    ) -> None:
        super().__init__()
        # Accept the official constructor names (the golden reference and published configs use them).
        given = {OFFICIAL_KWARGS[k]: official_kwargs.pop(k) for k in list(official_kwargs) if k in OFFICIAL_KWARGS}
        embed_dim = given.get("embed_dim", embed_dim)
        token_dim = given.get("token_dim", token_dim)
        attn_dim = given.get("attn_dim", attn_dim)
        num_heads = given.get("num_heads", num_heads)
        cross_heads = given.get("cross_heads", cross_heads)
        for key in _IGNORED_OFFICIAL:
            official_kwargs.pop(key, None)
        if official_kwargs:
            raise TypeError(f"BiXT got unexpected arguments: {sorted(official_kwargs)}")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        token_dim = token_dim or embed_dim
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.dynamic_img_size = dynamic_img_size

        if tokenizer == "patch":
            self.patch_embed = PatchTokenizer(token_dim, patch_size, stride, in_chans)
        elif tokenizer == "conv":
            self.patch_embed = ConvTokenizer(token_dim, stride or patch_size, in_chans)
        else:
            raise ValueError(f"tokenizer must be 'patch' or 'conv', got {tokenizer!r}")
        grid = None if dynamic_img_size else self.patch_embed.grid(*self.img_size)
        self.pos_embed = FourierPosEncoding2d(token_dim, grid)
        self.encoder = BiXTEncoder(
            embed_dim, depth, num_latents, token_dim=token_dim, attn_dim=attn_dim, num_heads=num_heads,
            cross_heads=cross_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, rv_bias=rv_bias,
            drop_path_rate=drop_path_rate, token_drop_path_rate=token_drop_path_rate,
            init_values=init_values, last_layer=last_layer, attn_impl=attn_impl, cross_attention=cross_attention,
        )
        self.fc_norm = LayerNorm(embed_dim) if fc_norm else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # timm's feature API: the token maps after each layer that refines the tokens (a one-sided
        # last layer, as in the classifiers and the d13 backbones, leaves them as they were).
        self.feature_info = [dict(num_chs=token_dim, reduction=self.patch_embed.stride, module=f"encoder.blocks.{i}")
                             for i in self.encoder.token_layers]
        self._init_weights()

    def filter_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The official key layout mapped onto this model (see :func:`bixt.weights.load_weights`)."""
        return checkpoint_filter_fn(state_dict, self)

    #: official tensors this model computes instead of loading (load reports name them as dropped)
    derived_checkpoint_keys = {_DERIVED: "Fourier positional features (recomputed for every token grid)"}

    def _init_weights(self) -> None:
        for m in self.patch_embed.modules():
            if isinstance(m, nn.Conv2d):
                lecun_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    # --- timm interface -------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^encoder\.latents|^patch_embed|^pos_embed", blocks=r"^encoder\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's ``custom_load`` hook: read any accepted checkpoint format (see :mod:`bixt.weights`),
        or the ``backbone.*`` of a whole-model checkpoint; a classifier of another size stays at its init."""
        load_weights(self, checkpoint_path, within="backbone", drop=other_classifier).log_to(_logger, "pretrained: ")

    # --- forward --------------------------------------------------------------------------------
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        grid = image_token_grid(x, self.patch_embed.stride, None if self.dynamic_img_size else self.img_size)
        return self.patch_embed(x) + self.pos_embed(grid[0], grid[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final latents, (B, num_latents, embed_dim)."""
        latents, _ = self.encoder(self.tokenize(x))
        return latents

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return classify_latents(x, self.fc_norm, self.head_drop, self.head, pool=self.global_pool == "avg",
                                pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # --- intermediate features (timm's feature API) ----------------------------------------------
    def _feature_indices(self, indices: Optional[int | list[int] | tuple[int, ...]]) -> tuple[list[int], int]:
        """Absolute layer indices for ``indices`` (None: all token maps, n: the last n, a list: those
        layers, negative ones counted from the last layer with token maps), checked against what exists."""
        count = len(self.feature_info)
        depth = len(self.encoder.blocks)
        one_sided = (f"; layer {depth - 1} is one-sided (it updates the latents only, the tokens stay as layer "
                     f"{depth - 2} left them)" if count < depth else "")
        what = f"this model has token maps after layers 0..{count - 1}{one_sided}"
        if count == 0:
            self.encoder.require_refined_tokens("timm's feature API (forward_intermediates, features_only)",
                                               in_last_layer=False)
            raise ValueError(f"this model has no layer that refines the tokens (depth {depth}, one-sided last layer)")
        if indices is None:
            indices = count
        if isinstance(indices, int):
            if not 0 < indices <= count:
                raise ValueError(f"asked for the last {indices} token maps, but {what}")
        else:
            bad = [i for i in indices if not -count <= i < count]
            if bad or not len(indices):
                raise ValueError(f"asked for token maps after layer(s) {list(indices)}, but {what}")
        return feature_take_indices(count, indices)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[int | list[int] | tuple[int, ...]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Token maps after the layers in ``indices`` and the final latents, as timm's ViT offers.

        Args:
            indices: None for every layer that refines the tokens, an int n for the last n of
                them, or a list of layer indices (negative: from the end).
            norm: normalise each token map over its channels (layer norm without affine
                parameters; BiXT has no final token norm).
            stop_early: run no layer past the last one asked for.
            output_fmt: ``"NCHW"`` for (B, C, H/stride, W/stride) maps, ``"NLC"`` for (B, N, C).
            intermediates_only: return the list of maps alone.

        Returns ``[maps]`` or ``(latents (B, num_latents, embed_dim), [maps])``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, _ = self._feature_indices(indices)
        height, width = image_token_grid(x, self.patch_embed.stride)  # notrace: FX can trace this method
        latents, _, maps = self.encoder.forward_intermediates(
            self.tokenize(x), indices=take_indices, stop_early=stop_early or intermediates_only,
        )
        if norm:
            maps = [F.layer_norm(t, t.shape[-1:], eps=1e-6) for t in maps]
        if output_fmt == "NCHW":
            maps = [rearrange(t, "b (h w) c -> b c h w", h=height, w=width) for t in maps]
        return maps if intermediates_only else (latents, maps)

    def prune_intermediate_layers(
        self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False, prune_head: bool = True,
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the classifier with ``prune_head``);
        returns the absolute indices. ``prune_norm`` is accepted for timm: BiXT has no final token norm."""
        take_indices, max_index = self._feature_indices(indices)
        self.encoder.blocks = self.encoder.blocks[: max_index + 1]
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take_indices


# --- official checkpoint layout ----------------------------------------------------------------
_CROSS = "cross_attention_latents_token."
_RENAMES = [
    (r"^latents$", "encoder.latents"),
    (r"^fourier_pos_encode\.token_projection\.", "pos_embed.proj."),
    (r"^blocks\.(\d+)\.self_attention_latents\.", r"encoder.blocks.\1.latent_attn."),
] + [
    (rf"^blocks\.(\d+)\.{_CROSS}{old}\.", rf"encoder.blocks.\1.cross.{new}.")
    for old, new in [
        ("norm1_lat", "norm_latents"), ("norm1_pat", "norm_tokens"),
        (r"attn\.rv_patches", "attn.rv_tokens"), (r"attn\.proj_lat", "attn.proj_latents"),
        (r"attn\.proj_pat", "attn.proj_tokens"), (r"attn\.(r|rv)_latents", r"attn.\2_latents"),
        ("ls1_lat", "ls_latents"), ("ls1_pat", "ls_tokens"),
        ("norm2_lat", "mlp_norm_latents"), ("mlp_lat", "mlp_latents"), ("ls2_lat", "mlp_ls_latents"),
        ("norm2_pat", "mlp_norm_tokens"), ("mlp_pat", "mlp_tokens"), ("ls2_pat", "mlp_ls_tokens"),
    ]
]
_RENAMES = [(re.compile(p), r) for p, r in _RENAMES]
# The official files hold the Fourier features of their 224 px training grid, so that grid also
# tells their token stride.
_OFFICIAL_SIZE = 224


def check_derived_grid(value: torch.Tensor, model: BiXT) -> None:
    """Refuse official Fourier features of another token grid (the one home of that rule): a fixed
    grid must match; for a dynamic one, the file's 224 px grid must be this model's (same stride)."""
    grid = tuple(value.shape[-2:])
    if model.pos_embed.grid_size is not None:
        if grid != model.pos_embed.grid_size:
            raise RuntimeError(
                f"checkpoint was made for a {grid} token grid but this model uses {model.pos_embed.grid_size}; "
                "pick the variant with the matching stride/input size or use dynamic_img_size=True")
        return
    ours = model.patch_embed.grid(_OFFICIAL_SIZE, _OFFICIAL_SIZE)
    if grid != ours:
        stride = _OFFICIAL_SIZE // grid[0] if grid[0] else "?"
        raise RuntimeError(
            f"its Fourier positional features are the {grid} token grid of a {_OFFICIAL_SIZE} px image, i.e. token "
            f"stride {stride}, but this model has token stride {model.patch_embed.stride} ({ours} at "
            f"{_OFFICIAL_SIZE} px): pick the variant with stride {stride}, or delete {_DERIVED!r} from the file to "
            "load its weights anyway")


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: BiXT) -> dict[str, torch.Tensor]:
    """Map an official BiXT state dict onto this implementation (our own layout passes through)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key == _DERIVED:
            check_derived_grid(value, model)
            continue
        for pattern, repl in _RENAMES:
            key, n = pattern.subn(repl, key)
            if n:
                break
        out[key] = value
    return out


def other_classifier(state_dict: dict[str, torch.Tensor], model: BiXT) -> dict[str, list[str]]:
    """Drop rule (:mod:`bixt.weights`): a classifier of another size than the model's (timm's
    ``pretrained=True`` with another ``num_classes``) is discarded; the model's keeps its init."""
    head = model.state_dict()
    keys = [k for k in ("head.weight", "head.bias")
            if k in state_dict and (k not in head or head[k].shape != state_dict[k].shape)]
    return {f"classifier of another size (this model: {model.num_classes} classes)": keys} if keys else {}


def _pretrained_filter(state_dict: dict[str, torch.Tensor], model: BiXT) -> dict[str, torch.Tensor]:
    """timm's own loading path (no ``custom_load``): :func:`checkpoint_filter_fn` and :func:`other_classifier`."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    head = model.state_dict()
    for keys in other_classifier(state_dict, model).values():
        for key in keys:
            _logger.info("pretrained classifier %s %s dropped for num_classes=%d", key,
                         tuple(state_dict[key].shape), model.num_classes)
            state_dict.pop(key)
            if key in head:
                state_dict[key] = head[key]
    return state_dict


# --- registry ----------------------------------------------------------------------------------
def _cfg(input_size: int = 224, **kwargs) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, input_size, input_size), "pool_size": None,
        "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": "arXiv:2402.12138", "paper_name": "Perceiving Longer Sequences With Bi-Directional Cross-Attention Transformers",
        **kwargs,
    }


_CONV_CFG = dict(first_conv="patch_embed.proj.0.0")
_FT384 = dict(input_size=384, crop_pct=1.0, fixed_input_size=False)
default_cfgs = generate_default_cfgs({
    "bixt_ti_l32_p16": _cfg(), "bixt_ti_l64_p16": _cfg(), "bixt_ti_l128_p16": _cfg(),
    "bixt_ti_l32_p16s8": _cfg(), "bixt_ti_l64_p16s8": _cfg(), "bixt_ti_l128_p16s8": _cfg(),
    "bixt_ti_l64_p16s4": _cfg(),
    "bixt_ti_l64_d13_p16": _cfg(), "bixt_ti_l64_d13_p16s8": _cfg(), "bixt_ti_l64_d13_p16s4": _cfg(),
    "bixt_ti_cnv_l64_p16": _cfg(**_CONV_CFG), "bixt_ti_cnv_l64_d13_p16": _cfg(**_CONV_CFG),
    "bixt_ti_cnv_l64_d13_p8": _cfg(**_CONV_CFG), "bixt_ti_cnv_l64_d13_p4": _cfg(**_CONV_CFG),
    "bixt_conv_ti_l64_p16": _cfg(**_CONV_CFG), "bixt_conv_ti_l64_d13_p16": _cfg(**_CONV_CFG),
    "bixt_conv_ti_l64_d13_p8": _cfg(**_CONV_CFG), "bixt_conv_ti_l64_d13_p4": _cfg(**_CONV_CFG),
    "bixt_ed256_l64_p16": _cfg(), "bixt_ed256_l64_p16s8": _cfg(), "bixt_ed256LS_l64_p16s8": _cfg(),
    "bixt_ti_l64_p16_ft384": _cfg(**_FT384), "bixt_ti_l64_p16s8_ft384": _cfg(**_FT384),
    "bixt_ti_l64_p16s4_ft384": _cfg(**_FT384), "bixt_ed256_l64_p16s8_ft384": _cfg(**_FT384),
    "bixt_ed256LS_l64_p16s8_ft384": _cfg(**_FT384),
    "bixt_ti_l64_d13_p16_ft384": _cfg(**_FT384), "bixt_ti_l64_d13_p16s8_ft384": _cfg(**_FT384),
})


def _create_bixt(variant: str, pretrained: bool = False, **kwargs) -> BiXT:
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if overlay.get("file"):
        # Our loader reads every accepted format (zip, wrapped training checkpoints, safetensors).
        overlay.setdefault("custom_load", True)
    # features_only=True: the token maps of the last three layers that refine tokens, by default
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        BiXT, variant, pretrained, pretrained_filter_fn=_pretrained_filter,
        pretrained_cfg_overlay=overlay, feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )


_TI = dict(embed_dim=192, num_heads=6)
_ED256 = dict(embed_dim=256, num_heads=8)


def _variant(name: str, pretrained: bool, base: dict, **kwargs) -> BiXT:
    return _create_bixt(name, pretrained, **{**base, **kwargs})


@register_model
def bixt_ti_l32_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l32_p16", pretrained, dict(_TI, num_latents=32), **kwargs)


@register_model
def bixt_ti_l64_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16", pretrained, dict(_TI, num_latents=64), **kwargs)


@register_model
def bixt_ti_l128_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l128_p16", pretrained, dict(_TI, num_latents=128), **kwargs)


@register_model
def bixt_ti_l32_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l32_p16s8", pretrained, dict(_TI, num_latents=32, stride=8), **kwargs)


@register_model
def bixt_ti_l64_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16s8", pretrained, dict(_TI, num_latents=64, stride=8), **kwargs)


@register_model
def bixt_ti_l128_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l128_p16s8", pretrained, dict(_TI, num_latents=128, stride=8), **kwargs)


@register_model
def bixt_ti_l64_p16s4(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16s4", pretrained, dict(_TI, num_latents=64, stride=4), **kwargs)


@register_model
def bixt_ti_l64_d13_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_d13_p16", pretrained, dict(_TI, depth=13), **kwargs)


@register_model
def bixt_ti_l64_d13_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_d13_p16s8", pretrained, dict(_TI, depth=13, stride=8), **kwargs)


@register_model
def bixt_ti_l64_d13_p16s4(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_d13_p16s4", pretrained, dict(_TI, depth=13, stride=4), **kwargs)


@register_model
def bixt_ti_cnv_l64_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_cnv_l64_p16", pretrained, dict(_TI, tokenizer="conv", stride=16), **kwargs)


@register_model
def bixt_ti_cnv_l64_d13_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_cnv_l64_d13_p16", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=16), **kwargs)


@register_model
def bixt_ti_cnv_l64_d13_p8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_cnv_l64_d13_p8", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=8), **kwargs)


@register_model
def bixt_ti_cnv_l64_d13_p4(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_cnv_l64_d13_p4", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=4), **kwargs)


# The published weight files call the conv models bixt_conv_ti_*.
@register_model
def bixt_conv_ti_l64_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_conv_ti_l64_p16", pretrained, dict(_TI, tokenizer="conv", stride=16), **kwargs)


@register_model
def bixt_conv_ti_l64_d13_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_conv_ti_l64_d13_p16", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=16), **kwargs)


@register_model
def bixt_conv_ti_l64_d13_p8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_conv_ti_l64_d13_p8", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=8), **kwargs)


@register_model
def bixt_conv_ti_l64_d13_p4(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_conv_ti_l64_d13_p4", pretrained, dict(_TI, depth=13, tokenizer="conv", stride=4), **kwargs)


@register_model
def bixt_ed256_l64_p16(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ed256_l64_p16", pretrained, dict(_ED256), **kwargs)


@register_model
def bixt_ed256_l64_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ed256_l64_p16s8", pretrained, dict(_ED256, stride=8), **kwargs)


@register_model
def bixt_ed256LS_l64_p16s8(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ed256LS_l64_p16s8", pretrained, dict(_ED256, stride=8, init_values=1e-5), **kwargs)


@register_model
def bixt_ti_l64_p16_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16_ft384", pretrained, dict(_TI, img_size=384, dynamic_img_size=True), **kwargs)


@register_model
def bixt_ti_l64_p16s8_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16s8_ft384", pretrained, dict(_TI, stride=8, img_size=384, dynamic_img_size=True), **kwargs)


@register_model
def bixt_ti_l64_p16s4_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_p16s4_ft384", pretrained, dict(_TI, stride=4, img_size=384, dynamic_img_size=True), **kwargs)


@register_model
def bixt_ed256_l64_p16s8_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ed256_l64_p16s8_ft384", pretrained, dict(_ED256, stride=8, img_size=384, dynamic_img_size=True), **kwargs)


@register_model
def bixt_ed256LS_l64_p16s8_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ed256LS_l64_p16s8_ft384", pretrained,
                    dict(_ED256, stride=8, init_values=1e-5, img_size=384, dynamic_img_size=True), **kwargs)


@register_model
def bixt_ti_l64_d13_p16_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_d13_p16_ft384", pretrained, dict(_TI, depth=13, img_size=384, dynamic_img_size=True),
                    **kwargs)


@register_model
def bixt_ti_l64_d13_p16s8_ft384(pretrained=False, **kwargs) -> BiXT:
    return _variant("bixt_ti_l64_d13_p16s8_ft384", pretrained,
                    dict(_TI, depth=13, stride=8, img_size=384, dynamic_img_size=True), **kwargs)
