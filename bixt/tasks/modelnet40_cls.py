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

import logging
from typing import Mapping, Optional, Sequence

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.engine import run, seed_everything, trainer_config
from bixt.engine.checkpointing import run_checkpoint_classes
from bixt.models.point import PointClassifier
from bixt.tasks.classification import ClassificationAdapter

log = logging.getLogger("bixt.tasks.modelnet40_cls")


def build_model(model_cfg: DictConfig, num_classes: int, in_features: int) -> PointClassifier:
    """Tokeniser + encoder + head from the ``model`` config node (``_target_`` instantiation)."""
    tokenizer = instantiate(model_cfg.tokenizer, in_features=in_features)
    encoder = instantiate(model_cfg.encoder)
    head = instantiate(model_cfg.head, num_classes=num_classes)
    return PointClassifier(tokenizer, encoder, head)


def check_points(cfg: DictConfig) -> None:
    num_points, groups = int(cfg.data.num_points), cfg.model.tokenizer.get("num_groups")
    need = max(int(groups or 1), int(cfg.model.tokenizer.get("group_size", 1) or 1))
    if num_points < need:
        raise ValueError(f"data.num_points={num_points} is smaller than the {need} points the tokeniser needs "
                         "(model.tokenizer.num_groups / group_size); raise data.num_points or lower those")


def format_class_table(metrics: Mapping[str, float], prefix: str, classes: Sequence[str],
                       counts: Sequence[int]) -> str:
    width = max(12, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'acc %':>6}  {'shapes':>6}"]
    for name, count in zip(classes, counts):
        value = metrics.get(f"{prefix}/acc/{name}")
        cell = f"{value:6.2f}" if value is not None else f"{'-':>6}"
        lines.append(f"{name:<{width}}  {cell}  {count:>6}")
    lines.append(f"{'overall acc':<{width}}  {metrics[prefix + '/top1']:6.2f}  {sum(counts):>6}")
    if f"{prefix}/mean_class_acc" in metrics:
        lines.append(f"{'mean class':<{width}}  {metrics[prefix + '/mean_class_acc']:6.2f}")
    return "\n".join(lines)


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose data, model and adapter from ``cfg`` and hand them to the engine."""
    check_points(cfg)
    seed_everything(cfg.trainer.seed)
    train_set, test_set, classes = build_data(cfg.data)
    _, stored = run_checkpoint_classes(trainer_config(cfg))
    if stored is not None and list(stored) != list(classes):
        raise ValueError(f"the checkpoint was trained on the classes {stored}, the data has {classes}: labels would "
                         "not match; use the data the checkpoint was trained on")
    in_features = 3 if cfg.data.get("normals", False) else 0
    model = build_model(cfg.model, len(classes), in_features)
    adapter = ClassificationAdapter(len(classes), loss=cfg.loss.name, smoothing=cfg.loss.smoothing,
                                    sample_name="shapes", classes=classes, per_class_metrics=True)
    metrics = run(cfg, model, adapter, None if cfg.trainer.eval_only else train_set, test_set)
    counts = test_set.labels.bincount(minlength=len(classes)).tolist()
    # "val" (and "val_ema" with EMA): every prefix with a full evaluation (not "best/top1")
    for prefix in sorted(k[: -len("/mean_class_acc")] for k in metrics if k.endswith("/mean_class_acc")):
        table = format_class_table(metrics, prefix, classes, counts)
        log.info("per-class accuracy (%s, test split):\n%s", prefix, table)
    return metrics


@hydra.main(version_base=None, config_path="../configs/modelnet40_cls", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    with data_errors_exit():  # a bad input file: one line naming it, no traceback
        metrics = train(cfg)
    return metrics.get("val/top1")


if __name__ == "__main__":
    main()
