"""The visual question answering adapter: ``model(image, question, question_mask)`` -> answer logits,
cross-entropy over the answer vocabulary, :class:`~bixt.metrics.vqa.VQAEvaluator`. Every
checkpoint carries the answers (``classes``) and the question tokenizer (``tokenizer``, its JSON)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bixt.engine.task import TaskAdapter
from bixt.metrics.vqa import VQAEvaluator


class VQAAdapter(TaskAdapter):
    main_metric = "top1"
    sample_name = "questions"

    def __init__(self, answers: Sequence[str], families: Sequence[str], tokenizer_json: str,
                 label_smoothing: float = 0.0) -> None:
        self.families = list(families)
        self.label_smoothing = float(label_smoothing)
        self.checkpoint_extra = {"classes": [str(a) for a in answers], "tokenizer": tokenizer_json}

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(batch["image"], batch["question"], batch["question_mask"])

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch["answer"], ignore_index=-1, label_smoothing=self.label_smoothing)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["answer"].shape[0]

    def make_evaluator(self) -> VQAEvaluator:
        return VQAEvaluator(self.families)
