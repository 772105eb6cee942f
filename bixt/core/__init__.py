"""Modality-agnostic BiXT building blocks."""
from bixt.core.attention import BiCrossAttention, bidirectional_attention
from bixt.core.blocks import BiXTLayer, CrossBlock
from bixt.core.encoder import BiXTEncoder

__all__ = ["BiXTEncoder", "BiXTLayer", "CrossBlock", "BiCrossAttention", "bidirectional_attention"]
