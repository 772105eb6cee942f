"""Linear / MLP / self-attention layers with a fused CPU inference path.

In inference on CPU, ``linear`` runs through oneDNN's fused linear(+bias)(+GELU) kernel, which
writes the output once instead of copying the bias, multiplying and applying GELU in separate
passes (measured on 2 cores: 6272x192 @ 192x768 + GELU, 45 ms fused vs 85 ms unfused). Training,
CUDA and ``torch.compile`` (which fuses on its own) take the plain PyTorch path; both paths give the
same values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, LayerScale
from torch import nn

_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_FUSED_DTYPES = (torch.float32, torch.bfloat16)
_fused_enabled = True


def set_fused_inference(enabled: bool) -> bool:
    """Switch the fused CPU inference path on/off (for reference runs); returns the old setting."""
    global _fused_enabled
    previous, _fused_enabled = _fused_enabled, bool(enabled)
    return previous


def _fused_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _fused_enabled
        and _MKLDNN
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def linear(x: torch.Tensor, layer: nn.Linear, activation: str = "none") -> torch.Tensor:
    """``layer(x)``, optionally followed by exact GELU (``activation="gelu"``)."""
    weight, bias = layer.weight, layer.bias
    if _fused_ok(x, weight):
        if torch.is_autocast_enabled("cpu"):  # oneDNN ops are not autocast-aware: cast as autocast would
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        if x.dtype == weight.dtype and x.dtype in _FUSED_DTYPES:
            algorithm = "none" if activation == "gelu" else ""
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], algorithm)
    out = F.linear(x, weight, bias)
    return F.gelu(out) if activation == "gelu" else out


class Linear(nn.Linear):
    """``nn.Linear`` that takes the fused inference path of :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (names as in timm's Mlp, so official weights map one to one)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(linear(x, self.fc1, "gelu"))


class SelfAttention(nn.Module):
    """Multi-head self-attention (qkv fused, head-major channels, as in timm's ViT)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block; parameter names follow timm's ViT ``Block``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        init_values: float | None = None, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads, qkv_bias)
        self.ls1 = layer_scale(dim, init_values)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = layer_scale(dim, init_values)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def LayerNorm(dim: int) -> nn.LayerNorm:  # noqa: N802  (a layer factory)
    return nn.LayerNorm(dim, eps=1e-6)


def layer_scale(dim: int, init_values: float | None) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def drop_path_or_identity(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()
