"""Joint image + label pipelines for semantic segmentation (the usual ADE20K recipe).

Training (:class:`SegTrainTransform`), in this order:

1. random rescale: a keep-ratio resize to ``scale`` x r, r uniform in ``ratio_range`` (for ADE20K the
   base scale (2048, 512) means "long side <= 2048 r and short side <= 512 r", whichever binds);
2. random crop of ``crop_size`` where no single class fills more than ``cat_max_ratio`` of the
   labelled pixels, retried a few times (the least dominated crop is kept if none passes);
3. horizontal flip with probability ``flip_prob``;
4. photometric distortion: brightness, contrast, saturation and hue, each applied with probability 1/2;
5. normalisation (ImageNet mean/std) and padding to the crop size: image with 0 (the mean colour
   after normalisation), labels with ``ignore_index`` so padding is never scored.

Images are resized bilinearly (antialiased when shrinking), labels always with nearest neighbour:
a label map never gets a value it did not have. The randomness uses torch's global RNG, which the
engine seeds per sample from ``(seed, epoch, index)``, so a run is reproducible whatever the number
of DataLoader workers.

Evaluation (:class:`SegEvalTransform`): a keep-ratio resize of the image to ``scale`` and the
normalisation; the labels stay at their original size, since metrics are computed there (the
evaluator upsamples the logits). It draws no random numbers, so evaluation is reproducible as it is.

:func:`collate_segmentation` stacks samples when all sizes agree (training crops, the embedded
scenes) and returns lists otherwise (ADE20K validation images all differ in size); the task then
runs inference per image, because padding a batch to a common size would change what the
global latents of whole-image inference see.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import InterpolationMode

IGNORE_INDEX = 255

__all__ = ["IGNORE_INDEX", "SegTrainTransform", "SegEvalTransform", "collate_segmentation", "keep_ratio_size",
           "as_pair", "check_slide_window"]


def as_pair(value: Any, what: str) -> Optional[tuple[int, int]]:
    """``512`` -> (512, 512); ``[h, w]`` -> (h, w); None stays None. Anything else names ``what``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}={value!r}: expected an int or a pair of ints") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{what}={list(pair)}: expected an int or a pair of positive ints")
    return pair  # type: ignore[return-value]


def check_slide_window(window: Optional[tuple[int, int]], step: Optional[tuple[int, int]]) -> None:
    """Sliding evaluation covers every pixel only with a step no larger than the window: checked when
    the run starts, since the evaluation would otherwise stop at its first image, hours into a run."""
    if window is None or step is None or (step[0] <= window[0] and step[1] <= window[1]):
        return
    raise ValueError(f"eval.stride={list(step)} is larger than the sliding window eval.crop={list(window)} "
                     "(default: data.crop_size): pixels between windows would get no prediction; set "
                     f"eval.stride to at most {list(window)} (null: 2/3 of the window)")


def keep_ratio_size(height: int, width: int, scale: Sequence[float]) -> tuple[int, int]:
    """Output (h, w) of a keep-ratio resize to ``scale = (long, short)``: the largest size whose
    long side is at most ``long`` and short side at most ``short`` (the mmseg/mmcv convention)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return TF.resize(image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    # nearest neighbour: a label map must never get an interpolated (new) value
    return TF.resize(labels[None], list(size), interpolation=InterpolationMode.NEAREST_EXACT)[0]


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class _Normalise:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) image -> normalised float."""
        image = image.float().div_(255) if image.dtype == torch.uint8 else image.float()
        return (image - self.mean) / self.std


class SegTrainTransform:
    """The training pipeline above; ``__call__(image uint8 (3, H, W), labels (H, W))`` ->
    ``(image float (3, h, w), labels long (h, w))`` with ``(h, w) = crop_size``."""

    def __init__(self, *, crop_size: Any = 512, scale: Optional[Sequence[int]] = (2048, 512),
                 ratio_range: Optional[Sequence[float]] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                 crop_tries: int = 10, flip_prob: float = 0.5, photometric: bool = True,
                 brightness_delta: float = 32.0, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18.0,
                 ignore_index: int = IGNORE_INDEX, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.crop_size = as_pair(crop_size, "data.crop_size")
        self.scale = tuple(scale) if scale is not None else None
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else (1.0, 1.0)
        if not 0 < self.ratio_range[0] <= self.ratio_range[1]:
            raise ValueError(f"data.ratio_range={list(self.ratio_range)}: expected [low, high] with 0 < low <= high")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"data.cat_max_ratio={cat_max_ratio}: expected a fraction in (0, 1] (1 = no cap)")
        self.cat_max_ratio = float(cat_max_ratio)
        self.crop_tries = max(1, int(crop_tries))
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        # brightness and hue deltas on the 0-255 and the 0-180 (OpenCV hue) scales, as the recipe quotes them
        self.brightness_delta = float(brightness_delta) / 255.0
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = float(hue_delta) / 180.0
        self.ignore_index = int(ignore_index)
        self.normalise = _Normalise(mean, std)

    # -- steps
    def rescale(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is None:
            return image, labels
        ratio = _uniform(*self.ratio_range)
        size = keep_ratio_size(image.shape[-2], image.shape[-1], [s * ratio for s in self.scale])
        return _resize_image(image, size), _resize_labels(labels, size)

    def _dominance(self, crop: torch.Tensor) -> tuple[int, float]:
        """(classes in the crop, share of the largest one) over the labelled pixels."""
        counts = torch.bincount(crop.flatten().long(), minlength=self.ignore_index + 1)
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        if counts.numel() == 0:
            return 0, 1.0
        return int(counts.numel()), float(counts.max()) / float(counts.sum())

    def crop(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ch, cw = self.crop_size
        h, w = labels.shape
        ch, cw = min(ch, h), min(cw, w)
        best, best_share = None, math.inf
        for _ in range(self.crop_tries):
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            window = labels[top:top + ch, left:left + cw]
            if self.cat_max_ratio >= 1.0:
                best = (top, left)
                break
            classes, share = self._dominance(window)
            if classes > 1 and share < self.cat_max_ratio:
                best = (top, left)
                break
            # none may pass (a one-class image): keep the least dominated crop tried
            rank = share if classes > 1 else 1.0 + share
            if rank < best_share:
                best, best_share = (top, left), rank
        top, left = best
        return image[:, top:top + ch, left:left + cw], labels[top:top + ch, left:left + cw]

    def distort(self, image: torch.Tensor) -> torch.Tensor:
        """Photometric distortion on a [0, 1] float image; contrast before or after the colour steps."""
        def maybe() -> bool:
            return bool(torch.rand(()) < 0.5)

        if maybe():
            image = (image + _uniform(-self.brightness_delta, self.brightness_delta)).clamp_(0, 1)
        contrast_first = maybe()
        if contrast_first and maybe():
            image = (image * _uniform(*self.contrast_range)).clamp_(0, 1)
        if maybe():
            image = TF.adjust_saturation(image, _uniform(*self.saturation_range)).clamp_(0, 1)
        if maybe():
            image = TF.adjust_hue(image, _uniform(-self.hue_delta, self.hue_delta))
        if not contrast_first and maybe():
            image = (image * _uniform(*self.contrast_range)).clamp_(0, 1)
        return image

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.long() if labels.dtype != torch.uint8 else labels
        image, labels = self.rescale(image, labels)
        image, labels = self.crop(image, labels)
        if self.flip_prob > 0 and float(torch.rand(())) < self.flip_prob:
            image, labels = image.flip(-1), labels.flip(-1)
        image = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        if self.photometric:
            image = self.distort(image)
        image = self.normalise(image)
        labels = labels.long()
        ch, cw = self.crop_size
        pad_h, pad_w = ch - image.shape[-2], cw - image.shape[-1]
        if pad_h > 0 or pad_w > 0:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            labels = F.pad(labels, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), labels.contiguous()


class SegEvalTransform:
    """Keep-ratio resize of the image to ``scale`` (None = as it is) and normalisation; labels unchanged."""

    def __init__(self, *, scale: Optional[Sequence[int]] = (2048, 512), mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.scale = tuple(scale) if scale is not None else None
        self.normalise = _Normalise(mean, std)

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scale is not None:
            image = _resize_image(image, keep_ratio_size(image.shape[-2], image.shape[-1], self.scale))
        return self.normalise(image).contiguous(), labels.long()


def collate_segmentation(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"image", "labels", "name"}`` samples -> a batch: stacked tensors when every image and every
    label map has the same size, else lists of per-image tensors (evaluation at original sizes)."""
    images = [s["image"] for s in samples]
    labels = [s["labels"] for s in samples]
    names = [s["name"] for s in samples]
    same = len({tuple(t.shape) for t in images}) == 1 and len({tuple(t.shape) for t in labels}) == 1
    if same:
        return {"image": torch.stack(images), "labels": torch.stack(labels), "name": names}
    return {"image": images, "labels": labels, "name": names}
