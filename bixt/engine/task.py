"""The contract between a task and the shared training engine: subclass :class:`TaskAdapter`.

A task (ImageNet classification, ShapeNet part segmentation, LRA retrieval) describes *what* to
compute on a batch; the engine owns *how*: devices, DDP, AMP, compile, accumulation, clipping,
EMA, schedules, checkpoints, resume, logging and progress.

Abstract (a subclass must define them): ``main_metric`` (a class attribute or a property),
``forward``, ``loss``, ``batch_size``, ``make_evaluator``. Optional hooks, with their defaults
here:

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

The engine accepts only subclasses (:func:`check_adapter`): an object that merely has the right
methods is refused with a message naming the base, so that the hooks' defaults live in one place.
"""
from __future__ import annotations

import abc
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


class TaskAdapter(abc.ABC):
    """What the engine needs to know about a task (see the module docstring)."""

    sample_name: str = "samples"
    main_metric_mode: str = "max"
    #: None rather than {}: a class-level dict would be one object shared by every adapter
    checkpoint_extra: Optional[Mapping[str, Any]] = None

    @property
    @abc.abstractmethod
    def main_metric(self) -> str:
        """Name of the metric (a key of ``Evaluator.compute``) that selects the ``best`` checkpoint."""

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Any) -> Any:
        """Run the model on a batch (already on the device) and return its raw outputs."""

    @abc.abstractmethod
    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        """Scalar training loss for the outputs of :meth:`forward`."""

    @abc.abstractmethod
    def batch_size(self, batch: Any) -> int:
        """Number of samples in a batch (for throughput and averaging)."""

    @abc.abstractmethod
    def make_evaluator(self) -> Evaluator:
        """A fresh evaluator for one evaluation pass."""

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return move_to_device(batch, device)

    def train_batch_transform(self, batch: Any) -> Any:
        return batch


def check_adapter(adapter: Any) -> TaskAdapter:
    """``adapter`` itself if it is a :class:`TaskAdapter` with a valid ``main_metric_mode``."""
    if not isinstance(adapter, TaskAdapter):
        raise TypeError(f"{type(adapter).__name__} is not a bixt.engine.TaskAdapter: subclass it (class "
                        f"{type(adapter).__name__}(bixt.engine.TaskAdapter)), which holds the defaults of the optional "
                        "hooks and checks that main_metric, forward, loss, batch_size and make_evaluator are defined")
    if adapter.main_metric_mode not in ("max", "min"):
        raise ValueError(f"adapter.main_metric_mode must be 'max' or 'min', got {adapter.main_metric_mode!r}")
    return adapter
