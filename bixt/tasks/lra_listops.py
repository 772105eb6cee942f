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

import logging
from collections import Counter

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.data.listops import DIGITS, NUM_CLASSES, ListOpsCollate, vocabulary
from bixt.engine import run, seed_everything
from bixt.models.text import SequenceClassifier
from bixt.tasks.classification import ClassificationAdapter

log = logging.getLogger("bixt.tasks.lra_listops")


def build_model(model_cfg: DictConfig, keep_parens: bool = False) -> SequenceClassifier:
    """Sequence encoder (BiXT or the Transformer baseline) + classification head from ``model``."""
    encoder = instantiate(model_cfg.encoder, vocab_size=vocabulary(keep_parens).vocab_size)
    head = instantiate(model_cfg.head, num_classes=NUM_CLASSES)
    return SequenceClassifier(encoder, head)


def majority_rate(split) -> float:
    """Share (%) of the most frequent target: the accuracy of always answering it."""
    counts = Counter(int(y) for y in split["label"])
    return 100.0 * max(counts.values()) / max(len(split), 1)


def train(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.trainer.seed)
    splits = build_data(cfg.data, task_keys=("name",))  # name: the label of the test metrics
    lengths = {name: int(max((len(x) for x in split["input_ids"]), default=0)) for name, split in splits.items()}
    log.info("sequences: %s | longest (tokens): %s | majority class: train %.1f %%, test %.1f %%",
             ", ".join(f"{k} {len(v)}" for k, v in splits.items()), lengths,
             majority_rate(splits["train"]), majority_rate(splits["test"]) if len(splits["test"]) else float("nan"))
    model = build_model(cfg.model, cfg.data.keep_parens)
    adapter = ClassificationAdapter(NUM_CLASSES, loss="ce", smoothing=cfg.loss.smoothing, sample_name="seqs",
                                    classes=list(DIGITS))
    # named after the data set, so the engine reports e.g. `test_listops/top1`
    test_sets = {cfg.data.name: splits["test"]} if len(splits["test"]) else None
    return run(cfg, model, adapter, splits["train"], splits["val"], collate_fn=ListOpsCollate(), test_sets=test_sets)


@hydra.main(version_base=None, config_path="../configs/lra_listops", config_name="config")
def main(cfg: DictConfig) -> float:
    with data_errors_exit():  # a bad input file: one line naming it, no traceback
        metrics = train(cfg)
    return metrics.get("val/top1", float("nan"))


if __name__ == "__main__":
    main()
