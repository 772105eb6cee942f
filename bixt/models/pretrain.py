"""Masked modelling for BiXT: every layer two-sided, so the loss on the refined tokens trains the
token side of every layer (the classifiers' single loss on pooled latents never reaches it).

Every model here is ``backbone`` (exactly the keys of the downstream model's backbone: an image
:class:`~bixt.models.bixt_image.BiXT`, a point tokeniser + encoder, a byte sequence encoder) +
``mask_token`` + ``decoder``; a fine-tune loads ``backbone.*`` (:func:`bixt.weights.load_weights`,
``within="backbone"``) and drops the rest. ``forward(batch)`` returns a dict of what the loss and
the pictures need; ``loss(outputs)`` is the masked loss.

- :class:`MaskedImageModel` (SimMIM): a learned mask token replaces masked patch embeddings (before
  the Fourier positions are added, so masked tokens keep their position), all tokens go through the
  encoder, a LayerNorm + Linear head predicts each masked token's pixels. The target of a token is
  the ``stride x stride`` pixel cell at its centre: with overlapping patches (stride 8 / 4 of a
  16-px patch) a masked token's patch still shows the margin of its cell to its visible
  neighbours' patches, so those tokenisers mask less than the ratio says.
  ``style="latent_decoder"``: the encoder reads the visible tokens only (its cost is linear in
  the token count: a 0.75 mask makes it about 4x cheaper), and a :class:`LatentDecoder` whose
  queries (the mask token + each position's Fourier encoding) read the final latents and the
  refined visible tokens through cross-attention predicts the pixels (Perceiver IO's decoder
  applied to masked modelling). Its cost: per block one cross-attention of N queries over
  L + visible keys and an MLP on N queries, at the token width.
- :class:`MaskedPointModel` (Point-MAE targets): FPS + kNN groups, a share of groups masked (their
  centres keep the positional embedding, the content is a mask token), each masked group's points
  predicted relative to its centre (scaled by the tokeniser's ``relative_scale``, as it reads
  them), Chamfer distance (:func:`chamfer_distance`).
- :class:`MaskedByteModel`: BERT-style masked modelling over the real (non-padding) ids.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from bixt.constraints import Range
from bixt.core import BiXTEncoder, CrossAttention
from bixt.core.layers import LayerNorm
from bixt.models.bixt_image import BiXT
from bixt.models.factory import encoder_kwargs
from bixt.models.text import BiXTSequenceEncoder
from bixt.tokenizers.image import image_token_grid
from bixt.tokenizers.point import PointGroupTokenizer, gather
from bixt.tokenizers.text import PAD_ID, ensure_visible_token

__all__ = ["LatentDecoder", "MaskedImageModel", "MaskedPointModel", "MaskedByteModel", "random_mask", "block_mask",
           "chamfer_distance"]

Ratio = Annotated[float, Range(min=0.0, max=1.0, open_min=True, open_max=True)]


def check_ratio(ratio: float, name: str = "mask_ratio") -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{name} must lie in (0, 1) (a share of the tokens to mask), got {ratio}; "
                         f"e.g. model.{name}=0.6")
    return ratio


def _generator(module: nn.Module, device: torch.device) -> Optional[torch.Generator]:
    """Training draws from the global stream; evaluation masks the same way every time, so that
    the validation loss of two epochs compares the same task."""
    return None if module.training else torch.Generator(device).manual_seed(0)


def random_mask(batch: int, tokens: int, ratio: float, device: torch.device,
                generator: Optional[torch.Generator] = None, real: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, N) bool, True = masked: ``round(ratio * n)`` (at least one, at most n - 1) of each row's
    ``n`` real tokens (``real``: (B, N) bool, default all), uniformly at random."""
    real = torch.ones(batch, tokens, dtype=torch.bool, device=device) if real is None else real
    noise = torch.rand(batch, tokens, device=device, generator=generator).masked_fill(~real, 2.0)
    count = real.sum(1, keepdim=True)
    k = (count.float() * ratio).round().long().clamp(min=1).minimum((count - 1).clamp(min=1))
    rank = noise.argsort(1).argsort(1)
    return (rank < k) & real


def block_mask(batch: int, grid: tuple[int, int], block: int, ratio: float, device: torch.device,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, H * W) bool: SimMIM's block-wise masking, ``block x block`` tokens masked together."""
    height, width = grid
    if block > min(height, width):
        raise ValueError(f"mask_block={block} tokens is larger than the {height}x{width} token grid; "
                         f"use model.mask_block<={min(height, width)}")
    rows, cols = -(-height // block), -(-width // block)
    coarse = random_mask(batch, rows * cols, ratio, device, generator).view(batch, rows, cols)
    fine = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :height, :width]
    return fine.reshape(batch, height * width)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, N, ...) over the positions where ``mask`` (B, N) is True."""
    per_token = values.reshape(*mask.shape, -1).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


class LatentDecoder(nn.Module):
    """Queries (B, N, D) read a context (B, K, D) through ``depth`` pre-norm cross-attention + MLP
    blocks, then a LayerNorm + Linear to ``out_dim`` per query."""

    def __init__(self, *, dim: int, out_dim: int, depth: int = 1, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm_q": LayerNorm(dim), "norm_kv": LayerNorm(dim),
            "attn": CrossAttention(query_dim=dim, context_dim=dim, attn_dim=dim, num_heads=num_heads),
            "norm_mlp": LayerNorm(dim),
            "mlp": nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim)),
        }) for _ in range(depth))
        self.head = nn.Sequential(LayerNorm(dim), nn.Linear(dim, out_dim))

    def forward(self, queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            queries = queries + block["attn"](block["norm_q"](queries), block["norm_kv"](context), context_mask)[0]
            queries = queries + block["mlp"](block["norm_mlp"](queries))
        return self.head(queries)


class MaskedImageModel(nn.Module):
    """SimMIM on a BiXT image backbone whose every layer is two-sided (see the module docstring).

    Args:
        img_size, patch_size, stride, tokenizer: the backbone's tokeniser (as the image classifiers').
        encoder: BiXTEncoder arguments (``dim``, ``depth``, ``num_latents``, ``num_heads``, ...).
        mask_ratio: share of tokens masked, in (0, 1).
        mask_block: tokens per side of a masking block (1 = random token masking).
        norm_targets: normalise each target cell by its own mean and std (MAE's ``norm_pix_loss``).
        loss: ``l1`` (SimMIM) or ``l2`` (MAE), on masked tokens only.
        style: ``simmim`` (all tokens encoded, linear head) or ``latent_decoder`` (visible tokens
            encoded, a :class:`LatentDecoder` of ``decoder_depth`` blocks).
    """

    def __init__(self, *, img_size: Annotated[int, Range(min=1)] = 224, patch_size: Annotated[int, Range(min=1)] = 16,
                 stride: Optional[Annotated[int, Range(min=1)]] = None, tokenizer: Literal["patch", "conv"] = "patch",
                 encoder: Optional[Mapping[str, Any]] = None, mask_ratio: Ratio = 0.6,
                 mask_block: Annotated[int, Range(min=1)] = 1, norm_targets: bool = False,
                 loss: Literal["l1", "l2"] = "l1", drop_path_rate: float = 0.0, in_chans: int = 3,
                 style: Literal["simmim", "latent_decoder"] = "simmim",
                 decoder_depth: Annotated[int, Range(min=1)] = 1) -> None:
        super().__init__()
        self.mask_ratio, self.mask_block = check_ratio(mask_ratio), mask_block
        self.norm_targets, self.loss_name = norm_targets, loss
        token_stride = stride or patch_size
        if img_size % token_stride:
            raise ValueError(f"img_size {img_size} is not a multiple of the token stride {token_stride}: the tokeniser "
                             f"cannot take it (and the pixel targets are the stride cells); use data.img_size=<a "
                             f"multiple of {token_stride}>")
        self.backbone = BiXT(img_size=img_size, patch_size=patch_size, stride=stride, tokenizer=tokenizer,
                             in_chans=in_chans, num_classes=0, drop_path_rate=drop_path_rate, last_layer="both",
                             **encoder_kwargs(encoder))
        self.stride = int(self.backbone.patch_embed.stride)
        self.grid = image_token_grid(torch.empty(1, in_chans, *self.backbone.img_size), self.stride)
        block_mask(1, self.grid, mask_block, mask_ratio, torch.device("cpu"))  # refuses a block larger than the grid
        token_dim = self.backbone.encoder.blocks[0].cross.norm_tokens.weight.shape[0]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, token_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.style = style
        out_dim = self.stride ** 2 * in_chans
        if style == "simmim":
            self.decoder = nn.Sequential(LayerNorm(token_dim), nn.Linear(token_dim, out_dim))
        else:
            if token_dim != self.backbone.embed_dim:
                raise ValueError("style=latent_decoder reads latents and tokens as one context: give the encoder "
                                 "token_dim = dim")
            self.decoder = LatentDecoder(dim=token_dim, out_dim=out_dim, depth=decoder_depth,
                                         num_heads=self.backbone.encoder.blocks[0].cross.attn.num_heads)

    def make_mask(self, batch: int, device: torch.device) -> torch.Tensor:
        generator = _generator(self, device)
        if self.mask_block == 1:
            return random_mask(batch, self.grid[0] * self.grid[1], self.mask_ratio, device, generator)
        return block_mask(batch, self.grid, self.mask_block, self.mask_ratio, device, generator)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """(B, N, stride * stride * C): each token's pixel cell, per-cell normalised if asked."""
        cells = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=self.stride, q=self.stride)
        if self.norm_targets:
            cells = (cells - cells.mean(-1, keepdim=True)) / (cells.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
        return cells

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        backbone = self.backbone
        height, width = image_token_grid(images, self.stride, backbone.img_size)
        mask = self.make_mask(images.shape[0], images.device) if mask is None else mask
        embedded, position = backbone.patch_embed(images), backbone.pos_embed(height, width)
        out = {"target": self.targets(images), "mask": mask, "images": images}
        if self.style == "simmim":
            embedded = torch.where(mask.unsqueeze(-1), self.mask_token.to(embedded.dtype), embedded)
            _, tokens = backbone.encoder(embedded + position)
            return {"pred": self.decoder(tokens), **out}
        # the visible tokens first, in their order; rows with fewer visible tokens padded (block masks)
        visible = ~mask
        order = torch.sort(visible.float(), dim=1, descending=True, stable=True).indices
        count = visible.sum(1, keepdim=True)
        order = order[:, : int(count.max())]
        token_mask = torch.arange(order.shape[1], device=mask.device) < count
        latents, tokens = backbone.encoder(gather(embedded + position, order), token_mask=token_mask)
        queries = (self.mask_token + position).expand(images.shape[0], -1, -1)
        context_mask = torch.cat([token_mask.new_ones(latents.shape[:2]), token_mask], 1)
        return {"pred": self.decoder(queries, torch.cat([latents, tokens], 1), context_mask), **out}

    def loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        pred, target = outputs["pred"].float(), outputs["target"].float()
        error = (pred - target).abs() if self.loss_name == "l1" else (pred - target) ** 2
        return masked_mean(error, outputs["mask"])

    def reconstruct(self, outputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked input, reconstruction) as images: masked cells grey / predicted (de-normalised
        with the visible cell's own statistics when the targets are normalised)."""
        images, mask = outputs["images"], outputs["mask"]
        pred = outputs["pred"].float()
        if self.norm_targets:
            cells = rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=self.stride, q=self.stride)
            pred = pred * cells.std(-1, keepdim=True, unbiased=False) + cells.mean(-1, keepdim=True)
        height, width = image_token_grid(images, self.stride)
        pixel_mask = rearrange(mask.float(), "b (h w) -> b 1 h w", h=height).repeat_interleave(
            self.stride, 2).repeat_interleave(self.stride, 3).bool()
        recon = rearrange(pred, "b (h w) (p q c) -> b c (h p) (w q)", h=height, p=self.stride, q=self.stride)
        masked = images.masked_fill(pixel_mask, 0.0)
        return masked, torch.where(pixel_mask, recon.to(images.dtype), images)


def chamfer_distance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric squared-L2 Chamfer distance per set: ``pred`` (..., P, 3), ``target`` (..., Q, 3) -> (...)."""
    dist = torch.cdist(pred.float(), target.float()).square()
    return dist.min(-1).values.mean(-1) + dist.min(-2).values.mean(-1)


class PointBackbone(nn.Module):
    """Tokeniser + encoder under the names the point classifiers and segmenters use."""

    def __init__(self, tokenizer: PointGroupTokenizer, encoder: BiXTEncoder) -> None:
        super().__init__()
        self.tokenizer, self.encoder = tokenizer, encoder


class MaskedPointModel(nn.Module):
    """Point-MAE-style masked group modelling on a BiXT with every layer two-sided."""

    def __init__(self, *, tokenizer: PointGroupTokenizer, encoder: BiXTEncoder, mask_ratio: Ratio = 0.6,
                 hidden: Annotated[int, Range(min=1)] = 256) -> None:
        super().__init__()
        if not isinstance(tokenizer, PointGroupTokenizer):
            raise ValueError("masked point modelling needs the FPS + kNN group tokeniser "
                             "(bixt.tokenizers.point.PointGroupTokenizer): it masks groups")
        self.mask_ratio = check_ratio(mask_ratio)
        encoder.require_refined_tokens("MaskedPointModel (set model.encoder.update_tokens_last=true)")
        self.backbone = PointBackbone(tokenizer, encoder)
        dim = tokenizer.dim
        self.group_size = tokenizer.group_size
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Sequential(LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, self.group_size * 3))

    def forward(self, points: torch.Tensor, *rest: Any) -> dict[str, torch.Tensor]:
        tokenizer = self.backbone.tokenizer
        pos = points[..., :3]
        features = points[..., 3:3 + tokenizer.in_features] if tokenizer.in_features else None
        centre_index, neighbour_index = tokenizer.group(pos)
        centres = gather(pos, centre_index)
        tokens = tokenizer(pos, None, features).tokens
        mask = random_mask(*tokens.shape[:2], self.mask_ratio, tokens.device, _generator(self, tokens.device))
        position = tokenizer.pos_embed(centres)
        # masked groups: the centre's position stays, the content is the mask token
        tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype) + position, tokens)
        _, refined = self.backbone.encoder(tokens)
        pred = rearrange(self.decoder(refined), "b g (k c) -> b g k c", c=3)
        # in the tokeniser's units (offsets x relative_scale, ~1 rather than ~0.1): the loss is not
        # a tiny number next to the weight decay and the head's init
        target = (gather(pos, neighbour_index) - centres.unsqueeze(2)) * tokenizer.relative_scale
        return {"pred": pred, "target": target, "mask": mask, "centres": centres, "points": pos}

    def loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return masked_mean(chamfer_distance(outputs["pred"], outputs["target"]), outputs["mask"])


class ByteHead(nn.Module):
    """LayerNorm + Linear to the ids, with ``context > 0`` after a 1-D convolution over ``context``
    refined tokens each side (padding read as zeros)."""

    def __init__(self, *, dim: int, vocab_size: int, context: int = 0) -> None:
        super().__init__()
        self.norm = LayerNorm(dim)
        self.mix = nn.Conv1d(dim, dim, 2 * context + 1, padding=context) if context else None
        self.out = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)
        if self.mix is not None:
            mixed = self.mix(rearrange(tokens * real.unsqueeze(-1), "b n d -> b d n"))
            tokens = tokens + F.gelu(rearrange(mixed, "b d n -> b n d"))
        return self.out(tokens)


class MaskedByteModel(nn.Module):
    """Masked byte (or token) modelling: ``mask_ratio`` of the real ids chosen, of those 80 % read
    a learned mask embedding, 10 % a random id, 10 % stay; cross-entropy on the chosen ones.
    Padding (id 0) is never chosen. ``encoder``: a :class:`~bixt.models.text.BiXTSequenceEncoder`
    (its last layer is made two-sided)."""

    def __init__(self, *, encoder: BiXTSequenceEncoder, mask_ratio: Ratio = 0.15,
                 head_context: Annotated[int, Range(min=0)] = 0) -> None:
        super().__init__()
        self.mask_ratio = check_ratio(mask_ratio)
        if not encoder.encoder.update_tokens_last:
            raise ValueError("masked byte modelling reads the refined tokens: set "
                             "model.encoder.update_tokens_last=true")
        self.backbone = encoder
        table = encoder.embed.table
        self.vocab_size = table.num_embeddings
        self.mask_token = nn.Parameter(torch.zeros(1, 1, table.embedding_dim))
        nn.init.normal_(self.mask_token)  # unit scale, as the token table (see TokenEmbedding)
        self.decoder = ByteHead(dim=encoder.dim, vocab_size=self.vocab_size, context=head_context)

    def forward(self, input_ids: torch.Tensor, *rest: Any) -> dict[str, torch.Tensor]:
        real = input_ids != PAD_ID
        generator = _generator(self, input_ids.device)
        chosen = random_mask(*input_ids.shape, self.mask_ratio, input_ids.device, generator, real=real) & real
        draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
        use_mask, use_random = chosen & (draw < 0.8), chosen & (draw >= 0.8) & (draw < 0.9)
        random_ids = torch.randint(1, self.vocab_size, input_ids.shape, device=input_ids.device, generator=generator)
        ids = torch.where(use_random, random_ids, input_ids)
        embed = self.backbone.embed
        tokens = embed(ids)
        tokens = tokens + use_mask.unsqueeze(-1) * (self.mask_token - embed.table(ids))
        token_mask = ensure_visible_token(real)
        _, refined = self.backbone.encoder(tokens, token_mask=token_mask)
        return {"logits": self.decoder(refined, real), "target": input_ids, "mask": chosen, "input": ids, "masked": use_mask}

    def loss(self, outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = outputs["mask"]
        return F.cross_entropy(outputs["logits"][mask].float(), outputs["target"][mask])
