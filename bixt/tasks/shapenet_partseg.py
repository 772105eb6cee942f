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

import hydra
from omegaconf import DictConfig

from bixt.data.partseg import PartSegInfo
from bixt.metrics.partseg import format_category_table
from bixt.tasks import kit
from bixt.tasks.part_segmentation import PartSegAdapter


def train(cfg: DictConfig) -> dict[str, float]:
    data, start = kit.prepare(cfg, min_points=kit.min_points(cfg.model))
    info: PartSegInfo = data.metadata["info"]
    in_features = data.metadata["in_features"]
    model = kit.build_model(cfg.model, tokenizer={"in_features": in_features},
                            head={"num_classes": info.num_classes, "num_categories": info.num_categories,
                                  "point_features": 3 + in_features})
    metrics = kit.run(cfg, model, PartSegAdapter(info, kit.smoothing(cfg)), data, start=start)
    kit.log_tables(metrics, "class_miou", "per-category IoU",
                   lambda split, prefix: format_category_table(split, info.category_names))
    return metrics


@hydra.main(version_base=None, config_path="../configs/shapenet_partseg", config_name="config")
def main(cfg: DictConfig) -> float:
    return kit.main(cfg, train, "val/instance_miou")


if __name__ == "__main__":
    kit.cli(main, "shapenet_partseg")
