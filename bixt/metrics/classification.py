"""Classification metrics over an evaluation pass: top-1 / top-k accuracy, mean class accuracy and
cross-entropy, accumulated on the device (no host sync per batch) and summable across processes."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F


class TopKEvaluator:
    """Accumulates correct-in-top-k counts, per-class hits and counts, and the summed cross-entropy.

    ``compute`` gives ``top1``, ``top{k}`` for each k in ``topk`` (k < num_classes only), ``loss``,
    and ``mean_class_acc`` (the mean over classes present in the targets of each class's top-1
    accuracy, in %). :meth:`per_class` gives the per-class table.
    """

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5), classes: Optional[Sequence[str]] = None,
                 per_class_metrics: bool = False):
        self.num_classes = num_classes
        self.per_class_metrics = per_class_metrics  # compute() adds acc/<class> (flat metrics keep the table)
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.topk = tuple(k for k in topk if k == 1 or k < num_classes)
        self.correct = torch.zeros(len(self.topk), dtype=torch.float64)
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.class_hits = torch.zeros(num_classes, dtype=torch.float64)
        self.class_count = torch.zeros(num_classes, dtype=torch.float64)

    def _to(self, device: torch.device) -> None:
        for name in ("correct", "loss_sum", "count", "class_hits", "class_count"):
            setattr(self, name, getattr(self, name).to(device))

    def update(self, outputs: torch.Tensor, batch: Any) -> None:
        logits, targets = outputs.float(), batch[1]
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f"the model gives {logits.shape[-1]} logits per sample, the evaluator expects "
                             f"{self.num_classes} classes")
        if self.correct.device != logits.device:  # accumulate where the logits are: no sync per batch
            self._to(logits.device)
        top = logits.topk(max(self.topk), dim=-1).indices  # (B, kmax)
        hits = top == targets[:, None]
        self.correct += torch.stack([hits[:, :k].any(dim=-1).sum() for k in self.topk])
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum")
        self.count += targets.numel()
        # index_add_ rather than bincount / boolean indexing: both size their output from the data,
        # a host sync per batch on accelerators
        self.class_count.index_add_(0, targets, torch.ones_like(targets, dtype=self.class_count.dtype))
        self.class_hits.index_add_(0, targets, hits[:, 0].to(self.class_hits.dtype))

    def state(self) -> dict[str, torch.Tensor]:
        return {"correct": self.correct, "loss_sum": self.loss_sum, "count": self.count,
                "class_hits": self.class_hits, "class_count": self.class_count}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        n = max(float(state["count"]), 1.0)
        out = {f"top{k}": 100.0 * float(c) / n for k, c in zip(self.topk, state["correct"])}
        out["loss"] = float(state["loss_sum"]) / n
        present = state["class_count"] > 0
        if bool(present.any()):
            out["mean_class_acc"] = 100.0 * float((state["class_hits"][present] / state["class_count"][present]).mean())
        if self.per_class_metrics:
            out.update({f"acc/{name}": acc for name, _, acc in self.per_class(state)})
        return out

    def per_class(self, state: dict[str, torch.Tensor]) -> list[tuple[str, int, float]]:
        """``(class name, samples, top-1 accuracy in %)`` for each class with samples."""
        hits, counts = state["class_hits"].cpu(), state["class_count"].cpu()
        return [(self.classes[i], int(counts[i]), 100.0 * float(hits[i] / counts[i]))
                for i in range(self.num_classes) if counts[i] > 0]
