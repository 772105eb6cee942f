"""``python -m bixt.tasks.modelnet40_cls``: point-cloud classification (ModelNet40 protocol) with BiXT.

    python -m bixt.tasks.modelnet40_cls                                    # embedded procedural solids
    python -m bixt.tasks.modelnet40_cls data=modelnet40 data.root=DIR       # modelnet40_normal_resampled
    python -m bixt.tasks.modelnet40_cls experiment=modelnet40 data.root=DIR # full recipe
    python -m bixt.tasks.modelnet40_cls model=bixt_point_naive             # one token per point
    python -m bixt.tasks.modelnet40_cls resume=true trainer.run_dir=RUN    # continue a run
    python -m bixt.tasks.modelnet40_cls eval_only=true resume=true trainer.run_dir=RUN   # evaluate it

A data module (:mod:`bixt.data.modelnet`), a point tokeniser + :class:`~bixt.BiXTEncoder` +
:class:`~bixt.heads.classification.ClassificationHead` (:class:`bixt.models.point.PointClassifier`),
the shared :class:`~bixt.tasks.classification.ClassificationAdapter` and the engine. The test split
is the validation set (as in the ModelNet40 literature): ``val/top1`` is the overall accuracy,
``val/mean_class_acc`` the mean class accuracy; the per-class table is logged at the end.
"""
from __future__ import annotations

from typing import Optional

import hydra
from omegaconf import DictConfig

from bixt.metrics.tables import per_class_table
from bixt.tasks import kit
from bixt.tasks.classification import ClassificationAdapter


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose data, model and adapter from ``cfg`` and hand them to the engine."""
    data, start = kit.prepare(cfg, min_points=kit.min_points(cfg.model))
    model = kit.build_model(cfg.model, tokenizer={"in_features": data.metadata["in_features"]},
                            head={"num_classes": data.num_classes})
    adapter = ClassificationAdapter(data.num_classes, loss=cfg.loss.name, smoothing=kit.smoothing(cfg),
                                    sample_name="shapes", classes=data.class_names, per_class_metrics=True)
    metrics = kit.run(cfg, model, adapter, data, start=start)
    counts = data.val.labels.bincount(minlength=data.num_classes).tolist()
    kit.log_tables(metrics, "mean_class_acc", "per-class accuracy", lambda split, prefix: per_class_table(
        split, data.class_names, columns=[("acc %", "acc")], counts=counts, count_header="shapes",
        totals=[("overall acc", "top1"), ("mean class", "mean_class_acc")]))
    return metrics


@hydra.main(version_base=None, config_path="../configs/modelnet40_cls", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    return kit.main(cfg, train, "val/top1")


if __name__ == "__main__":
    kit.cli(main, "modelnet40_cls")
