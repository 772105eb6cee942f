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

from typing import Any, Mapping

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bixt.engine.task import TaskAdapterBase
from bixt.metrics.retrieval import RetrievalEvaluator
from bixt.tasks import kit


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


def train(cfg: DictConfig) -> dict[str, float]:
    data = kit.prepare(cfg)
    return kit.run(cfg, kit.build_model(cfg.model), RetrievalAdapter(), data)


@hydra.main(version_base=None, config_path="../configs/lra_retrieval", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/accuracy")


if __name__ == "__main__":
    kit.cli(main, "lra_retrieval")
