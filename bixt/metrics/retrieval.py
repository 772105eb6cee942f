"""Pair-matching evaluation (LRA retrieval): accuracy, mean loss and pairs/s over one pass."""
from __future__ import annotations

import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F

__all__ = ["RetrievalEvaluator"]


class RetrievalEvaluator:
    """Counts stay tensors on the outputs' device: no host sync per batch, one at :meth:`state`."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.t0 = time.perf_counter()
        self.seconds = 0.0

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        labels = batch["label"]
        step = {"correct": (outputs.argmax(dim=-1) == labels).sum(),
                "total": torch.tensor(labels.numel(), device=outputs.device),
                "loss_sum": F.cross_entropy(outputs.float(), labels, reduction="sum")}
        for key, value in step.items():
            value = value.detach().to(torch.float64)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.seconds = time.perf_counter() - self.t0  # a host clock read, no device sync

    def state(self) -> dict[str, torch.Tensor]:
        # "ranks" sums to the world size, so the reduced seconds can be averaged per process
        zero = torch.zeros((), dtype=torch.float64)
        sums = {k: self.sums.get(k, zero).cpu() for k in ("correct", "total", "loss_sum")}
        return {**sums, "seconds": torch.tensor(self.seconds, dtype=torch.float64),
                "ranks": torch.tensor(1.0, dtype=torch.float64)}

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        total = max(float(state["total"]), 1.0)
        seconds = float(state["seconds"]) / max(float(state["ranks"]), 1.0)
        return {
            "accuracy": float(state["correct"]) / total,
            "loss": float(state["loss_sum"]) / total,
            "pairs_per_s": float(state["total"]) / max(seconds, 1e-9),
        }
