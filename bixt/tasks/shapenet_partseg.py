"""Point-cloud part segmentation (ShapeNetPart protocol) with BiXT.

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

import logging
from typing import Any, Mapping

import hydra
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.data.partseg import IGNORE_LABEL, PartSegInfo, collate_point_clouds
from bixt.engine import run, seed_everything
from bixt.engine.task import TaskAdapterBase
from bixt.heads.segmentation import PointSegmenter
from bixt.metrics.partseg import PartSegEvaluator, format_category_table

log = logging.getLogger(__name__)


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


def min_points_for(model_cfg: DictConfig) -> int:
    """Points a raw cloud needs for the configured tokeniser (its group count and group size)."""
    tokenizer = model_cfg.tokenizer
    return max(int(tokenizer.get("num_groups", 1) or 1), int(tokenizer.get("group_size", 1) or 1))


def build_model(model_cfg: DictConfig, info: PartSegInfo, in_features: int) -> PointSegmenter:
    """Tokeniser + encoder + head from the ``model`` config node (``_target_`` instantiation)."""
    tokenizer = instantiate(model_cfg.tokenizer, in_features=in_features)
    encoder = instantiate(model_cfg.encoder)
    head = instantiate(model_cfg.head, num_classes=info.num_classes, num_categories=info.num_categories,
                       point_features=3 + in_features)
    return PointSegmenter(tokenizer, encoder, head)


def log_category_tables(metrics: Mapping[str, float], info: PartSegInfo) -> None:
    # "val", "test_<split>" (and "val_ema" with EMA): every prefix with a full set of mIoUs.
    prefixes = sorted(k[: -len("/class_miou")] for k in metrics if k.endswith("/class_miou"))
    for prefix in prefixes:
        split_metrics = {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "/")}
        log.info("per-category IoU (%s):\n%s", prefix, format_category_table(split_metrics, info.category_names))


def train(cfg: DictConfig) -> dict[str, float]:
    seed_everything(cfg.trainer.seed)
    train_set, val_set, test_sets, info = build_data(cfg.data, min_points=min_points_for(cfg.model))
    in_features = 3 if cfg.data.get("normals", False) else 0
    model = build_model(cfg.model, info, in_features)
    adapter = PartSegAdapter(info, float(cfg.get("label_smoothing", 0.0)))
    metrics = run(cfg, model, adapter, train_set, val_set, collate_fn=collate_point_clouds, test_sets=test_sets)
    log_category_tables(metrics, info)
    return metrics


@hydra.main(version_base=None, config_path="../configs/shapenet_partseg", config_name="config")
def main(cfg: DictConfig) -> float:
    with data_errors_exit():  # a bad input file: one line naming it, no traceback
        metrics = train(cfg)
    return metrics.get("val/instance_miou", float("nan"))


if __name__ == "__main__":
    main()
