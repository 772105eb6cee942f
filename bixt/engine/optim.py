"""Optimizer and LR schedule from :class:`~bixt.engine.config.OptimConfig`, via timm's factories."""
from __future__ import annotations

import inspect
import logging

import torch
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.scheduler import create_scheduler_v2
from torch import nn

from bixt.engine.config import OptimConfig

log = logging.getLogger("bixt.engine")


def scaled_lr(ocfg: OptimConfig, global_batch: int) -> float:
    """``lr`` is given for a global batch of ``lr_base_batch``; scale it to ``global_batch``.

    The official BiXT recipe quotes lr 2.5e-3 at batch 1024 and scales by the square root of the
    batch ratio (the usual rule for LAMB/Adam); ``linear`` is the usual rule for SGD.
    """
    if not ocfg.lr_base_batch:
        return ocfg.lr
    ratio = global_batch / ocfg.lr_base_batch
    if ocfg.lr_scale == "sqrt":
        return ocfg.lr * ratio ** 0.5
    if ocfg.lr_scale == "linear":
        return ocfg.lr * ratio
    raise ValueError(f"optim.lr_scale must be 'sqrt' or 'linear', got {ocfg.lr_scale!r}")


def _takes_fused(name: str) -> bool:
    """Whether the optimizer is one of torch's with a fused single-kernel step (Adam, AdamW, SGD, ...)."""
    try:
        cls = get_optimizer_class(name, bind_defaults=False)
    except (ValueError, KeyError, AssertionError):
        return False
    return isinstance(cls, type) and cls.__module__.startswith("torch.optim") and \
        "fused" in inspect.signature(cls.__init__).parameters


def build_optimizer(model: nn.Module, ocfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    kwargs = dict(ocfg.kwargs)
    if not {"fused", "foreach"} & set(kwargs) and _takes_fused(ocfg.name):
        # one kernel over all parameters instead of a Python loop per tensor; same update rule
        kwargs["fused"] = True
    if ocfg.betas is not None:
        kwargs["betas"] = tuple(ocfg.betas)
    if ocfg.eps is not None:
        kwargs["eps"] = ocfg.eps
    try:
        return create_optimizer_v2(model, opt=ocfg.name, lr=lr, weight_decay=ocfg.weight_decay,
                                   momentum=ocfg.momentum, layer_decay=ocfg.layer_decay,
                                   filter_bias_and_bn=ocfg.filter_bias_and_bn, **kwargs)
    except (AssertionError, ValueError, TypeError) as err:
        raise ValueError(f"cannot build optimizer optim.name={ocfg.name!r} with {kwargs or 'default'} "
                         f"arguments: {err}. Any timm optimizer name works (timm.optim.list_optimizers()).") from err


def build_scheduler(optimizer: torch.optim.Optimizer, ocfg: OptimConfig, epochs: int, updates_per_epoch: int):
    """A timm scheduler (or ``None`` for ``sched: none``). Drive it with ``step(epoch)`` at each
    epoch start and ``step_update(global_step)`` after each update: whichever granularity it was
    built for acts, the other call is a no-op, and both are pure functions of the position, so
    resume needs nothing beyond the position."""
    if ocfg.sched in ("none", None):
        return None
    warmup = ocfg.warmup_epochs
    if ocfg.sched_on_epochs and warmup != int(warmup):
        raise ValueError(f"optim.warmup_epochs={warmup} must be whole when optim.sched_on_epochs=true")
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=ocfg.sched, num_epochs=epochs, decay_epochs=ocfg.decay_epochs,
        decay_milestones=list(ocfg.decay_milestones), cooldown_epochs=ocfg.cooldown_epochs,
        decay_rate=ocfg.decay_rate, min_lr=ocfg.min_lr, warmup_lr=ocfg.warmup_lr,
        warmup_epochs=int(warmup) if ocfg.sched_on_epochs else warmup, warmup_prefix=ocfg.warmup_prefix,
        step_on_epochs=ocfg.sched_on_epochs, updates_per_epoch=updates_per_epoch)
    if scheduler is None:
        raise ValueError(f"unknown optim.sched={ocfg.sched!r}; use one of timm's: cosine, tanh, step, "
                         "multistep, poly, wsd, rsqrt, constant, none")
    return scheduler
