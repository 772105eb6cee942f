"""Modality-agnostic BiXT building blocks."""
from bixt.core.attention import BiCrossAttention, CrossAttention, bidirectional_attention
from bixt.core.blocks import CROSS_ATTENTIONS, BiXTLayer, CrossBlock
from bixt.core.encoder import BiXTEncoder

__all__ = ["BiXTEncoder", "BiXTLayer", "CrossBlock", "BiCrossAttention", "CrossAttention", "bidirectional_attention",
           "CROSS_ATTENTIONS"]
