"""``python -m bixt.tasks.ade20k_semseg``: semantic image segmentation (ADE20K protocol) with BiXT.

    python -m bixt.tasks.ade20k_semseg                                    # embedded procedural scenes
    python -m bixt.tasks.ade20k_semseg data=ade20k data.root=DIR           # ADEChallengeData2016
    python -m bixt.tasks.ade20k_semseg data=ade20k_hf data.path=DIR        # a local datasets copy
    python -m bixt.tasks.ade20k_semseg experiment=ade20k_semfpn data.root=DIR model.pretrained=PATH
    python -m bixt.tasks.ade20k_semseg resume=true trainer.run_dir=RUN     # continue a run
    python -m bixt.tasks.ade20k_semseg eval_only=true resume=true trainer.run_dir=RUN   # evaluate it

A data module (:mod:`bixt.data.ade20k`, pipelines in :mod:`bixt.data.seg_transforms`), the BiXT
segmenter (:class:`bixt.models.segmentation.BiXTSegmenter`: timm backbone + linear / Semantic FPN
head), the :class:`~bixt.tasks.segmentation.SemSegAdapter` and the engine. The metrics (``val/miou``, ``val/mean_acc``,
``val/pixel_acc``, per-class ``val/iou/<name>``) are computed at the original label size; the
per-class IoU table is logged at the end.
"""
from __future__ import annotations

from typing import Optional

import hydra
from omegaconf import DictConfig

from bixt.metrics.semseg import format_class_table
from bixt.tasks import kit
from bixt.tasks.segmentation import SemSegAdapter, check_sizes, eval_settings

__all__ = ["train", "main", "check_sizes"]


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose data, model and adapter from ``cfg`` and hand them to the engine."""
    data, start = kit.prepare(cfg, nodes={"eval": eval_settings})
    model = kit.build_model(cfg.model, num_classes=data.num_classes)
    window, step = check_sizes(cfg, int(model.stride))
    adapter = SemSegAdapter(class_names=data.class_names, eval_mode=cfg.eval.mode, eval_crop=window, eval_stride=step,
                            label_smoothing=kit.smoothing(cfg))
    metrics = kit.run(cfg, model, adapter, data, start=start)
    kit.log_tables(metrics, "miou", "per-class IoU", lambda split, prefix: format_class_table(split, data.class_names))
    return metrics


@hydra.main(version_base=None, config_path="../configs/ade20k_semseg", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    return kit.main(cfg, train, "val/miou")


if __name__ == "__main__":
    kit.cli(main, "ade20k_semseg")
