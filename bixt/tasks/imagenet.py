"""``python -m bixt.tasks.imagenet``: train or evaluate BiXT image classifiers.

With no arguments it trains a tiny BiXT on the embedded shapes data (no files, no network).
``--help`` lists the config groups and common overrides; configs live in ``bixt/configs/imagenet``.

    python -m bixt.tasks.imagenet                                        # embedded default
    python -m bixt.tasks.imagenet data=folder data.root=DIR              # DIR/train/<class>/*, DIR/val/<class>/*
    python -m bixt.tasks.imagenet experiment=bixt_ti_l64_p16_in1k data.root=/data/imagenet
    python -m bixt.tasks.imagenet eval_only=true model=bixt_ti_l64_p16 data=folder data.root=... model.checkpoint=PATH
    python -m bixt.tasks.imagenet eval_only=true resume=true trainer.run_dir=RUN   # evaluate RUN/last.pth
    torchrun --nproc_per_node=8 -m bixt.tasks.imagenet experiment=...    # DDP
"""
from __future__ import annotations

from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf
from timm.data import Mixup

import bixt  # noqa: F401  (registers the BiXT models with timm)
from bixt.tasks import kit
from bixt.tasks.classification import ClassificationAdapter


def build_adapter(cfg: DictConfig, data: kit.TaskData) -> ClassificationAdapter:
    mixup = OmegaConf.to_container(cfg.mixup, resolve=True) if cfg.get("mixup") is not None else {}
    return ClassificationAdapter(data.num_classes, loss=cfg.loss.name, smoothing=kit.smoothing(cfg), mixup=mixup,
                                 bce_target_thresh=cfg.loss.get("bce_target_thresh"), sample_name="img",
                                 classes=data.class_names)


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose data, model and adapter from ``cfg`` and hand them to the engine. Labels follow the
    class list of the checkpoint a run continues or evaluates (``class_names_to_builder``)."""
    data, start = kit.prepare(cfg, nodes={"mixup": Mixup}, class_names_to_builder=True)
    model = kit.build_model(cfg.model, num_classes=data.num_classes)
    return kit.run(cfg, model, build_adapter(cfg, data), data, start=start)


@hydra.main(version_base=None, config_path="../configs/imagenet", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    return kit.main(cfg, train, "val/top1")


if __name__ == "__main__":
    kit.cli(main, "imagenet")
