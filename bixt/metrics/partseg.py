"""Part-segmentation metrics under the standard ShapeNetPart protocol.

Per shape: predictions are restricted to the parts of the shape's category (argmax over those
logits only); the shape IoU is the mean over *all* parts of its category of
|pred ∩ truth| / |pred ∪ truth|, where a part absent from both prediction and truth counts 1.0.
Instance mIoU averages shape IoUs over all shapes; class mIoU averages the per-category means.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from bixt.metrics.tables import per_class_table

__all__ = [
    "make_part_mask",
    "restricted_argmax",
    "shape_ious",
    "PartSegEvaluator",
    "format_category_table",
]


def make_part_mask(seg_classes: Sequence[Sequence[int]], num_classes: Optional[int] = None) -> torch.Tensor:
    """(num_categories, num_classes) bool: which global part labels belong to each category."""
    num_classes = num_classes or 1 + max(max(parts) for parts in seg_classes)
    mask = torch.zeros(len(seg_classes), num_classes, dtype=torch.bool)
    for category, parts in enumerate(seg_classes):
        mask[category, list(parts)] = True
    return mask


def restricted_argmax(logits: torch.Tensor, category: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
    """Argmax over the parts of each cloud's category only: logits (B, N, C), category (B,) -> (B, N)."""
    allowed = part_mask.to(logits.device)[category]  # (B, C)
    return logits.masked_fill(~allowed.unsqueeze(1), float("-inf")).argmax(dim=-1)


def shape_ious(
    pred: torch.Tensor,
    target: torch.Tensor,
    category: torch.Tensor,
    part_mask: torch.Tensor,
    point_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-shape mean IoU over the parts of its category: pred/target (B, N) global labels -> (B,) float64.

    A part that neither the prediction nor the ground truth contains counts as IoU 1.0.
    Padded points (``point_mask`` False) are ignored.
    """
    batch, num_classes = pred.shape[0], part_mask.shape[1]
    valid = torch.ones_like(target, dtype=torch.bool) if point_mask is None else point_mask
    # Per-(shape, part) point counts via one bincount over shape-offset labels.
    offset = torch.arange(batch, device=pred.device).unsqueeze(1) * num_classes

    def count(labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        flat = (labels + offset)[keep]
        return torch.bincount(flat, minlength=batch * num_classes).view(batch, num_classes).double()

    intersection = count(target, valid & (pred == target))
    union = count(pred, valid) + count(target, valid) - intersection
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    parts = part_mask.to(iou.device)[category]  # (B, C)
    return (iou * parts).sum(dim=1) / parts.sum(dim=1)


class PartSegEvaluator:
    """Accumulates instance / class mIoU (engine ``Evaluator`` protocol).

    ``update(logits, batch)`` reads ``batch["labels"]`` (B, N), ``batch["category"]`` (B,) and
    optionally ``batch["point_mask"]`` (B, N). The state is per-category sums, so it reduces across
    DDP ranks by summation.
    """

    def __init__(self, part_mask: torch.Tensor, category_names: Optional[Sequence[str]] = None) -> None:
        self.part_mask = part_mask.bool()
        self.category_names = list(category_names) if category_names is not None else [
            str(i) for i in range(part_mask.shape[0])
        ]
        num_categories = part_mask.shape[0]
        self.iou_sum = torch.zeros(num_categories, dtype=torch.float64)
        self.shape_count = torch.zeros(num_categories, dtype=torch.float64)
        self.correct = torch.zeros((), dtype=torch.float64)
        self.points = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        target, category = batch["labels"], batch["category"]
        point_mask = batch.get("point_mask")
        self._check_finite(outputs, category, point_mask)
        pred = restricted_argmax(outputs.float(), category, self.part_mask)
        ious = shape_ious(pred, target, category, self.part_mask, point_mask).cpu()
        category = category.cpu()
        self.iou_sum.index_add_(0, category, ious)
        self.shape_count.index_add_(0, category, torch.ones_like(ious))
        valid = torch.ones_like(target, dtype=torch.bool) if point_mask is None else point_mask
        self.correct += ((pred == target) & valid).sum().cpu().double()
        self.points += valid.sum().cpu().double()

    def _check_finite(self, outputs: torch.Tensor, category: torch.Tensor,
                      point_mask: Optional[torch.Tensor]) -> None:
        """Refuse NaN/inf logits at real points: argmax would turn them into some part and the
        mIoU would look like a valid number."""
        finite = torch.isfinite(outputs).all(dim=-1)  # (B, N)
        if point_mask is not None:
            finite = finite | ~point_mask  # padded points are not scored
        bad = ~finite.all(dim=1)
        if bool(bad.any()):
            names = sorted({self.category_names[int(c)] for c in category[bad].cpu()})
            raise ValueError(
                f"NaN/inf part logits for {int(bad.sum())} of {len(bad)} shapes in this batch (categories {names}, "
                f"batch rows {bad.nonzero().flatten()[:10].tolist()}); they cannot be scored. Look for a diverged "
                "model (NaN loss) or degenerate input clouds (all points at one position, NaN coordinates)"
            )

    def state(self) -> dict[str, torch.Tensor]:
        return {"iou_sum": self.iou_sum, "shape_count": self.shape_count, "correct": self.correct,
                "points": self.points}

    def compute(self, state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        iou_sum, count = state["iou_sum"].double().cpu(), state["shape_count"].double().cpu()
        seen = count > 0
        per_category = iou_sum[seen] / count[seen]
        metrics = {
            "instance_miou": float(iou_sum.sum() / count.sum().clamp_min(1)),
            "class_miou": float(per_category.mean()) if bool(seen.any()) else 0.0,
            "point_accuracy": float(state["correct"] / state["points"].clamp_min(1)),
        }
        for i, name in enumerate(self.category_names):
            if seen[i]:
                metrics[f"iou/{name}"] = float(iou_sum[i] / count[i])
        return metrics


def format_category_table(metrics: Mapping[str, float], category_names: Sequence[str],
                          shape_counts: Optional[Sequence[int]] = None) -> str:
    """A plain-text table: one row per category with its mIoU, then class and instance mIoU."""
    return per_class_table(metrics, category_names, columns=[("mIoU", "iou")], scale=100, first="category",
                           counts=shape_counts, count_header="shapes",
                           totals=[("class mIoU", "class_miou"), ("instance mIoU", "instance_miou")])
