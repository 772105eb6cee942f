"""Long Range Arena ListOps (10-way classification of nested list expressions) with BiXT or the
full-attention baseline.

    python -m bixt.tasks.lra_listops                                   # embedded generated set, tiny BiXT
    python -m bixt.tasks.lra_listops model=transformer_tiny            # same data, full attention
    python -m bixt.tasks.lra_listops data=listops data.root=DIR        # LRA release files
    python -m bixt.tasks.lra_listops experiment=listops data.root=DIR  # LRA-scale BiXT and recipe
    python -m bixt.tasks.lra_listops experiment=listops model=transformer data.root=DIR   # LRA baseline
    python -m bixt.tasks.lra_listops resume=true trainer.run_dir=RUN        # continue a run
    python -m bixt.tasks.lra_listops eval_only=true resume=true trainer.run_dir=RUN   # evaluate it

``DIR`` holds ``basic_{train,val,test}.tsv``; it is only read, tokenised splits are cached by
Hugging Face ``datasets`` under ``data.cache_dir``. The text pipeline is the retrieval task's:
the shared sequence encoders (:mod:`bixt.models.text`, :mod:`bixt.baselines.transformer`) over a
token-level vocabulary (:class:`bixt.tokenizers.text.TokenVocabulary`), the shared TSV reading
(:mod:`bixt.data.tsv`), then the shared classification head, adapter and metrics. Reported:
``val/top1`` and ``test_<data.name>/top1`` (%), ``mean_class_acc``, loss, sequences/s.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from bixt.tasks import kit
from bixt.tasks.classification import ClassificationAdapter


def train(cfg: DictConfig) -> dict[str, float]:
    data, start = kit.prepare(cfg)
    model = kit.build_model(cfg.model, encoder={"vocab_size": data.metadata["vocab_size"]},
                            head={"num_classes": data.num_classes})
    adapter = ClassificationAdapter(data.num_classes, loss="ce", smoothing=kit.smoothing(cfg), sample_name="seqs",
                                    classes=data.class_names)
    return kit.run(cfg, model, adapter, data, start=start)


@hydra.main(version_base=None, config_path="../configs/lra_listops", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/top1")


if __name__ == "__main__":
    kit.cli(main, "lra_listops")
