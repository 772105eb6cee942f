"""Image tokenisers: patch / conv embeddings plus fixed 2-D Fourier positional encodings."""
from __future__ import annotations

import math
from typing import Optional

import torch
from einops import rearrange
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

# stride name -> (stride, padding) for a 16x16 kernel (p16, p16s8, p16s4)
PATCH_STRIDES = (4, 8, 16)  # the published 16x16 variants (padding (16 - stride) / 2 keeps the grid at H / stride)


def fourier_features_2d(
    height: int, width: int, num_freqs: int = 32, temperature: float = 10000.0, device=None
) -> torch.Tensor:
    """Fixed sine/cosine features of normalised grid coordinates, shape (2 * num_freqs, H, W).

    Coordinates run 1..H (1..W), are divided by their maximum (+1e-6) and scaled to 2*pi; channel
    ``i`` uses frequency ``temperature ** (2 * (i // 2) / num_freqs)``, sine on even and cosine on
    odd channels; y-features come first, then x-features.
    """
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1] + eps) * scale
    x = x / (x[-1] + eps) * scale
    idx = torch.arange(num_freqs, dtype=torch.float32, device=device)
    freqs = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / num_freqs)

    def encode(coords: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, num_freqs)
        angles = coords[:, None] / freqs
        return torch.where(idx.long() % 2 == 0, angles.sin(), angles.cos())

    pos_y = encode(y)[:, None, :].expand(height, width, num_freqs)
    pos_x = encode(x)[None, :, :].expand(height, width, num_freqs)
    return rearrange(torch.cat([pos_y, pos_x], dim=-1), "h w c -> c h w").contiguous()


@register_notrace_module  # a leaf for torch.fx: the grid check is Python logic on the grid size
class FourierPosEncoding2d(nn.Module):
    """Fourier features projected to ``dim`` by a 1x1 conv (a linear map per position).

    With a fixed ``grid_size`` the features are computed once; otherwise (``grid_size=None``) they
    are recomputed whenever the input grid changes, so any resolution works. The projection runs on
    every call: it is a (2 * num_freqs) x dim product per position, and keeping no cache of its
    output means weight edits of any kind (optimizer steps, ``.data`` copies, EMA) always show.
    """

    def __init__(self, dim: int, grid_size: Optional[tuple[int, int]] = None, num_freqs: int = 32) -> None:
        super().__init__()
        self.num_freqs = num_freqs
        self.grid_size = tuple(grid_size) if grid_size is not None else None
        self.proj = nn.Conv2d(2 * num_freqs, dim, kernel_size=1)
        # Derived from the grid alone, so it is never saved in checkpoints.
        features = fourier_features_2d(*grid_size, num_freqs) if grid_size is not None else torch.empty(0)
        self.register_buffer("features", features, persistent=False)

    def _features(self, height: int, width: int, device) -> torch.Tensor:
        if self.features.shape[-2:] != (height, width):
            if self.grid_size is not None:
                raise ValueError(
                    f"token grid {(height, width)} does not match the fixed grid {self.grid_size} of this model; "
                    "feed the model's input size or build it with dynamic_img_size=True"
                )
            self.features = fourier_features_2d(height, width, self.num_freqs, device=device)
        return self.features

    def forward(self, height: int, width: int) -> torch.Tensor:
        """Positional encoding for a (height, width) token grid, shape (1, H*W, dim)."""
        weight = self.proj.weight
        features = self._features(height, width, weight.device).to(weight.dtype)
        pos = torch.einsum("chw,dc->hwd", features, weight.flatten(1)) + self.proj.bias
        return rearrange(pos, "h w d -> 1 (h w) d")


def _check_image(x: torch.Tensor, in_chans: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected images of shape (batch, {in_chans}, height, width), got {tuple(x.shape)}")


def token_grid(height: int, width: int, stride: int) -> tuple[int, int]:
    """The (rows, columns) of tokens a tokeniser of ``stride`` makes from a height x width image."""
    if height % stride or width % stride:
        raise ValueError(
            f"image size {(height, width)} must be divisible by the token stride {stride}; resize or pad the input"
        )
    return height // stride, width // stride


@register_notrace_function  # reads the input's size: under torch.fx it runs on the real tensor
def image_token_grid(images: torch.Tensor, stride: int,
                     fixed_size: Optional[tuple[int, int]] = None) -> tuple[int, int]:
    """:func:`token_grid` of ``images`` (B, C, H, W); a model made for one ``fixed_size`` refuses others."""
    if fixed_size is not None and tuple(images.shape[-2:]) != tuple(fixed_size):
        raise ValueError(
            f"this model takes {fixed_size[0]}x{fixed_size[1]} images, got {images.shape[-2]}x{images.shape[-1]}; "
            "resize the input or create the model with img_size=... or dynamic_img_size=True"
        )
    return token_grid(images.shape[-2], images.shape[-1], stride)


@register_notrace_module  # leaves for torch.fx: input checks and einops reshapes
class PatchTokenizer(nn.Module):
    """16x16 convolutional patch embedding with stride 16, 8 or 4 (p16 / p16s8 / p16s4)."""

    def __init__(self, dim: int, patch_size: int = 16, stride: Optional[int] = None, in_chans: int = 3) -> None:
        super().__init__()
        stride = stride or patch_size
        if patch_size == 16 and stride not in PATCH_STRIDES:
            raise ValueError(f"stride must be one of {sorted(PATCH_STRIDES)} for 16x16 patches, got {stride}")
        if stride > patch_size or (patch_size - stride) % 2:
            raise ValueError(f"patch_size - stride must be even and >= 0 (symmetric padding), got patch_size="
                             f"{patch_size}, stride={stride}")
        self.in_chans = in_chans
        self.stride = stride
        self.padding = (patch_size - stride) // 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=stride, padding=self.padding)
        # Channels-last pays when the token map outweighs the image (stride 4: 12x the values);
        # at stride 16 the transposing copy of the image costs more than it saves.
        self.use_channels_last = dim > in_chans * stride * stride

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return token_grid(height, width, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_chans)
        self.grid(*x.shape[-2:])
        tokens = rearrange(self.proj(channels_last(x) if self.use_channels_last else x), "b d h w -> b (h w) d")
        # One copy here (none after a channels-last conv): the residual stream would otherwise keep
        # the conv's strided layout through every add, and each layer norm would copy it again.
        return tokens.contiguous()


def channels_last(images: torch.Tensor) -> torch.Tensor:
    # A channels-last conv output makes the (b, h*w, d) token view contiguous without a copy.
    return images.contiguous(memory_format=torch.channels_last)


@register_notrace_module
class ConvTokenizer(nn.Module):
    """Stack of 3x3 stride-2 conv + BatchNorm stages with GELU between them (stride 4, 8 or 16).

    Channels grow to ``dim`` by doubling: for stride 16, dim/8 -> dim/4 -> dim/2 -> dim.
    """

    def __init__(self, dim: int, stride: int = 16, in_chans: int = 3) -> None:
        super().__init__()
        stages = {4: 2, 8: 3, 16: 4}.get(stride)
        if stages is None:
            raise ValueError(f"conv tokeniser stride must be 4, 8 or 16, got {stride}")
        self.in_chans = in_chans
        self.stride = stride
        widths = [in_chans] + [dim // 2 ** (stages - 1 - i) for i in range(stages)]
        layers: list[nn.Module] = []
        for i in range(stages):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
            ))
        self.proj = nn.Sequential(*layers)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return token_grid(height, width, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, self.in_chans)
        self.grid(*x.shape[-2:])
        return rearrange(self.proj(channels_last(x)), "b d h w -> b (h w) d").contiguous()
