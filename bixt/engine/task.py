"""The contract between a task and the shared training engine.

A task (ImageNet classification, ShapeNet part segmentation, LRA retrieval) describes *what* to
compute on a batch; the engine owns *how*: devices, DDP, AMP, compile, accumulation, clipping,
EMA, schedules, checkpoints, resume, logging and progress.

Optional adapter hooks (looked up with ``getattr``; adapters without them keep working):

``train_batch_transform(batch) -> batch``
    Applied to every *training* batch after it is on the device, before ``forward`` (batch-level
    augmentation such as mixup/cutmix). Global RNGs may be used: their state is checkpointed.
``to_device(batch, device) -> batch``
    Replaces the engine's default (tensors in nested dicts/lists/tuples moved with ``.to``).
``main_metric_mode: str``
    ``"max"`` (default) or ``"min"``: whether a larger ``main_metric`` is better.
``sample_name: str``
    What a sample is called in throughput logs (``"img"`` gives ``img/s``); default ``"samples"``.
``checkpoint_extra: dict``
    Extra items written into every checkpoint, e.g. ``{"classes": [...]}`` (plain containers, so
    ``torch.load(weights_only=True)`` reads them; keys the engine writes itself are refused).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

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
