"""Image classification data: the embedded shapes set, ImageNet-style folders, local HF datasets.

All three give map-style datasets of ``(image tensor (3, H, W), label)`` pairs; use
:func:`build_image_datasets` to get ``(train, val, num_classes)`` from a ``data`` config.

* ``embedded`` (:class:`ShapesDataset`): procedurally generated, deterministic from a seed, no
  files and no network. Ten shape classes (disk, ring, square, frame, triangle, plus, flower,
  two dots, ellipse, half-disk) at random position, scale and rotation, random foreground and
  background colours (colour carries no label information), a background gradient, a distractor
  line and pixel noise. Learnable by a small model, yet not by a linear model on pixels.
* ``folder`` (:class:`ImageFolderDataset`): ``root/train/<class>/*.jpg|png|...`` and
  ``root/val/<class>/...`` (class index = sorted folder names of ``train``), with timm transforms.
* ``hf`` (:class:`HFImageDataset`): a Hugging Face ``datasets`` image dataset stored locally
  (``save_to_disk`` output, or a local dataset script/folder for ``load_dataset``).

Unreadable images raise :class:`BadImageError` naming the file (``on_bad_image: fail``) or are
replaced by the next readable sample and counted, with a warning naming the file
(``on_bad_image: skip``).
"""
from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("disk", "ring", "square", "frame", "triangle", "plus", "flower", "two_dots", "ellipse",
                 "half_disk")


class BadImageError(RuntimeError):
    """An image file that cannot be read or decoded (the message names the file)."""


# ------------------------------------------------------------------------------------ embedded data
def _shape_mask(c: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Binary mask of shape class ``c`` in local (rotated, scaled) coordinates ``u, v``."""
    name = SHAPE_CLASSES[c]
    if name in ("disk", "ring", "flower", "half_disk"):
        rho = torch.sqrt(u * u + v * v)
    if name == "disk":
        return rho <= 0.8
    if name == "ring":
        return (rho >= 0.5) & (rho <= 0.9)
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.7
    if name == "frame":
        cheb = torch.maximum(u.abs(), v.abs())
        return (cheb >= 0.42) & (cheb <= 0.8)
    if name == "triangle":  # equilateral: inside three half-planes, outward normals at 90 + 120 k degrees
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            a = math.radians(90 + 120 * k)
            inside &= u * math.cos(a) + v * math.sin(a) <= 0.45
        return inside
    if name == "plus":
        return ((u.abs() <= 0.25) & (v.abs() <= 0.9)) | ((v.abs() <= 0.25) & (u.abs() <= 0.9))
    if name == "flower":
        return rho <= 0.55 + 0.35 * torch.cos(5 * torch.atan2(v, u))
    if name == "two_dots":
        return torch.minimum((u - 0.5) ** 2 + v ** 2, (u + 0.5) ** 2 + v ** 2) <= 0.35 ** 2
    if name == "ellipse":
        return (u / 0.95) ** 2 + (v / 0.4) ** 2 <= 1
    return (rho <= 0.95) & (v >= 0.0)  # half disk: a flat side through the centre


def _shape_masks(u: torch.Tensor, v: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary masks (N, H, W) of each sample's class shape."""
    masks = torch.empty(u.shape, dtype=torch.bool)
    for c in labels.unique().tolist():
        sel = labels == c
        masks[sel] = _shape_mask(c, u[sel], v[sel])
    return masks


def generate_shapes(num_samples: int, img_size: int = 32, seed: int = 0, num_classes: int = 10,
                    noise: float = 0.04, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, S, S) uint8 and balanced labels (N,), a pure function of the arguments."""
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(SHAPE_CLASSES)}], got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes
    labels = labels[torch.randperm(num_samples, generator=g)]
    coords = (torch.arange(img_size, dtype=torch.float32) + 0.5) / img_size * 2 - 1
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    images = torch.empty(num_samples, 3, img_size, img_size, dtype=torch.uint8)
    blur = torch.full((1, 1, 3, 3), 1 / 9)
    for start in range(0, num_samples, chunk):
        lab = labels[start:start + chunk]
        n = len(lab)
        rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
        center = (rand(n, 2) - 0.5) * 0.5
        scale = 0.5 + 0.3 * rand(n)
        angle = rand(n) * 2 * math.pi
        dx = (x - center[:, 0, None, None]) / scale[:, None, None]
        dy = (y - center[:, 1, None, None]) / scale[:, None, None]
        cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        u, v = cos * dx + sin * dy, -sin * dx + cos * dy
        # anti-aliased shape mask
        mask = F.conv2d(_shape_masks(u, v, lab).float()[:, None], blur, padding=1)
        # colours: any foreground/background pair with enough contrast, so colour says nothing of the class
        bg, fg = 0.45 * rand(n, 3), 0.55 + 0.45 * rand(n, 3)
        # background: colour + random linear gradient
        g_angle = rand(n) * 2 * math.pi
        grad = (torch.cos(g_angle)[:, None, None] * x + torch.sin(g_angle)[:, None, None] * y) * (0.25 * rand(n))[:, None, None]
        img = bg[:, :, None, None] + grad[:, None]
        img = img * (1 - mask) + fg[:, :, None, None] * mask
        # distractor: a thin straight line of a random colour, in front, in 30 % of the images
        l_angle, l_off = rand(n) * math.pi, (rand(n) - 0.5) * 1.6
        dist = (torch.cos(l_angle)[:, None, None] * x + torch.sin(l_angle)[:, None, None] * y - l_off[:, None, None]).abs()
        line = ((dist < 1.2 / img_size) & (rand(n) < 0.3)[:, None, None]).float()[:, None]
        img = img * (1 - line) + rand(n, 3)[:, :, None, None] * line
        img = img + noise * torch.randn(img.shape, generator=g)
        images[start:start + n] = (img.clamp(0, 1) * 255).round().to(torch.uint8)
    return images, labels


class ShapesDataset(Dataset):
    """The embedded classification set (see the module docstring), held in memory as uint8.

    ``train=True`` adds a random horizontal flip (the label is flip-invariant).
    """

    def __init__(self, num_samples: int = 20000, img_size: int = 32, seed: int = 0, num_classes: int = 10,
                 train: bool = False, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD, noise: float = 0.04):
        self.images, self.labels = generate_shapes(num_samples, img_size, seed, num_classes, noise)
        self.train = train
        self.num_classes = num_classes
        self.classes = list(SHAPE_CLASSES[:num_classes])
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index].float().div_(255)
        if self.train and torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img - self.mean) / self.std, int(self.labels[index])


# ------------------------------------------------------------------------------------ files on disk
class _BadImagePolicy:
    """Shared by the file-backed datasets: load a sample, or deal with an unreadable one."""

    on_bad_image: str
    skipped: int

    def _init_policy(self, on_bad_image: str) -> None:
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.skipped = 0

    def _load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        raise NotImplementedError

    def _load_with_policy(self, index: int) -> tuple[Image.Image, int]:
        """Image and the index it came from (a later one when skipping)."""
        n = len(self)
        for attempt in range(min(n, 50)):
            i = (index + attempt) % n
            try:
                return self._load(i), i
            except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
                where = self._describe(i)
                if self.on_bad_image == "fail":
                    raise BadImageError(f"cannot read image {where}: {type(err).__name__}: {err}. Remove or "
                                        "replace the file, or set data.on_bad_image=skip to skip such files") from None
                self.skipped += 1
                log.warning("skipping unreadable image %s (%s: %s); %d skipped so far in this process",
                            where, type(err).__name__, err, self.skipped)
        raise BadImageError(f"50 consecutive unreadable images from index {index} ({self._describe(index)}); "
                            "is the data set corrupt?")


def _open_rgb(source: Any) -> Image.Image:
    with Image.open(source) as img:
        return img.convert("RGB")  # convert() decodes the pixels, so truncated files fail here


class ImageFolderDataset(_BadImagePolicy, Dataset):
    """``root/<class>/**/<image>`` files (ImageNet layout); classes indexed in sorted order."""

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None,
                 class_to_idx: Optional[dict[str, int]] = None, on_bad_image: str = "fail"):
        from timm.data.readers.reader_image_folder import find_images_and_targets

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; expected {self.root}/<class>/<images>")
        samples, self.class_to_idx = find_images_and_targets(str(self.root), class_to_idx=class_to_idx)
        if not samples:
            raise FileNotFoundError(f"no images (jpg, jpeg, png, ...) found under {self.root}/<class>/")
        self.samples = samples
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.transform = transform
        self._init_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> Image.Image:
        return _open_rgb(self.samples[index][0])

    def _describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def __getitem__(self, index: int):
        img, i = self._load_with_policy(index)
        return (self.transform(img) if self.transform else img), self.samples[i][1]


class HFImageDataset(_BadImagePolicy, Dataset):
    """A split of a Hugging Face image dataset; images decoded here so errors can name the file."""

    def __init__(self, split, image_column: str = "image", label_column: str = "label",
                 transform: Optional[Callable] = None, on_bad_image: str = "fail", name: str = "dataset"):
        from datasets import Image as HFImage

        for col in (image_column, label_column):
            if col not in split.column_names:
                raise KeyError(f"{name} has no column {col!r}; columns: {split.column_names} "
                               "(set data.image_column / data.label_column)")
        self.split = split.cast_column(image_column, HFImage(decode=False))
        self.image_column, self.label_column = image_column, label_column
        self.labels = self.split[label_column]
        self.transform = transform
        self.name = name
        self._init_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, index: int) -> Image.Image:
        item = self.split[index][self.image_column]
        if item.get("bytes"):
            return _open_rgb(io.BytesIO(item["bytes"]))
        return _open_rgb(item["path"])

    def _describe(self, index: int) -> str:
        try:
            path = self.split[index][self.image_column].get("path")
        except Exception:  # noqa: BLE001
            path = None
        return f"{path} ({self.name}[{index}])" if path else f"{self.name}[{index}]"

    def __getitem__(self, index: int):
        img, i = self._load_with_policy(index)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


# ------------------------------------------------------------------------------------ from config
def image_transforms(data_cfg: Any, img_size: int) -> tuple[Callable, Callable]:
    """timm's training and evaluation transforms for the ``data.aug`` settings."""
    aug = data_cfg.aug
    mean, std = tuple(data_cfg.get("mean", IMAGENET_DEFAULT_MEAN)), tuple(data_cfg.get("std", IMAGENET_DEFAULT_STD))
    train = create_transform(
        img_size, is_training=True, scale=tuple(aug.scale), ratio=tuple(aug.ratio), hflip=aug.hflip,
        color_jitter=aug.color_jitter, auto_augment=aug.auto_augment or None, interpolation=aug.interpolation,
        re_prob=aug.re_prob, mean=mean, std=std)
    val = create_transform(img_size, is_training=False, interpolation=aug.interpolation, crop_pct=aug.crop_pct,
                           mean=mean, std=std)
    return train, val


def _load_hf(data_cfg: Any):
    import datasets

    path = Path(str(data_cfg.path))
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        ds = datasets.load_from_disk(str(path))
    elif path.exists():
        ds = datasets.load_dataset(str(path), **dict(data_cfg.get("load_kwargs") or {}))
    else:
        raise FileNotFoundError(f"data.path={str(path)!r} does not exist; give a local dataset directory "
                                "(datasets.save_to_disk output or a local data folder/script): nothing is downloaded")
    if not isinstance(ds, datasets.DatasetDict):
        raise ValueError(f"{path} holds a single split; save a DatasetDict with "
                         f"{data_cfg.train_split!r} and {data_cfg.val_split!r} splits")
    for split in (data_cfg.train_split, data_cfg.val_split):
        if split not in ds:
            raise KeyError(f"{path} has no split {split!r}; splits: {list(ds)} (set data.train_split / data.val_split)")
    return ds


def folder_class_to_idx(root: Path) -> dict[str, int]:
    """Class indices of a ``root/<class>/<image>`` folder, ordered as timm's folder reader orders
    them (natural sort of the class names), from the folder names alone."""
    from timm.utils.misc import natural_key

    return {c: i for i, c in enumerate(sorted((d.name for d in root.iterdir() if d.is_dir()), key=natural_key))}


def build_image_datasets(data_cfg: Any, img_size: int, eval_only: bool = False) -> tuple[Optional[Dataset], Dataset, int]:
    """``(train, val, num_classes)`` for ``data.source`` in embedded | folder | hf.

    ``train`` is ``None`` when ``eval_only`` (nothing is read or generated for it).
    """
    source = data_cfg.source
    if source == "embedded":
        common = dict(img_size=img_size, num_classes=data_cfg.num_classes, noise=data_cfg.noise)
        # distinct seeds: validation images are new draws, not copies of training ones
        train = None if eval_only else ShapesDataset(data_cfg.train_size, seed=data_cfg.seed, train=True, **common)
        val = ShapesDataset(data_cfg.val_size, seed=data_cfg.seed + 1_000_003, **common)
        return train, val, data_cfg.num_classes
    train_tf, val_tf = image_transforms(data_cfg, img_size)
    if source == "folder":
        if not data_cfg.root:
            raise ValueError("data=folder needs data.root=DIR holding train/<class>/ and val/<class>/ image folders")
        root = Path(str(data_cfg.root))
        train_dir, val_dir = root / data_cfg.train_split, root / data_cfg.val_split
        train, class_to_idx = None, None
        if not eval_only:
            train = ImageFolderDataset(train_dir, train_tf, on_bad_image=data_cfg.on_bad_image)
            class_to_idx = train.class_to_idx
        elif train_dir.is_dir():  # the class order of training, without listing every training image
            class_to_idx = folder_class_to_idx(train_dir)
        # (evaluation alone without train/ takes its classes from val/)
        if class_to_idx is not None and val_dir.is_dir():
            extra = sorted({p.name for p in val_dir.iterdir() if p.is_dir()} - set(class_to_idx))
            if extra:
                raise ValueError(f"{val_dir} has class folders missing from {train_dir}: {extra[:10]}")
        val = ImageFolderDataset(val_dir, val_tf, class_to_idx=class_to_idx, on_bad_image=data_cfg.on_bad_image)
        num_classes = data_cfg.num_classes or len(val.class_to_idx)
        return train, val, num_classes
    if source == "hf":
        ds = _load_hf(data_cfg)
        kw = dict(image_column=data_cfg.image_column, label_column=data_cfg.label_column,
                  on_bad_image=data_cfg.on_bad_image)
        train = None if eval_only else HFImageDataset(ds[data_cfg.train_split], transform=train_tf,
                                                      name=f"{data_cfg.path}:{data_cfg.train_split}", **kw)
        val = HFImageDataset(ds[data_cfg.val_split], transform=val_tf, name=f"{data_cfg.path}:{data_cfg.val_split}", **kw)
        features = ds[data_cfg.train_split].features.get(data_cfg.label_column)
        num_classes = data_cfg.num_classes or getattr(features, "num_classes", None) or int(max(val.labels)) + 1
        return train, val, num_classes
    raise ValueError(f"data.source must be embedded, folder or hf; got {source!r}")
