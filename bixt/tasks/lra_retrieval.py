"""Long Range Arena byte-level document retrieval (AAN) with BiXT or a full-attention baseline.

    python -m bixt.tasks.lra_retrieval                                   # embedded synthetic set, tiny BiXT
    python -m bixt.tasks.lra_retrieval model=transformer_tiny            # same data, full attention
    python -m bixt.tasks.lra_retrieval data=aan data.root=DIR            # LRA release files
    python -m bixt.tasks.lra_retrieval experiment=aan data.root=DIR      # LRA-scale BiXT and recipe
    python -m bixt.tasks.lra_retrieval experiment=aan model=transformer data.root=DIR   # LRA baseline
    python -m bixt.tasks.lra_retrieval resume=true trainer.run_dir=RUN        # continue a run
    python -m bixt.tasks.lra_retrieval eval_only=true resume=true trainer.run_dir=RUN   # evaluate it

``DIR`` holds ``new_aan_pairs.{train,eval,test}.tsv``; it is only read, parsed and tokenised splits
are cached by Hugging Face ``datasets`` under ``data.cache_dir``. One shared document encoder
reads both documents of a pair; the head classifies ``[u, v, u * v, u - v]`` of the pooled
vectors. Reported: accuracy on ``eval`` (``val/accuracy``) and ``test`` (``test_<data.name>/accuracy``),
training and evaluation throughput in pairs/s.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from bixt.data.aan import RetrievalCollate
from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.engine import run, seed_everything
from bixt.engine.task import TaskAdapterBase
from bixt.heads.retrieval import DualEncoderRetriever

log = logging.getLogger(__name__)


class RetrievalEvaluator:
    """Accuracy, mean loss and evaluation throughput over one pass."""

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0
        self.loss_sum = 0.0
        self.t0 = time.perf_counter()
        self.seconds = 0.0

    def update(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> None:
        labels = batch["label"]
        self.correct += int((outputs.argmax(dim=-1) == labels).sum())
        self.total += labels.numel()
        self.loss_sum += float(F.cross_entropy(outputs.float(), labels, reduction="sum"))
        self.seconds = time.perf_counter() - self.t0

    def state(self) -> dict[str, torch.Tensor]:
        # "ranks" sums to the world size, so the reduced seconds can be averaged per process.
        return {
            "correct": torch.tensor(float(self.correct), dtype=torch.float64),
            "total": torch.tensor(float(self.total), dtype=torch.float64),
            "loss_sum": torch.tensor(self.loss_sum, dtype=torch.float64),
            "seconds": torch.tensor(self.seconds, dtype=torch.float64),
            "ranks": torch.tensor(1.0, dtype=torch.float64),
        }

    def compute(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        total = max(float(state["total"]), 1.0)
        seconds = float(state["seconds"]) / max(float(state["ranks"]), 1.0)
        return {
            "accuracy": float(state["correct"]) / total,
            "loss": float(state["loss_sum"]) / total,
            "pairs_per_s": float(state["total"]) / max(seconds, 1e-9),
        }


class RetrievalAdapter(TaskAdapterBase):
    """Tells the engine how to run, score and evaluate a batch of document pairs."""

    main_metric = "accuracy"
    sample_name = "pairs"

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(batch["input_ids1"], batch["token_mask1"], batch["input_ids2"], batch["token_mask2"])

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch["label"])

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return batch["label"].shape[0]

    def make_evaluator(self) -> RetrievalEvaluator:
        return RetrievalEvaluator()


def build_model(model_cfg: DictConfig) -> DualEncoderRetriever:
    """Shared document encoder + retrieval head from the ``model`` config node."""
    document_encoder = instantiate(model_cfg.document_encoder)
    head = instantiate(model_cfg.head)
    return DualEncoderRetriever(document_encoder, head)


def train(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.trainer.seed)
    splits = build_data(cfg.data, task_keys=("name",))  # name: the label of the test metrics
    log.info("pairs: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    model = build_model(cfg.model)
    # named after the data set, so the engine reports e.g. `test_aan/accuracy`
    test_sets = {cfg.data.name: splits["test"]} if len(splits["test"]) else None
    return run(cfg, model, RetrievalAdapter(), splits["train"], splits["eval"],
               collate_fn=RetrievalCollate(), test_sets=test_sets)


@hydra.main(version_base=None, config_path="../configs/lra_retrieval", config_name="config")
def main(cfg: DictConfig) -> float:
    with data_errors_exit():  # a bad input file: one line naming it, no traceback
        metrics = train(cfg)
    return metrics.get("val/accuracy", float("nan"))


if __name__ == "__main__":
    main()
