"""Visual question answering (CLEVR) with a fused BiXT: one set of latents reads the image and the
question together.

    python -m bixt.tasks.clevr_vqa                                 # embedded generated scenes, fused model
    python -m bixt.tasks.clevr_vqa model=question_only             # the same, reading the question only
    python -m bixt.tasks.clevr_vqa model=image_only                # ... or the image only
    python -m bixt.tasks.clevr_vqa data=clevr data.root=DIR        # CLEVR v1.0 (DIR only read)
    python -m bixt.tasks.clevr_vqa eval_only=true resume=true trainer.run_dir=RUN   # evaluate a run

Reported: ``val/top1``, ``val/top5`` (%), loss, and at the end a per-family accuracy table. The
question tokenizer (word level, trained on the training questions) is stored in every checkpoint
and written to the run directory as ``tokenizer.json``; an evaluated or resumed checkpoint's
tokenizer replaces the one trained on the data.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig
from tokenizers import Tokenizer

from bixt.metrics.tables import per_class_table
from bixt.tasks import kit
from bixt.tasks.vqa import VQAAdapter


def train(cfg: DictConfig) -> dict[str, float]:
    data, start = kit.prepare(cfg, class_names_to_builder=True)
    if start is not None and start.metadata.get("tokenizer"):
        data.collate_fn.tokenizer = Tokenizer.from_str(start.metadata["tokenizer"])
    tokenizer = data.collate_fn.tokenizer
    model = kit.build_model(cfg.model, vocab_size=tokenizer.get_vocab_size(), head={"num_classes": data.num_classes})
    families = data.metadata["families"]
    adapter = VQAAdapter(data.class_names, families, tokenizer.to_str(), kit.smoothing(cfg))
    metrics = kit.run(cfg, model, adapter, data, start=start)
    run_dir = cfg.trainer.run_dir or hydra_output_dir()
    if run_dir and not cfg.trainer.eval_only:
        tokenizer.save(str(Path(run_dir) / "tokenizer.json"))
    kit.log_tables(metrics, "top1", "accuracy per question family", lambda split, prefix: per_class_table(
        split, families, columns=[("acc %", "acc")], first="family", totals=[("overall", "top1"), ("top-5", "top5")]))
    return metrics


def hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else ""


@hydra.main(version_base=None, config_path="../configs/clevr_vqa", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/top1")


if __name__ == "__main__":
    kit.cli(main, "clevr_vqa")
