"""Linear / MLP / self-attention layers with a fast CPU inference path.

In inference on CPU (no autograd), :func:`linear` multiplies by weights re-laid-out once for the
GEMM kernel (cached per layer until the weight changes) and finishes GELU and the residual add in
place on its fresh output, so no extra activation-sized buffers are allocated:

- fp32: MKL's packed GEMM, the same values as ``F.linear`` bit for bit;
- bf16 autocast: oneDNN's bf16 GEMM (AMX where present) with GELU fused as a post-op, on bf16
  activations (see :func:`bf16_inference`).

Training, CUDA and ``torch.compile`` (which fuses on its own) take the plain PyTorch path for
the layers; the bf16 residual streams apply to compiled inference too. :func:`set_fused_inference`
switches all of it off for reference runs.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import DropPath, LayerScale, register_notrace_module
from torch import nn

_fused_enabled = True
MLP_CHUNK_ROWS = 8192  # inference row-chunk bound for MLPs (see Mlp.forward)


def set_fused_inference(enabled: bool) -> bool:
    """Switch the fused CPU inference path on/off (for reference runs); returns the old setting."""
    global _fused_enabled
    previous, _fused_enabled = _fused_enabled, bool(enabled)
    return previous


CPU_KERNELS = ("fp32", "bf16")
_kernels_forced_off: set[str] = set()


def cpu_kernel_available(kind: str) -> bool:
    """Whether this CPU and torch build run the eager fast-path kernel ``kind`` (``"fp32"``: MKL's
    packed GEMM, ``"bf16"``: oneDNN's bf16 GEMM with post-ops), and it is not forced off.

    A missing or refusing kernel leaves that dtype on the plain ``F.linear`` path (plain autocast
    for bf16).
    """
    if kind not in CPU_KERNELS:
        raise ValueError(f"kind must be one of {CPU_KERNELS}, got {kind!r}")
    return kind not in _kernels_forced_off and _kernels_probed[kind]


@contextlib.contextmanager
def cpu_kernels_forced_off(*kinds: str) -> Iterator[None]:
    """Within the block, :func:`cpu_kernel_available` answers False for ``kinds``: runs the
    fallback as on a CPU without those kernels (e.g. ``"bf16"`` on an AVX2-only CPU)."""
    for kind in kinds:
        if kind not in CPU_KERNELS:
            raise ValueError(f"kind must be one of {CPU_KERNELS}, got {kind!r}")
    added = set(kinds) - _kernels_forced_off
    _kernels_forced_off.update(added)
    try:
        yield
    finally:
        _kernels_forced_off.difference_update(added)


def probe_cpu_kernel(kind: str) -> bool:
    """Run the kernel ``kind`` once on a tiny input and check its result.

    These ops are private to torch and exist or work only on some builds and instruction sets
    (oneDNN's bf16 path needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT and refuses AVX2-only CPUs), so
    asking the op itself is the only reliable test.
    """
    try:
        with torch.no_grad():
            x, w = torch.ones(4, 8), torch.ones(8, 8)
            if kind == "fp32":
                packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 4)
                out = torch.ops.mkl._mkl_linear(x, packed, w, None, 4)
            else:
                x, w = x.to(torch.bfloat16), w.to(torch.bfloat16)
                packed = torch.ops.mkldnn._reorder_linear_weight(w, 4)
                out = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        return bool(torch.all(out.float() == 8.0))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _cpu_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Fast path on, CPU, and no autograd through this op."""
    return (_fused_enabled and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def _cpu_bf16_autocast() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def _fused_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The eager kernels of :func:`linear` may apply (torch.compile fuses on its own); which one
    runs also depends on :func:`cpu_kernel_available` for the dtype."""
    return not torch.compiler.is_compiling() and _cpu_inference(x, weight)


def bf16_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU inference under bf16 autocast with the fast path on (eager or compiled) on a CPU with
    native bf16 GEMMs: activations may stay bf16 end to end. Elsewhere bf16 runs as plain autocast."""
    return _cpu_inference(x, weight) and _cpu_bf16_autocast() and cpu_kernel_available("bf16")


def tensor_versions(*tensors: Optional[torch.Tensor]) -> tuple:
    """Storage and version counter of each tensor: changes on ``.to()``, ``load_state_dict`` and
    in-place ops (not on ``.data`` edits or fused optimizer kernels, hence the extra invalidation
    on mode switches and training forwards in the caches that key on it)."""
    return tuple(None if t is None else (t.data_ptr(), t._version) for t in tensors)


# Probed once at import, so that traced and compiled code reads a constant instead of running the probe.
_kernels_probed = {kind: probe_cpu_kernel(kind) for kind in CPU_KERNELS}


# Outside the modules, so deepcopy (EMA), pickling and state dicts never see the packed tensors.
_packed_weights: "weakref.WeakKeyDictionary[nn.Linear, dict]" = weakref.WeakKeyDictionary()
_MAX_PACKED_SHAPES = 4  # fp32 row counts per layer, e.g. eval batch, last partial batch, chunks


def _packed(layer: nn.Linear, dtype: torch.dtype, rows: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(packed weight, bias)`` of ``layer`` for the CPU GEMM kernel of ``dtype``, cached.

    MKL packs fp32 weights for one number of input ``rows``, so fp32 copies are kept per row count
    (a few per layer); oneDNN's bf16 layout serves any row count. A copy is rebuilt when the
    weight's storage or version counter changes (``.to()``, ``load_state_dict``, in-place ops),
    after any forward with autograd or in train mode, and on ``train()``/``eval()``. Weights changed
    in eval mode behind autograd's back (``.data``, fused optimizer kernels) without any of those
    need ``model.eval()`` again.
    """
    weight, bias = layer.weight, layer.bias
    version = tensor_versions(weight, bias)
    shape_key = (dtype, rows if dtype == torch.float32 else None)
    entries = _packed_weights.setdefault(layer, {})
    cached = entries.get(shape_key)
    if cached is None or cached[0] != version:
        if cached is None and len(entries) >= _MAX_PACKED_SHAPES:
            entries.pop(next(iter(entries)))  # the oldest shape
        with torch.no_grad():
            if dtype == torch.float32:
                packed = (torch.ops.mkl._mkl_reorder_linear_weight(weight, rows), bias)
            else:
                w16 = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), rows)
                packed = (w16, None if bias is None else bias.to(dtype))
        cached = entries[shape_key] = (version, packed)
    return cached[1]


def linear(x: torch.Tensor, layer: nn.Linear, activation: str = "none",
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``layer(x)``, then exact GELU (``activation="gelu"``), then ``+ residual`` if given."""
    weight, bias = layer.weight, layer.bias
    if _fused_ok(x, weight) and not layer.training and weight.dtype == torch.float32:
        if _cpu_bf16_autocast():
            if cpu_kernel_available("bf16") and x.dtype in (torch.float32, torch.bfloat16):
                x = x.to(torch.bfloat16)
                w16, b16 = _packed(layer, torch.bfloat16, x.numel() // x.shape[-1])
                # GELU as a oneDNN post-op: fused beats a separate bf16 pass in bf16 (not in fp32)
                gelu = activation == "gelu"
                out = torch.ops.mkldnn._linear_pointwise(x, w16, b16, "gelu" if gelu else "none", [],
                                                         "none" if gelu else "")
                if residual is None:
                    return out
                return out.add_(residual) if residual.dtype == out.dtype else residual + out
        elif x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu") and cpu_kernel_available("fp32"):
            rows = x.numel() // x.shape[-1]
            out = torch.ops.mkl._mkl_linear(x, _packed(layer, torch.float32, rows)[0], weight, bias, rows)
            if activation == "gelu":
                out = torch.ops.aten.gelu_(out)
            return out if residual is None else out.add_(residual)
    if not torch.compiler.is_compiling():
        # A forward with autograd (or in train mode) may precede weight updates that do not bump
        # the version counter (fused optimizers, ``.data``): drop the packed copy to be safe.
        _packed_weights.pop(layer, None)
    out = F.linear(x, weight, bias)
    if activation == "gelu":
        out = F.gelu(out)
    return out if residual is None else residual + out


class Linear(nn.Linear):
    """``nn.Linear`` that takes the fused inference path of :func:`linear`."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return linear(x, self, residual=residual)

    def train(self, mode: bool = True) -> "Linear":
        _packed_weights.pop(self, None)  # a mode switch brackets every train/eval phase: repack after it
        return super().train(mode)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 (names as in timm's Mlp, so official weights map one to one)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if rows <= MLP_CHUNK_ROWS or self.training or not _fused_ok(x, self.fc1.weight):
            return linear(linear(x, self.fc1, "gelu"), self.fc2, residual=residual)
        # Long inputs in inference: equal row chunks bound the 4x-wide hidden activation (12544
        # tokens: 2 chunks, whole forward ~8 % faster); equal sizes share one packed weight.
        size = -(-rows // -(-rows // MLP_CHUNK_ROWS))
        x2d, r2d = x.reshape(rows, -1), None if residual is None else residual.reshape(rows, -1)
        out = torch.cat([
            linear(linear(x2d[i:i + size], self.fc1, "gelu"), self.fc2,
                   residual=None if r2d is None else r2d[i:i + size])
            for i in range(0, rows, size)
        ])
        return out.view(*x.shape[:-1], -1)


class SelfAttention(nn.Module):
    """Multi-head self-attention (qkv fused, head-major channels, as in timm's ViT)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"), residual)


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
        x = add_residual(x, self.attn, self.norm1(x), self.ls1, self.drop_path)
        return add_residual(x, self.mlp, self.norm2(x), self.ls2, self.drop_path)


@register_notrace_module  # a leaf for torch.fx: forward branches on the input's dtype
class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (eps 1e-6) that keeps bf16 activations bf16 under CPU autocast in eval mode.

    Autocast runs layer norm in fp32 and returns fp32; for a bf16 residual stream that means a cast
    before and after every norm. PyTorch's CPU kernel normalises bf16 input with fp32 statistics and
    fp32 weights and writes bf16 directly.
    """

    def __init__(self, dim: int, **kwargs) -> None:  # kwargs: timm's norm_layer passes device / dtype
        super().__init__(dim, eps=1e-6, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16 and not self.training and x.device.type == "cpu" and _cpu_bf16_autocast():
            with torch.autocast("cpu", enabled=False):
                return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return super().forward(x)


def layer_scale(dim: int, init_values: float | None) -> nn.Module:
    return LayerScale(dim, init_values) if init_values else nn.Identity()


def plain_residual(scale: nn.Module, drop_path: nn.Module) -> bool:
    """Whether ``x + drop_path(scale(f(x)))`` is just ``x + f(x)`` now, so the add can go into f's last GEMM."""
    return isinstance(scale, nn.Identity) and (isinstance(drop_path, nn.Identity) or not drop_path.training)


def add_residual(x: torch.Tensor, branch: nn.Module, branch_input: torch.Tensor, scale: nn.Module,
                 drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(scale(branch(branch_input)))``; the add runs inside the branch's last GEMM
    (``residual=``) when scale and drop path are inactive."""
    if plain_residual(scale, drop_path):
        return branch(branch_input, residual=x)
    return x + drop_path(scale(branch(branch_input)))


def drop_path_or_identity(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0.0 else nn.Identity()
