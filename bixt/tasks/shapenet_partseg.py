"""``python -m bixt.tasks.shapenet_partseg``: point-cloud part segmentation (ShapeNetPart protocol) with BiXT.

    python -m bixt.tasks.shapenet_partseg                              # embedded procedural set
    python -m bixt.tasks.shapenet_partseg data=shapenetpart data.root=DIR
    python -m bixt.tasks.shapenet_partseg experiment=shapenetpart data.root=DIR   # full recipe
    python -m bixt.tasks.shapenet_partseg resume=true trainer.run_dir=RUN        # continue a run
    python -m bixt.tasks.shapenet_partseg eval_only=true resume=true trainer.run_dir=RUN   # evaluate it

``DIR`` is the extracted ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` folder (or the
folder holding it); it is only read, processed files go to ``data.cache_dir``. The model is a
point tokeniser + :class:`~bixt.BiXTEncoder` (tokens refined in every layer) + a dense head; the
metrics are instance and class mIoU with predictions restricted to each shape's category.
"""
from __future__ import annotations

from typing import Any, Mapping

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bixt.data.partseg import IGNORE_LABEL, PartSegInfo
from bixt.engine.task import TaskAdapterBase
from bixt.metrics.partseg import PartSegEvaluator, format_category_table
from bixt.tasks import kit


class PartSegAdapter(TaskAdapterBase):
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


def train(cfg: DictConfig) -> dict[str, float]:
    data = kit.prepare(cfg, min_points=kit.min_points(cfg.model))
    info: PartSegInfo = data.metadata["info"]
    in_features = data.metadata["in_features"]
    model = kit.build_model(cfg.model, tokenizer={"in_features": in_features},
                            head={"num_classes": info.num_classes, "num_categories": info.num_categories,
                                  "point_features": 3 + in_features})
    metrics = kit.run(cfg, model, PartSegAdapter(info, kit.smoothing(cfg)), data)
    kit.log_tables(metrics, "class_miou", "per-category IoU",
                   lambda split, prefix: format_category_table(split, info.category_names))
    return metrics


@hydra.main(version_base=None, config_path="../configs/shapenet_partseg", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/instance_miou")


if __name__ == "__main__":
    kit.cli(main, "shapenet_partseg")
