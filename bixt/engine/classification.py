"""Ready-made adapter and evaluator for ``(inputs, label)`` classification tasks.

The engine core stays task-agnostic; this module is an optional building block that any
classification task may reuse (ImageNet uses it; so can LRA retrieval, a 2-class problem).

* :class:`TopKEvaluator`: top-1 / top-k accuracy (in %) and cross-entropy over an evaluation pass.
* :class:`ClassificationAdapter`: ``forward`` = ``model(inputs)``, the loss from :func:`build_loss`
  (timm's CE / soft-target CE / BCE), optional timm Mixup/CutMix as ``train_batch_transform``, and
  the class names (``classes``) stored in every checkpoint as ``ckpt["classes"]``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn


class TopKEvaluator:
    """Accumulates correct-in-top-k counts and the summed cross-entropy; metrics ``top1``,
    ``top{k}`` for each k in ``topk`` (k < num_classes only) and ``loss``."""

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5)):
        self.topk = tuple(k for k in topk if k == 1 or k < num_classes)
        self.correct = torch.zeros(len(self.topk), dtype=torch.float64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    def update(self, outputs: torch.Tensor, batch: Any) -> None:
        logits, targets = outputs.float(), batch[1]
        if self.correct.device != logits.device:  # accumulate where the logits are: no sync per batch
            self.correct, self.loss_sum, self.count = (t.to(logits.device) for t in (self.correct, self.loss_sum, self.count))
        top = logits.topk(max(self.topk), dim=-1).indices  # (B, kmax)
        hits = top == targets[:, None]
        self.correct += torch.stack([hits[:, :k].any(dim=-1).sum() for k in self.topk])
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        self.count += targets.numel()

    def state(self) -> dict[str, torch.Tensor]:
        return {"correct": self.correct, "loss_sum": self.loss_sum, "count": self.count}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(state["count"]), 1.0)
        out = {f"top{k}": 100.0 * float(c) / n for k, c in zip(self.topk, state["correct"])}
        out["loss"] = float(state["loss_sum"]) / n
        return out


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


class ClassificationAdapter:
    """Task adapter for batches ``(inputs, labels)`` and models returning logits."""

    main_metric = "top1"
    main_metric_mode = "max"

    def __init__(self, num_classes: int, loss: str = "ce", smoothing: float = 0.0,
                 mixup: Optional[dict[str, Any]] = None, bce_target_thresh: Optional[float] = None,
                 sample_name: str = "samples", classes: Optional[Sequence[str]] = None):
        self.num_classes = num_classes
        self.sample_name = sample_name
        # the class names by label travel in every checkpoint, so that evaluating it later can
        # label the data the way the model was trained (folders missing a class shift nothing)
        self.checkpoint_extra = {"classes": [str(c) for c in classes]} if classes else {}
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
        return TopKEvaluator(self.num_classes)

    def train_batch_transform(self, batch: Any) -> Any:
        if self.mixup is None:
            return batch
        inputs, targets = batch[0], batch[1]
        if inputs.shape[0] % 2:
            raise ValueError(f"mixup/cutmix needs an even batch size, got {inputs.shape[0]}; change trainer.batch_size")
        inputs, targets = self.mixup(inputs, targets)
        return (inputs, targets, *batch[2:])
