"""The semantic segmentation adapter (batches ``{"image", "labels", "name"}``), the ``eval`` node
(whole-image or sliding-window inference) and the crop / stride check every image segmentation
task shares (ADE20K today)."""
from __future__ import annotations

from typing import Any, Literal, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bixt.data.seg_transforms import IGNORE_INDEX, as_pair, check_slide_window
from bixt.engine.task import TaskAdapter
from bixt.metrics.semseg import SemSegEvaluator
from bixt.models.segmentation import nearest_multiples, segment

Size = Optional[Union[int, Sequence[int]]]


class SemSegAdapter(TaskAdapter):
    """Tells the engine how to run, score and evaluate a segmentation batch ``{"image", "labels", "name"}``.

    Training: ``model(images)`` and pixel-wise cross-entropy (255 ignored) on logits at the label
    size. Evaluation: :func:`~bixt.models.segmentation.segment` in ``eval_mode`` (whole image, or
    overlapping ``eval_crop`` windows every ``eval_stride`` pixels), per image when the batch is a
    list (original sizes differ).
    """

    main_metric = "miou"
    sample_name = "img"

    def __init__(self, *, class_names: Sequence[str], eval_mode: str = "whole",
                 eval_crop: Optional[tuple[int, int]] = None, eval_stride: Optional[tuple[int, int]] = None,
                 label_smoothing: float = 0.0, ignore_index: int = IGNORE_INDEX) -> None:
        if eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval.mode={eval_mode!r}: expected whole or slide")
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        self.eval_mode, self.eval_crop, self.eval_stride = eval_mode, eval_crop, eval_stride
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        # the class names by label travel in every checkpoint: evaluating it later checks the data
        self.checkpoint_extra = {"classes": list(self.class_names)}

    def _segment(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if self.eval_mode == "slide":
            return segment(model, images, mode="slide", crop_size=self.eval_crop, crop_stride=self.eval_stride)
        return segment(model, images, mode="whole")

    def forward(self, model: nn.Module, batch: Mapping[str, Any]) -> Any:
        images = batch["image"]
        if model.training:
            return model(images)
        if isinstance(images, (list, tuple)):
            return [self._segment(model, image[None]) for image in images]
        return self._segment(model, images)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        if outputs.shape[-2:] != labels.shape[-2:]:
            outputs = F.interpolate(outputs, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(outputs.float(), labels, ignore_index=self.ignore_index,
                               label_smoothing=self.label_smoothing)

    def batch_size(self, batch: Mapping[str, Any]) -> int:
        return len(batch["name"])

    def make_evaluator(self) -> SemSegEvaluator:
        return SemSegEvaluator(num_classes=self.num_classes, class_names=self.class_names,
                               ignore_index=self.ignore_index)


def eval_settings(*, mode: Literal["whole", "slide"] = "whole", crop: Size = None, stride: Size = None) -> None:
    """The ``eval`` node: how validation images are segmented (:func:`~bixt.models.segmentation.segment`)."""


def check_sizes(cfg: DictConfig, stride: int) -> tuple[Optional[tuple[int, int]], Optional[tuple[int, int]]]:
    """The training crop (and the sliding window) must be a whole number of strides: the token grid
    would otherwise not cover the crop and the logits would not align with the labels. Returns the
    sliding window (default: the crop) and its step (None: ``segment``'s default)."""
    crop = as_pair(cfg.data.get("crop_size"), "data.crop_size")
    window = as_pair(cfg.eval.crop, "eval.crop") or crop
    step = as_pair(cfg.eval.stride, "eval.stride")
    for key, size in (("data.crop_size", crop), ("eval.crop", window if cfg.eval.mode == "slide" else None)):
        if size is None or not (size[0] % stride or size[1] % stride):
            continue
        valid = nearest_multiples(size[0], stride) if size[0] == size[1] else \
            f"[{nearest_multiples(size[0], stride)}, {nearest_multiples(size[1], stride)}]"
        raise ValueError(f"{key}={list(size) if size[0] != size[1] else size[0]} is not divisible by the model's "
                         f"stride {stride}; expected a multiple of {stride} (e.g. {valid})")
    if cfg.eval.mode == "slide":
        check_slide_window(window, step)
    return window, step
