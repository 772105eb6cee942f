"""The task adapter every ``(inputs, label)`` classification task shares (images, point clouds,
token sequences): ``forward`` = ``model(inputs)``, the loss from :func:`build_loss` (timm's CE /
soft-target CE / BCE), optional timm Mixup/CutMix as ``train_batch_transform``, the evaluator of
:mod:`bixt.metrics.classification`, and the class names (``classes``) stored in every checkpoint
as ``ckpt["classes"]``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from bixt.engine.task import TaskAdapter
from bixt.metrics.classification import TopKEvaluator


def build_loss(name: str = "ce", smoothing: float = 0.0, mixup: bool = False,
               bce_target_thresh: Optional[float] = None) -> nn.Module:
    """``ce`` (label smoothing optional; soft targets when mixing) or ``bce`` (timm's, as in DeiT III/BiXT)."""
    if name == "bce":
        return BinaryCrossEntropy(smoothing=0.0 if mixup else smoothing, target_threshold=bce_target_thresh)
    if name == "ce":
        if mixup:  # Mixup already folds the smoothing into its soft targets
            return SoftTargetCrossEntropy()
        return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()
    raise ValueError(f"loss.name must be 'ce' or 'bce', got {name!r}")


class ClassificationAdapter(TaskAdapter):
    """Task adapter for batches ``(inputs, labels)`` and models returning logits."""

    main_metric = "top1"

    def __init__(self, num_classes: int, loss: str = "ce", smoothing: float = 0.0,
                 mixup: Optional[dict[str, Any]] = None, bce_target_thresh: Optional[float] = None,
                 sample_name: str = "samples", classes: Optional[Sequence[str]] = None,
                 per_class_metrics: bool = False):
        self.num_classes = num_classes
        self.sample_name = sample_name
        # the class names by label travel in every checkpoint, so that evaluating it later can
        # label the data the way the model was trained (folders missing a class shift nothing)
        self.classes = [str(c) for c in classes] if classes else None
        self.per_class_metrics = per_class_metrics
        self.checkpoint_extra = {"classes": self.classes} if classes else {}
        # unset alphas mean off here (timm's Mixup would default mixup_alpha to 1.0)
        mixup = {"mixup_alpha": 0.0, "label_smoothing": smoothing, **(mixup or {})}
        active = mixup["mixup_alpha"] > 0 or mixup.get("cutmix_alpha", 0) > 0 or mixup.get("cutmix_minmax")
        self.mixup = Mixup(num_classes=num_classes, **mixup) if active else None
        self.criterion = build_loss(loss, smoothing, mixup=self.mixup is not None, bce_target_thresh=bce_target_thresh)

    def forward(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return model(batch[0])

    def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.criterion(outputs, batch[1])

    def batch_size(self, batch: Any) -> int:
        return int(batch[0].shape[0])

    def make_evaluator(self) -> TopKEvaluator:
        return TopKEvaluator(self.num_classes, classes=self.classes, per_class_metrics=self.per_class_metrics)

    def train_batch_transform(self, batch: Any) -> Any:
        if self.mixup is None:
            return batch
        inputs, targets = batch[0], batch[1]
        if inputs.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {inputs.shape[0]}; change trainer.batch_size")
        inputs, targets = self.mixup(inputs, targets)
        return (inputs, targets, *batch[2:])
