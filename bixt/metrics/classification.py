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

    def __init__(self, num_classes: int, topk: Sequence[int] = (1, 5), classes: Optional[Sequence[str]] = None):
        self.num_classes = num_classes
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
        self.class_count += torch.bincount(targets, minlength=self.num_classes)[: self.num_classes]
        self.class_hits += torch.bincount(targets[hits[:, 0]], minlength=self.num_classes)[: self.num_classes]

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
        return out

    def per_class(self, state: dict[str, torch.Tensor]) -> list[tuple[str, int, float]]:
        """``(class name, samples, top-1 accuracy in %)`` for each class with samples."""
        hits, counts = state["class_hits"].cpu(), state["class_count"].cpu()
        return [(self.classes[i], int(counts[i]), 100.0 * float(hits[i] / counts[i]))
                for i in range(self.num_classes) if counts[i] > 0]
