"""The pair-matching adapter of document retrieval: ``model(ids1, mask1, ids2, mask2)``,
cross-entropy over match / no match, :class:`~bixt.metrics.retrieval.RetrievalEvaluator`."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from bixt.engine.task import TaskAdapter
from bixt.metrics.retrieval import RetrievalEvaluator


class RetrievalAdapter(TaskAdapter):
    """Tells the engine how to run, score and evaluate a batch of document pairs."""

    main_metric = "accuracy"
    sample_name = "pairs"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(batch["input_ids1"], batch["token_mask1"], batch["input_ids2"], batch["token_mask2"])

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch["label"], label_smoothing=self.label_smoothing)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["label"].shape[0]

    def make_evaluator(self) -> RetrievalEvaluator:
        return RetrievalEvaluator()
