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

import logging
from pathlib import Path
from typing import Optional, Sequence

import hydra
import timm
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue
from torch import nn

import bixt  # noqa: F401  (registers the BiXT models with timm)
from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.engine import run, seed_everything, trainer_config
from bixt.engine.checkpointing import run_checkpoint_classes
from bixt.tasks.classification import ClassificationAdapter

log = logging.getLogger("bixt.tasks.imagenet")

#: Keys of the ``data`` node read by the trainer (``num_workers``) and the adapter (``mixup``), not by its builder.
DATA_TASK_KEYS = ("num_workers", "mixup")


def build_model(model_cfg: DictConfig, num_classes: int) -> nn.Module:
    """``timm.create_model`` from the ``model`` config (``pretrained`` = backbone weights file)."""
    kwargs = dict(model_cfg.get("kwargs") or {})
    if model_cfg.get("img_size") is not None:
        kwargs["img_size"] = model_cfg.img_size
    if model_cfg.get("drop_path_rate") is not None:
        kwargs["drop_path_rate"] = model_cfg.drop_path_rate
    pretrained: Optional[str] = model_cfg.get("pretrained")
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained))
    try:
        return timm.create_model(model_cfg.name, pretrained=bool(pretrained), num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model.name={model_cfg.name!r}; BiXT models: {timm.list_models('bixt*')}") from None
        raise


def build_adapter(cfg: DictConfig, num_classes: int, classes: Optional[Sequence[str]] = None) -> ClassificationAdapter:
    mixup_cfg = cfg.data.get("mixup")
    mixup = OmegaConf.to_container(mixup_cfg, resolve=True) if mixup_cfg is not None else {}
    return ClassificationAdapter(num_classes, loss=cfg.loss.name, smoothing=cfg.loss.smoothing, mixup=mixup,
                                 bce_target_thresh=cfg.loss.get("bce_target_thresh"), sample_name="img",
                                 classes=classes)


def check_required(cfg: DictConfig) -> None:
    """Fail early, and readably, when a mandatory value (``???``, e.g. ``finetune_from``) is unset."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"a required config value is not set ({reason}); give it on the command line, "
                         "e.g. finetune_from=PATH") from None


def checkpoint_class_names(cfg: DictConfig) -> Optional[list[str]]:
    """The class list of the checkpoint this run continues (``resume``) or evaluates (``eval_only``),
    so the data's labels follow the model's classes, not whichever class folders are present.

    ``None`` for a fresh run (``finetune_from`` / ``model.checkpoint`` may come from other classes) and
    for checkpoints without a list (official weights, older runs): then, evaluating folder data that
    has no ``train/`` folder, labels follow the folders of ``val/``, which is warned about with the fix.
    """
    tcfg = trainer_config(cfg)
    path, classes = run_checkpoint_classes(tcfg)
    # only folder data has a root
    if path is not None and classes is None and tcfg.eval_only and cfg.data.get("root"):
        train_dir = Path(str(cfg.data.root)) / cfg.data.train_split
        if not train_dir.is_dir():
            log.warning("%s stores no class list (official weights?) and %s does not exist: labels follow the "
                        "class folders of %s, so a missing class folder shifts every later label and the "
                        "accuracy is wrong without an error. To fix the order, create %s/<class>/ for every "
                        "class the model was trained on (empty folders suffice)", path, train_dir,
                        Path(str(cfg.data.root)) / cfg.data.val_split, train_dir)
    return classes


def train_imagenet(cfg: DictConfig) -> dict[str, float]:
    """Compose data, model and adapter from ``cfg`` and hand them to the engine."""
    check_required(cfg)
    seed_everything(cfg.trainer.seed)
    class_names = checkpoint_class_names(cfg)
    train_set, val_set, num_classes = build_data(cfg.data, task_keys=DATA_TASK_KEYS, eval_only=cfg.trainer.eval_only,
                                                 class_names=class_names)
    model = build_model(cfg.model, num_classes)
    classes = (train_set if train_set is not None else val_set).classes  # every image data set names its classes
    return run(cfg, model, build_adapter(cfg, num_classes, classes), train_set, val_set)


@hydra.main(version_base=None, config_path="../configs/imagenet", config_name="config")
def main(cfg: DictConfig) -> Optional[float]:
    with data_errors_exit():  # a bad input file: one line naming it, no traceback
        metrics = train_imagenet(cfg)
    return metrics.get("val/top1")


if __name__ == "__main__":
    main()
