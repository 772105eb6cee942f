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

import hydra
from omegaconf import DictConfig

from bixt.tasks import kit
from bixt.tasks.retrieval import RetrievalAdapter


def train(cfg: DictConfig) -> dict[str, float]:
    data, start = kit.prepare(cfg)
    return kit.run(cfg, kit.build_model(cfg.model), RetrievalAdapter(kit.smoothing(cfg)), data, start=start)


@hydra.main(version_base=None, config_path="../configs/lra_retrieval", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/accuracy")


if __name__ == "__main__":
    kit.cli(main, "lra_retrieval")
