"""The part-segmentation adapter: per-point cross-entropy (padded points ignored) and the
instance / class mIoU evaluator of :mod:`bixt.metrics.partseg`."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bixt.data.partseg import IGNORE_LABEL, PartSegInfo
from bixt.engine.task import TaskAdapter
from bixt.metrics.partseg import PartSegEvaluator


class PartSegAdapter(TaskAdapter):
    """Tells the engine how to run, score and evaluate a part-segmentation batch."""

    main_metric = "instance_miou"
    sample_name = "shapes"

    def __init__(self, info: PartSegInfo, label_smoothing: float = 0.0) -> None:
        self.info = info
        self.label_smoothing = label_smoothing

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(batch["pos"], batch["point_mask"], batch.get("features"), batch["category"])

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        # Plain cross-entropy over all part labels, padded points ignored (the standard recipe).
        return F.cross_entropy(outputs.flatten(0, 1).float(), batch["labels"].flatten(),
                               ignore_index=IGNORE_LABEL, label_smoothing=self.label_smoothing)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["pos"].shape[0]

    def make_evaluator(self) -> PartSegEvaluator:
        return PartSegEvaluator(self.info.part_mask, self.info.category_names)
