"""Opt-in eager CPU acceleration of a built model for inference: ``fast = bixt.accel.optimize(model)``.

The core (:mod:`bixt.core`) is plain PyTorch. This module turns an eval-mode model into an
inference-only copy whose linear layers multiply by weights laid out once in oneDNN's blocked
format, with the bias added inside the GEMM (``F.linear`` instead copies the bias into the output
first), and whose MLPs apply GELU in place on the first GEMM's output, in row chunks for long
inputs. It uses private torch ops, so every kernel is probed once per process
(:func:`cpu_kernel_available`); where one is missing or refuses this CPU, the copy runs the plain
ops. bf16 autocast, autograd, CUDA and ``torch.compile`` always take the plain ops (for compiled
CPU inference, ``torch.compile`` fuses on its own).

The copy is a snapshot: its weights are buffers taken when :func:`optimize` ran. After the
original model's weights change (an optimizer step, a checkpoint load, EMA), call it again. Edits
to the copy's own weights (``load_state_dict``, or in place: ``fast.head.weight.mul_(2)``) are
followed: the packed form is rebuilt when its weight no longer equals the one it was packed from.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from bixt.core.layers import MLP_CHUNK_ROWS, map_row_chunks

__all__ = ["optimize", "cpu_kernel_available", "cpu_kernels_forced_off", "probe_cpu_kernel", "CPU_KERNELS"]

CPU_KERNELS = ("fp32", "bf16")


def probe_cpu_kernel(kind: str) -> bool:
    """Run the kernel ``kind`` (oneDNN's prepacked GEMM in ``"fp32"`` or ``"bf16"``) once on a tiny
    input and check its result.

    These ops are private to torch and exist or work only on some builds and instruction sets
    (oneDNN's bf16 path needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT and refuses AVX2-only CPUs), so
    asking the op itself is the only reliable test.
    """
    try:
        with torch.no_grad():
            dtype = torch.float32 if kind == "fp32" else torch.bfloat16
            x, w, b = torch.ones(4, 8, dtype=dtype), torch.ones(8, 8, dtype=dtype), torch.ones(8, dtype=dtype)
            out = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w), b, "none", [], "")
        return bool(torch.all(out.float() == 9.0))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


# Probed once at import, so that traced and compiled code reads a constant instead of running the probe.
_kernels_probed = {kind: probe_cpu_kernel(kind) for kind in CPU_KERNELS}
_kernels_forced_off: set[str] = set()


def cpu_kernel_available(kind: str) -> bool:
    """Whether this CPU and torch build run the kernel ``kind`` (see :func:`probe_cpu_kernel`) and
    it is not forced off by :func:`cpu_kernels_forced_off`."""
    if kind not in CPU_KERNELS:
        raise ValueError(f"kind must be one of {CPU_KERNELS}, got {kind!r}")
    return kind not in _kernels_forced_off and _kernels_probed[kind]


@contextlib.contextmanager
def cpu_kernels_forced_off(*kinds: str) -> Iterator[None]:
    """Within the block, :func:`cpu_kernel_available` answers False for ``kinds``: everything runs
    as on a CPU without those kernels (``"bf16"``: as on an AVX2-only CPU)."""
    for kind in kinds:
        if kind not in CPU_KERNELS:
            raise ValueError(f"kind must be one of {CPU_KERNELS}, got {kind!r}")
    added = set(kinds) - _kernels_forced_off
    _kernels_forced_off.update(added)
    try:
        yield
    finally:
        _kernels_forced_off.difference_update(added)


def _packed_path(x: torch.Tensor) -> bool:
    """The packed fp32 kernel applies: CPU fp32 input, no autograd, no autocast, not being compiled."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and cpu_kernel_available("fp32"))


class PackedLinear(nn.Module):
    """Inference-only ``nn.Linear`` snapshot that multiplies by a oneDNN-packed weight where it can."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        # One packed copy serves every row count. Not a buffer: an opaque oneDNN tensor, rebuilt
        # from `weight` after a copy or a move (and then built by whichever thread gets there first:
        # the same tensor either way). It cannot be read back, so the weight it was packed from is
        # kept beside it: comparing the two finds any edit of `weight` (in place, through `.data`,
        # numpy or a new tensor), which no counter or pointer check does. The comparison reads the
        # weight, as the GEMM does for every row: small next to a GEMM over many rows.
        self._packed: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def _packed_weight(self) -> torch.Tensor:
        packed = self._packed
        if packed is None or not torch.equal(packed[1], self.weight):
            source = self.weight.clone()
            packed = self._packed = (torch.ops.mkldnn._reorder_linear_weight(source), source)
        return packed[0]

    def forward(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if _packed_path(x) and self.weight.device.type == "cpu" and self.weight.dtype == torch.float32:
            out = torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")
            return torch.ops.aten.gelu_(out) if gelu else out  # in place on the fresh GEMM output
        out = F.linear(x, self.weight, self.bias)
        return F.gelu(out) if gelu else out

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half(): the packed copy no longer matches
        self._packed = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):  # loads copy into `weight` in place
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):  # deepcopy / pickle: the oneDNN tensor has no storage to copy
        return {**self.__dict__, "_packed": None}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedMlp(nn.Module):
    """timm ``Mlp`` (fc1 -> exact GELU -> fc2, no dropout or norm) on :class:`PackedLinear` layers."""

    def __init__(self, mlp: Mlp) -> None:
        super().__init__()
        self.fc1, self.fc2 = PackedLinear(mlp.fc1), PackedLinear(mlp.fc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= MLP_CHUNK_ROWS * x.shape[-1] or not _packed_path(x):
            return self.fc2(self.fc1(x, gelu=True))
        return map_row_chunks(lambda rows: self.fc2(self.fc1(rows, gelu=True)), x, MLP_CHUNK_ROWS)


def _plain_gelu_mlp(module: nn.Module) -> bool:
    """A timm Mlp whose forward is exactly fc2(gelu(fc1(x))) in eval mode."""
    return (isinstance(module, Mlp) and isinstance(module.act, nn.GELU) and module.act.approximate == "none"
            and isinstance(module.norm, nn.Identity) and type(module.fc1) is nn.Linear
            and type(module.fc2) is nn.Linear)


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if _plain_gelu_mlp(child):
            setattr(module, name, PackedMlp(child))
        elif type(child) is nn.Linear:
            setattr(module, name, PackedLinear(child))
        else:
            _swap(child)


def optimize(model: nn.Module) -> nn.Module:
    """An inference-only copy of the eval-mode ``model`` with the eager CPU fast paths above.

    Numerically the same as ``model`` in fp32 (to rounding: oneDNN sums in its own order); any
    other dtype, autocast, autograd or device runs the plain ops. The original is left untouched.
    """
    if model.training:
        raise ValueError("bixt.accel.optimize is for inference: call model.eval() before optimizing")
    fast = copy.deepcopy(model)
    fast.requires_grad_(False)
    _swap(fast)
    return fast
