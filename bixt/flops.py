"""Forward FLOPs and parameter counts of any bixt model, for run headers and benchmarks.

``count_flops(model, *inputs)`` counts with :class:`torch.utils.flop_counter.FlopCounterMode`: matrix
products, convolutions and attention kernels, a multiply-add counting 2; elementwise work (norms,
softmax, GELU) is not counted, as usual for model FLOPs. PyTorch has FLOP formulas for the CUDA
fused-attention kernels only; the CPU ones are registered here so that a count does not depend on
the device.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

__all__ = ["count_flops", "count_parameters", "format_count", "describe_model"]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _extra_formulas() -> dict:
    aten = torch.ops.aten
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {} if op is None else {op: _cpu_sdpa_flops}


def count_flops(model: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of one forward ``model(*inputs, **kwargs)`` in eval mode (the model's mode is restored).

    Counted with autograd recording (the counter's module tracker needs it; no backward runs), so
    cross-attention with ``attn_impl="auto"`` takes the path training takes. Divide by the batch
    size for FLOPs per sample.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
            model(*inputs, **kwargs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def format_count(value: float, unit: str = "") -> str:
    """``1234567 -> '1.23 M'`` (k, M, G, T; three significant digits)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def describe_model(model: nn.Module, *inputs: Any, **kwargs: Any) -> str:
    """One line for a run's header: parameters and forward FLOPs per sample for ``inputs``."""
    batch = next((x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0), 1)
    flops = count_flops(model, *inputs, **kwargs) / batch
    return (f"{format_count(count_parameters(model))} parameters "
            f"({format_count(count_parameters(model, trainable_only=True))} trainable), "
            f"{format_count(flops, 'FLOPs')} per sample forward")
