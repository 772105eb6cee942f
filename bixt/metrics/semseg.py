"""Semantic-segmentation metrics (ADE20K protocol): a confusion matrix over the split, then IoU.

Pixels labelled ``ignore_index`` (255) are not scored. Per class c, with the confusion matrix M
(rows: ground truth, columns: prediction): IoU = M[c, c] / (row c + column c - M[c, c]) and
accuracy = M[c, c] / row c. mIoU and mean accuracy average over the classes present in the
ground truth of the split; pixel accuracy is trace / total.

Label values outside [0, num_classes) other than ``ignore_index`` cannot be checked per batch on
an accelerator without a host sync: the data layer validates labels. Here they are counted in a
separate bin, no sync needed: :func:`confusion_matrix` raises at once for CPU tensors, and
:class:`SemSegEvaluator` raises in ``compute``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from bixt.metrics.tables import per_class_table

__all__ = ["confusion_matrix", "segmentation_metrics", "SemSegEvaluator", "format_class_table"]


def _confusion_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                      ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C) counts and the number of scored pixels with a label or prediction outside [0, C).

    Fixed-size outputs on the inputs' device, no data-dependent shapes, so no host sync."""
    if pred.shape != target.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} and labels {tuple(target.shape)} differ in shape; "
                         "upsample the logits to the label size before the argmax")
    c = num_classes
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    scored = target != ignore_index
    in_range = (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
    # Bin c*c: ignored pixels; bin c*c + 1: out-of-range values. Both dropped from the matrix.
    index = torch.where(scored & in_range, target * c + pred, torch.where(scored, c * c + 1, c * c))
    counts = torch.zeros(c * c + 2, dtype=torch.long, device=pred.device)
    counts.index_add_(0, index, torch.ones_like(index))
    return counts[: c * c].view(c, c), counts[c * c + 1]


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, columns = prediction.

    ``pred`` and ``target`` hold class indices of the same shape (any, e.g. (B, H, W)); computed on
    their device without a host sync. Out-of-range labels: an error for CPU tensors; on an
    accelerator they are left out silently (checking costs a sync; the data layer validates).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    matrix, invalid = _confusion_counts(pred, target, num_classes, ignore_index)
    if matrix.device.type == "cpu" and int(invalid):
        _raise_invalid(int(invalid), num_classes, ignore_index, target)
    return matrix


def _raise_invalid(count: int, num_classes: int, ignore_index: int, target: Optional[torch.Tensor] = None) -> None:
    found = ""
    if target is not None:
        t = target.reshape(-1).long()
        bad = t[(t != ignore_index) & ((t < 0) | (t >= num_classes))]
        if bad.numel():
            found = f" (label values such as {sorted(set(bad[:1000].tolist()))[:8]})"
    raise ValueError(
        f"{count} pixels have a label or prediction outside [0, {num_classes}) that is not ignore_index={ignore_index}"
        f"{found}; map unlabelled pixels to {ignore_index} (ADE20K: labels 1..150 -> 0..149, 0 -> 255) or fix "
        "num_classes")


def segmentation_metrics(confusion: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> dict[str, float]:
    """``miou``, ``mean_acc``, ``pixel_acc`` and per-class ``iou/<name>``, ``acc/<name>`` (fractions).

    Classes absent from the ground truth (row sum 0) are left out of the means and get no
    per-class entries; their wrong predictions still lower the IoU of the classes they hit.
    """
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"expected a square (C, C) confusion matrix, got shape {tuple(confusion.shape)}")
    num_classes = confusion.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    m = confusion.detach().double().cpu()
    hits, truth, predicted = m.diagonal(), m.sum(dim=1), m.sum(dim=0)
    union = truth + predicted - hits
    # The standard ADE20K protocol averages over classes present in the ground truth; a class
    # only predicted (union > 0, no truth) would add an IoU of 0 that no label could have avoided.
    present = truth > 0
    iou = hits / union.clamp_min(1)
    acc = hits / truth.clamp_min(1)
    total = m.sum()
    metrics = {
        "miou": float(iou[present].mean()) if bool(present.any()) else 0.0,
        "mean_acc": float(acc[present].mean()) if bool(present.any()) else 0.0,
        "pixel_acc": float(hits.sum() / total) if total > 0 else 0.0,
    }
    for i, name in enumerate(names):
        if present[i]:
            metrics[f"iou/{name}"] = float(iou[i])
            metrics[f"acc/{name}"] = float(acc[i])
    return metrics


class SemSegEvaluator:
    """Accumulates the confusion matrix over an evaluation pass (engine ``Evaluator`` protocol).

    ``update(logits, batch)``: logits (B, C, h, w), ``batch["labels"]`` (B, H, W) int64; logits of
    another size are bilinearly upsampled to the labels' size first (scoring at the original
    resolution). For images of different sizes, lists: logits (1, C, h, w) and labels (H, W) per
    image. The state sums across DDP ranks. No host sync per batch.
    """

    def __init__(self, *, num_classes: int, class_names: Sequence[str], ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for num_classes={num_classes}")
        self.num_classes, self.class_names, self.ignore_index = num_classes, list(class_names), ignore_index
        # Created by the first update on the data's device: moving zeros there would be a host sync.
        self.confusion: Optional[torch.Tensor] = None
        self.invalid: Optional[torch.Tensor] = None

    @torch.no_grad()
    def update(self, outputs: torch.Tensor | Sequence[torch.Tensor], batch: Mapping[str, Any]) -> None:
        labels = batch["labels"]
        if isinstance(outputs, (list, tuple)):  # images of different sizes: one (1, C, h, w) per label map
            for logits, image_labels in zip(outputs, labels, strict=True):
                self.update(logits, {"labels": image_labels[None]})
            return
        if outputs.dim() != 4 or outputs.shape[1] != self.num_classes:
            raise ValueError(f"expected logits (batch, {self.num_classes}, height, width), got {tuple(outputs.shape)}")
        if labels.dim() != 3 or labels.shape[0] != outputs.shape[0]:
            raise ValueError(f"expected labels (batch={outputs.shape[0]}, height, width), got {tuple(labels.shape)}")
        if outputs.shape[-2:] != labels.shape[-2:]:
            outputs = F.interpolate(outputs.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        matrix, invalid = _confusion_counts(outputs.argmax(dim=1), labels, self.num_classes, self.ignore_index)
        if self.confusion is None:
            self.confusion, self.invalid = matrix, invalid
        else:  # out of place: the running sums may have been made under another grad / inference mode
            self.confusion, self.invalid = self.confusion + matrix, self.invalid + invalid

    def state(self) -> dict[str, torch.Tensor]:
        if self.confusion is None:  # no batch seen (an empty split or rank)
            c = self.num_classes
            return {"confusion": torch.zeros(c, c, dtype=torch.long), "invalid_labels": torch.zeros((), dtype=torch.long)}
        return {"confusion": self.confusion, "invalid_labels": self.invalid}

    def compute(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        invalid = state.get("invalid_labels")
        if invalid is not None and int(invalid):
            _raise_invalid(int(invalid), self.num_classes, self.ignore_index)
        return segmentation_metrics(state["confusion"], self.class_names)


def format_class_table(metrics: Mapping[str, float], class_names: Sequence[str]) -> str:
    """Plain-text table: per-class IoU and accuracy in percent (``-``: absent from the split), then the means."""
    return per_class_table(metrics, class_names, columns=[("IoU", "iou"), ("Acc", "acc")], scale=100,
                           totals=[("mIoU", "miou"), ("mean acc", "mean_acc"), ("pixel acc", "pixel_acc")])
