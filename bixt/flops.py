"""Forward FLOPs and parameter counts of any bixt model, for run headers and benchmarks.

``count_flops(model, *inputs)`` counts one forward, ``count_call_flops(fn)`` everything ``fn`` runs
(a training step with its backward, say), with :class:`torch.utils.flop_counter.FlopCounterMode`:
matrix products, convolutions and attention kernels, a multiply-add counting 2; elementwise work
(norms, softmax, GELU) is not counted, as usual for model FLOPs. PyTorch has FLOP formulas for the
CUDA fused-attention kernels only; the CPU ones (forward and backward) are registered here so that a
count does not depend on the device.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["count_flops", "count_call_flops", "count_parameters", "format_count", "describe_counts",
           "describe_model"]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _extra_formulas() -> dict:
    aten = torch.ops.aten
    formulas = {"_scaled_dot_product_flash_attention_for_cpu": _cpu_sdpa_flops,
                "_scaled_dot_product_flash_attention_for_cpu_backward": _cpu_sdpa_backward_flops}
    return {getattr(aten, name): formula for name, formula in formulas.items() if hasattr(aten, name)}


def count_call_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn()`` runs, backward passes included.

    Runs with autograd recording: the counter's module tracker fails under ``torch.no_grad()`` on
    models that call a submodule more than once.
    """
    with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_extra_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    """FLOPs of one forward ``model(*inputs, **kwargs)`` in eval mode (the model's mode is restored).

    Counted with autograd recording (the counter's module tracker needs it; no backward runs), so
    cross-attention with ``attn_impl="auto"`` takes the path training takes. Divide by the batch
    size for FLOPs per sample.
    """
    was_training = model.training
    model.eval()
    try:
        return count_call_flops(lambda: model(*inputs, **kwargs))
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def format_count(value: float, unit: str = "") -> str:
    """``1234567 -> '1.23 M'`` (k, M, G, T; three significant digits)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def describe_counts(model: nn.Module, flops_per_sample: Optional[float], why_not: str = "") -> str:
    """The header line of a run: ``model``'s parameters and the forward FLOPs per sample counted for
    it (``None``: not counted, because ``why_not``)."""
    flops = (f"{format_count(flops_per_sample, 'FLOPs')} per sample forward" if flops_per_sample is not None
             else f"FLOPs: not counted ({why_not or 'no sample'})")
    return (f"{format_count(count_parameters(model))} parameters "
            f"({format_count(count_parameters(model, trainable_only=True))} trainable), {flops}")


def describe_model(model: nn.Module, *inputs: Any, **kwargs: Any) -> str:
    """One line for a run's header: parameters and forward FLOPs per sample for ``inputs``."""
    batch = next((x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0), 1)
    return describe_counts(model, count_flops(model, *inputs, **kwargs) / batch)
