"""The contract between a task and the shared training engine.

A task (ImageNet classification, ShapeNet part segmentation, LRA retrieval) describes *what* to
compute on a batch; the engine owns *how*: devices, DDP, AMP, compile, accumulation, clipping,
EMA, schedules, checkpoints, resume, logging and progress.

Required (:class:`TaskAdapter`): ``main_metric``, ``forward``, ``loss``, ``batch_size``,
``make_evaluator``. Optional hooks, with their defaults in :class:`TaskAdapterBase` (the bixt
adapters subclass it and override what they need):

``train_batch_transform(batch) -> batch``
    Applied to every *training* batch after it is on the device, before ``forward`` (batch-level
    augmentation such as mixup/cutmix); default: the batch unchanged. Global RNGs may be used:
    their state is checkpointed.
``to_device(batch, device) -> batch``
    Default :func:`move_to_device` (tensors in nested dicts/lists/tuples moved with ``.to``).
``main_metric_mode: str``
    ``"max"`` (default) or ``"min"``: whether a larger ``main_metric`` is better.
``sample_name: str``
    What a sample is called in throughput logs (``"img"`` gives ``img/s``); default ``"samples"``.
``checkpoint_extra: dict | None``
    Extra items written into every checkpoint, e.g. ``{"classes": [...]}`` (plain containers, so
    ``torch.load(weights_only=True)`` reads them; keys the engine writes itself are refused);
    default ``None``, nothing extra.

An adapter that does not subclass :class:`TaskAdapterBase` (duck-typed) works too: the engine
passes every adapter through :func:`as_task_adapter` once, which fills in the defaults of the
hooks it lacks.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Evaluator(Protocol):
    """Accumulates predictions over an evaluation pass; the engine reduces across ranks."""

    def update(self, outputs: Any, batch: Any) -> None: ...

    def state(self) -> dict[str, torch.Tensor]:
        """Sufficient statistics as tensors (summed across DDP ranks by the engine)."""
        ...

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Final metrics from the (reduced) statistics."""
        ...


@runtime_checkable
class TaskAdapter(Protocol):
    """What the engine needs to know about a task."""

    #: name of the metric (a key of ``Evaluator.compute``) that selects the ``best`` checkpoint
    main_metric: str

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Run the model on a batch (already on the device) and return its raw outputs."""
        ...

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """Scalar training loss for the outputs of :meth:`forward`."""
        ...

    def batch_size(self, batch: Any) -> int:
        """Number of samples in a batch (for throughput and averaging)."""
        ...

    def make_evaluator(self) -> Evaluator: ...


_REQUIRED = ("main_metric", "forward", "loss", "batch_size", "make_evaluator")
_OPTIONAL_HOOKS = ("train_batch_transform", "to_device", "main_metric_mode", "sample_name", "checkpoint_extra")


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors inside (nested) dicts, lists, tuples and namedtuples moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()}) if isinstance(batch, dict) \
            else {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


class TaskAdapterBase:
    """The defaults of the optional adapter hooks (see the module docstring); subclasses add the
    required members of :class:`TaskAdapter` and override hooks as needed."""

    sample_name: str = "samples"
    main_metric_mode: str = "max"
    #: None rather than {}: a class-level dict would be one object shared by every adapter
    checkpoint_extra: Optional[Mapping[str, Any]] = None

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return move_to_device(batch, device)

    def train_batch_transform(self, batch: Any) -> Any:
        return batch


class _DuckTypedAdapter(TaskAdapterBase):
    """A third-party adapter without the base: its own members, the base's defaults for the hooks
    it lacks. Attributes are read once, when the engine starts."""

    def __init__(self, adapter: Any) -> None:
        self.wrapped = adapter
        for name in _REQUIRED + _OPTIONAL_HOOKS:
            if hasattr(adapter, name):
                setattr(self, name, getattr(adapter, name))


def as_task_adapter(adapter: Any) -> TaskAdapterBase:
    """``adapter`` itself when it subclasses :class:`TaskAdapterBase`, else a wrapper with the
    defaults of the hooks it lacks; a missing required member or a bad hook value fails here."""
    missing = [name for name in _REQUIRED if not hasattr(adapter, name)]
    if missing:
        raise TypeError(f"{type(adapter).__name__} is not a task adapter: it lacks {missing} (see bixt.engine.task)")
    adapted = adapter if isinstance(adapter, TaskAdapterBase) else _DuckTypedAdapter(adapter)
    if adapted.main_metric_mode not in ("max", "min"):
        raise ValueError(f"adapter.main_metric_mode must be 'max' or 'min', got {adapted.main_metric_mode!r}")
    return adapted
