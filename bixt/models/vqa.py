"""Visual question answering: image tokens and question tokens read by one fused BiXT encoder.

``VQAModel`` tokenises the image (patch embedding + 2-D Fourier
positions) and embeds the question words, hands both to a :class:`~bixt.core.BiXTEncoder` built
with ``token_dims={"image": ..., "text": ...}`` (each stream its own width, padding mask and
modality embedding) and classifies the answer from the pooled latents. An encoder built for
``{"text": ...}`` or ``{"image": ...}`` alone gives the single-modality baselines of the same size.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bixt.core import BiXTEncoder
from bixt.tokenizers.image import ConvTokenizer, FourierPosEncoding2d, PatchTokenizer
from bixt.tokenizers.text import TokenEmbedding

STREAMS = ("image", "text")


class VQAModel(nn.Module):
    """Answer logits (B, num_answers) from ``forward(image (B, 3, H, W), question (B, T) ids,
    question_mask (B, T) bool)``; an input whose stream the encoder lacks is never read (may be None).

    Args:
        encoder: a :class:`BiXTEncoder` built with ``token_dims`` naming the streams it reads,
            ``image`` and/or ``text``, and their widths.
        head: the answer classifier on the latents (:class:`ClassificationHead`).
        vocab_size: question vocabulary (padding id 0 included).
        image_tokenizer: ``"conv"`` (3x3 stride-2 convolutions: each token sees its neighbourhood, so an
            object's shape is a token feature) or ``"patch"`` (a linear patch embedding).
        stride: the image tokens' stride in pixels (the patch size of ``"patch"``; 4, 8 or 16 for ``"conv"``).
        max_question_len: longest question (the position table).
    """

    def __init__(self, *, encoder: BiXTEncoder, head: nn.Module, vocab_size: int,
                 image_tokenizer: str = "conv", stride: int = 4,
                 max_question_len: int = 48) -> None:
        super().__init__()
        dims = encoder.token_dims or {}
        if not dims or any(s not in STREAMS for s in dims):
            raise ValueError(f"model.encoder.token_dims must name the streams the model reads, a non-empty subset of "
                             f"{list(STREAMS)} with their widths, got {dims}")
        self.streams = tuple(dims)
        if "image" in dims:
            if image_tokenizer not in ("conv", "patch"):
                raise ValueError(f"model.image_tokenizer must be 'conv' or 'patch', got {image_tokenizer!r}")
            self.patch_embed = (ConvTokenizer(dims["image"], stride=stride) if image_tokenizer == "conv"
                                else PatchTokenizer(dims["image"], patch_size=stride))
            self.pos_embed = FourierPosEncoding2d(dims["image"])
        if "text" in dims:
            self.word_embed = TokenEmbedding(vocab_size, dims["text"], max_len=max_question_len, pos_embed="learned")
        self.encoder = encoder
        self.head = head

    def forward(self, image: Optional[torch.Tensor] = None, question: Optional[torch.Tensor] = None,
                question_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens, masks = {}, {}
        if "image" in self.streams:
            patches = self.patch_embed(image)
            tokens["image"] = patches + self.pos_embed(*self.patch_embed.grid(*image.shape[-2:]))
        if "text" in self.streams:
            tokens["text"] = self.word_embed(question)
            if question_mask is not None:
                masks["text"] = question_mask
        latents, _ = self.encoder(tokens, token_masks=masks)
        return self.head(latents)
