"""Image classification data: the embedded shapes set, ImageNet-style folders, local HF datasets.

All three give map-style datasets of ``(image tensor (3, H, W), label)`` pairs;
:func:`embedded_image_data`, :func:`folder_image_data` and :func:`hf_image_data` (the ``_target_``
of each ``data`` config) give ``(train, val, num_classes)``.

* ``embedded`` (:class:`ShapesDataset`): procedurally generated, deterministic from a seed, no
  files and no network. Ten shape classes (disk, ring, square, frame, triangle, plus, flower,
  two dots, ellipse, half-disk) at random position, scale and rotation, random foreground and
  background colours (colour carries no label information), a background gradient, a distractor
  line and pixel noise. Learnable by a small model, yet not by a linear model on pixels.
* ``folder`` (:class:`ImageFolderDataset`): ``root/train/<class>/**/*.jpg|png`` and
  ``root/val/<class>/...`` (class index = natural-sorted folder names of ``train``, or the order of
  a given class list), with timm transforms.
* ``hf`` (:class:`HFImageDataset`): a Hugging Face ``datasets`` image dataset stored locally
  (``save_to_disk`` output, or a local dataset script/folder for ``load_dataset``); labels must be
  integer class indices.

Every dataset has ``classes`` (label index -> name). Unreadable images raise
:class:`BadImageError` naming the file (``on_bad_image: fail``) or are replaced by the next
readable sample and counted, with a warning naming the file (``on_bad_image: skip``); the
validation images' headers are checked when the data is built, so bad ones surface before training.
"""
from __future__ import annotations

import io
import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, get_img_extensions
from torch.utils.data import Dataset

from bixt.data.errors import DataError
from bixt.data.hf import load_local_splits

log = logging.getLogger(__name__)

SHAPE_CLASSES = ("disk", "ring", "square", "frame", "triangle", "plus", "flower", "two_dots", "ellipse",
                 "half_disk")


class BadImageError(DataError, RuntimeError):
    """An image file that cannot be read or decoded (``message`` names the file, also from a DataLoader worker)."""


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
#: File extensions read as images (timm's list).
IMAGE_EXTENSIONS = frozenset(get_img_extensions(as_set=True))


def _listing(names: Sequence[Any], limit: int = 20) -> str:
    """``['a', 'b', ...]`` for messages, cut after ``limit`` names (ImageNet has 1000 classes)."""
    names = list(names)
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


class _NamedBytes(io.BytesIO):
    """Image bytes whose repr is the image's name: PIL writes ``repr(fp)`` into its errors, which
    would otherwise say ``<_io.BytesIO object at 0x...>`` instead of which image is broken."""

    def __init__(self, data: bytes, where: str):
        super().__init__(data)
        self.where = where

    def __repr__(self) -> str:
        return self.where


class _BadImagePolicy:
    """Shared by the file-backed datasets: load a sample, or deal with an unreadable one."""

    on_bad_image: str
    skipped: int

    def _init_policy(self, on_bad_image: str) -> None:
        if on_bad_image not in ("fail", "skip"):
            raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.skipped = 0

    def _source(self, index: int) -> Any:
        """What PIL opens for sample ``index``: a path or a file-like object."""
        raise NotImplementedError

    def _describe(self, index: int) -> str:
        raise NotImplementedError

    def _drop(self, indices: set[int]) -> None:
        """Remove samples (the unreadable ones found by :meth:`verify_files`)."""
        raise NotImplementedError

    def _load(self, index: int) -> Image.Image:
        return _open_rgb(self._source(index))

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

    def _header_problem(self, index: int) -> Optional[str]:
        try:
            with Image.open(self._source(index)) as img:
                img.verify()  # headers (and PNG chunk checksums); no pixel decoding
        except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
            return f"{type(err).__name__}: {err}"
        return None

    def verify_files(self, what: str, threads: int = 8) -> None:
        """Check every image's header now, so that a file that is no image is named before
        training starts rather than when an epoch first reaches it.

        ``on_bad_image=fail`` raises :class:`BadImageError` naming the bad files; ``skip`` drops
        them, naming each in a warning. A truncated JPEG body passes this check (finding it needs a
        full decode); it is still reported by path when it is read.
        """
        with ThreadPoolExecutor(threads) as pool:  # opening files waits on storage more than on the CPU
            problems = [(i, p) for i, p in enumerate(pool.map(self._header_problem, range(len(self)))) if p]
        if not problems:
            return
        if self.on_bad_image == "fail":
            named = "; ".join(f"{self._describe(i)} ({p})" for i, p in problems[:5])
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise BadImageError(f"{len(problems)} unreadable image(s) in {what}: {named}{more}. Remove or replace "
                                "them, or set data.on_bad_image=skip to skip such files")
        for i, p in problems:
            log.warning("skipping unreadable image %s (%s)", self._describe(i), p)
        self.skipped += len(problems)
        self._drop({i for i, _ in problems})
        if len(self) == 0:
            raise BadImageError(f"every image in {what} is unreadable (first: {problems[0][1]})")
        log.warning("%s: %d unreadable image(s) skipped, %d left", what, len(problems), len(self))


def _open_rgb(source: Any) -> Image.Image:
    with Image.open(source) as img:
        # upright as every viewer shows it (a phone's JPEG stores its rotation in the EXIF
        # Orientation tag); decoding here makes truncated files fail here
        rgb = img.convert("RGB")
    ImageOps.exif_transpose(rgb, in_place=True)  # in place: no copy for the (usual) untagged image
    return rgb


def _is_hidden(name: str) -> bool:
    # .ipynb_checkpoints, .DS_Store, macOS "._x.jpg" resource forks: never classes or images
    return name.startswith(".")


def class_folders(root: Path) -> list[str]:
    """Class folder names of ``root`` in natural sort order (timm's order); hidden folders are not classes."""
    from timm.utils.misc import natural_key

    return sorted((d.name for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name)), key=natural_key)


def find_images(folder: Path) -> list[str]:
    """Image files under ``folder``, recursively, hidden entries skipped.

    Directory symlinks are followed, but each real directory is listed once: a link back up the
    tree (a loop) would otherwise list the same files again at every level until paths get too long.
    """
    seen: set[str] = set()
    found: list[str] = []
    for current, subdirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            subdirs[:] = []  # do not descend further into a directory already listed
            continue
        seen.add(real)
        subdirs[:] = [d for d in subdirs if not _is_hidden(d)]
        found += [os.path.join(current, f) for f in files
                  if not _is_hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return found


class LinkedImageError(DataError, ValueError):
    """A file reached through a link under two class folders; the message names the link and its target."""


def one_label_per_file(samples: list[tuple[str, int]], names: Mapping[int, str]) -> list[tuple[str, int]]:
    """``samples`` with each real file once: a file that links make appear under two classes would
    train with both labels, so that is refused naming the link and its target; one reached twice
    within its class (a second link) is kept once, with a warning."""
    first: dict[str, tuple[str, int]] = {}
    kept, repeats = [], []
    for path, label in samples:
        real = os.path.realpath(path)
        if real not in first:
            first[real] = (path, label)
            kept.append((path, label))
            continue
        other, other_label = first[real]
        if other_label == label:
            repeats.append(path)
            continue
        link, link_label, seen, seen_label = path, label, other, other_label
        if os.path.realpath(other) != os.path.abspath(other) and os.path.realpath(path) == os.path.abspath(path):
            link, link_label, seen, seen_label = other, other_label, path, label  # name the one that is a link
        raise LinkedImageError(f"{link} (class {names[link_label]!r}) links to {real}, which is also "
                               f"{seen} (class {names[seen_label]!r}): one file cannot have two labels; remove the "
                               "link, or the file from one of the classes")
    if repeats:
        log.warning("%d image(s) are links to files already in their class, read once: %s", len(repeats),
                    _listing(repeats, 5))
    return kept


class ImageFolderDataset(_BadImagePolicy, Dataset):
    """``root/<class>/**/<image>`` files (ImageNet layout).

    The classes are the folders directly under ``root``, indexed in natural sort order, unless
    ``class_to_idx`` fixes the indices (the training classes, or a checkpoint's class list); then
    every class folder must be in it (``classes_from`` says where the list came from, for the error).
    A class folder without images is an error unless ``allow_empty_classes`` (evaluation: that class
    just has no samples). ``classes`` lists every class name by index.
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable] = None,
                 class_to_idx: Optional[dict[str, int]] = None, on_bad_image: str = "fail",
                 allow_empty_classes: bool = False, classes_from: str = "the class list"):
        from timm.utils.misc import natural_key

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist; expected {self.root}/<class>/<images>")
        folders = class_folders(self.root)
        if class_to_idx is None:
            class_to_idx = {c: i for i, c in enumerate(folders)}
        unknown = [c for c in folders if c not in class_to_idx]
        if unknown:
            raise ValueError(f"{self.root} has class folder(s) {_listing(unknown)} that are not among the "
                             f"{len(class_to_idx)} classes of {classes_from}: {_listing(list(class_to_idx))}; "
                             "remove or rename those folders, or use a class list that has them")
        self.class_to_idx = dict(class_to_idx)
        samples, empty = [], []
        for name in folders:
            files = find_images(self.root / name)
            if not files:
                empty.append(str(self.root / name))
            samples += [(f, self.class_to_idx[name]) for f in files]
        kinds = "/".join(sorted(IMAGE_EXTENSIONS))
        if empty and not allow_empty_classes:
            raise ValueError(f"class folder(s) {_listing(empty, 10)} are empty (no {kinds} images inside); add "
                             "images or remove the empty folder(s)")
        if empty:
            log.warning("class folder(s) %s are empty: those classes have no samples here", _listing(empty, 10))
        if not samples:
            raise FileNotFoundError(f"no images ({kinds}) found under {self.root}/<class>/")
        samples = one_label_per_file(samples, {i: c for c, i in self.class_to_idx.items()})
        self.samples = sorted(samples, key=lambda s: natural_key(s[0]))
        self.classes = sorted(self.class_to_idx, key=self.class_to_idx.get)
        self.transform = transform
        self._init_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.samples)

    def _source(self, index: int) -> str:
        return self.samples[index][0]

    def _describe(self, index: int) -> str:
        return str(self.samples[index][0])

    def _drop(self, indices: set[int]) -> None:
        self.samples = [s for i, s in enumerate(self.samples) if i not in indices]

    def __getitem__(self, index: int):
        img, i = self._load_with_policy(index)
        return (self.transform(img) if self.transform else img), self.samples[i][1]


def _integer_labels(values: Sequence[Any], where: str) -> list[int]:
    """Labels as ints; a non-integer label (1.7, 'cat', None) or a negative one is an error naming its row."""
    def fail(row: int, why: str):
        value = values[row]
        shown = f"{value:.6g}" if isinstance(value, float) else repr(value)  # float32 columns: 1.7, not 1.70000005
        raise ValueError(f"{where}: label {shown} in row {row} {why}; labels must be class indices "
                         "0, 1, ... (set data.label_column to the column that holds them)")

    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        bad = next(i for i, v in enumerate(values) if not isinstance(v, (bool, int, np.integer)))
        fail(bad, "is not an integer")
    if array.dtype.kind == "f":
        not_whole = ~np.isfinite(array) | (array != np.round(array))
        if not_whole.any():
            fail(int(np.argmax(not_whole)), "is not a whole number (it would be truncated)")
    if array.size and array.min() < 0:
        fail(int(np.argmin(array)), "is negative (an unlabelled sample?)")
    return array.astype(np.int64).tolist()


class HFImageDataset(_BadImagePolicy, Dataset):
    """A split of a Hugging Face image dataset; images decoded here so errors can name the file.

    Labels must be integer class indices (checked here, naming the row). ``label_map`` re-indexes
    them (dataset label i -> ``label_map[i]``, e.g. onto a checkpoint's class order); ``classes``
    names every class by index (default: the ``ClassLabel`` names, else ``class_0``, ...).
    """

    def __init__(self, split, image_column: str = "image", label_column: str = "label",
                 transform: Optional[Callable] = None, on_bad_image: str = "fail", name: str = "dataset",
                 classes: Optional[Sequence[str]] = None, label_map: Optional[Sequence[int]] = None):
        from datasets import Image as HFImage

        for col in (image_column, label_column):
            if col not in split.column_names:
                raise KeyError(f"{name} has no column {col!r}; columns: {split.column_names} "
                               "(set data.image_column / data.label_column)")
        self.split = split.cast_column(image_column, HFImage(decode=False))
        self.image_column, self.label_column = image_column, label_column
        self.name = name
        self.labels = _integer_labels(self.split[label_column], f"{name} column {label_column!r}")
        if label_map is not None:
            self.labels = [int(label_map[y]) for y in self.labels]
        if classes is None:
            classes = hf_class_names(split, label_column)
        if classes is None:
            classes = [f"class_{i}" for i in range(max(self.labels, default=-1) + 1)]
        self.classes = list(classes)
        self.transform = transform
        self._init_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.labels)

    def _source(self, index: int) -> Any:
        item = self.split[index][self.image_column]
        if item.get("bytes"):
            return _NamedBytes(item["bytes"], self._describe(index))
        return item["path"]

    def _describe(self, index: int) -> str:
        try:
            path = self.split[index][self.image_column].get("path")
        except Exception:  # noqa: BLE001
            path = None
        return f"{path} ({self.name}[{index}])" if path else f"{self.name}[{index}]"

    def _drop(self, indices: set[int]) -> None:
        keep = [i for i in range(len(self.labels)) if i not in indices]
        self.split = self.split.select(keep)
        self.labels = [self.labels[i] for i in keep]

    def __getitem__(self, index: int):
        img, i = self._load_with_policy(index)
        return (self.transform(img) if self.transform else img), self.labels[i]


def hf_class_names(split, label_column: str) -> Optional[list[str]]:
    """The ``ClassLabel`` names of a split's label column, or None when it has none."""
    from datasets import ClassLabel

    feature = split.features.get(label_column)
    return list(feature.names) if isinstance(feature, ClassLabel) and feature.names else None


# ------------------------------------------------------------------------------------ from config
# The task's data builders, named by ``_target_`` in bixt/configs/imagenet/data/*.yaml (which hold
# every default). Each returns ``(train, val, num_classes)``; ``train`` is ``None`` when
# ``eval_only`` (nothing is read or generated for it). ``class_names`` (e.g. stored with a
# checkpoint) fixes the labels: label i is ``class_names[i]``; a class folder (or ``ClassLabel``
# name) not in the list is an error, a listed class missing from the data just has no samples.
# Without it, labels follow the sorted class folders of ``train/`` (of ``val/`` when evaluating
# without ``train/``). Every returned dataset has ``.classes`` (index -> name). The file-backed
# builders check the validation images' headers (``verify_val``), so that a bad file is named
# (``on_bad_image=fail``) or dropped (``skip``) before any training.
ImageData = tuple[Optional[Dataset], Dataset, int]


def image_transforms(*, img_size: int, aug: Mapping[str, Any], mean: Sequence[float],
                     std: Sequence[float]) -> tuple[Callable, Callable]:
    """timm's training and evaluation transforms for the ``data.aug`` settings."""
    mean, std = tuple(mean), tuple(std)
    train = create_transform(
        img_size, is_training=True, scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]), hflip=aug["hflip"],
        color_jitter=aug["color_jitter"], auto_augment=aug["auto_augment"] or None,
        interpolation=aug["interpolation"], re_prob=aug["re_prob"], mean=mean, std=std)
    val = create_transform(img_size, is_training=False, interpolation=aug["interpolation"], crop_pct=aug["crop_pct"],
                           mean=mean, std=std)
    return train, val


def folder_class_to_idx(root: Path) -> dict[str, int]:
    """Class indices of a ``root/<class>/<image>`` folder, as :class:`ImageFolderDataset` assigns
    them, from the folder names alone (no walk over the images)."""
    return {c: i for i, c in enumerate(class_folders(root))}


def _checked_class_names(class_names: Optional[Sequence[str]]) -> Optional[list[str]]:
    if class_names is None:
        return None
    names = [str(c) for c in class_names]
    duplicates = sorted(c for c, n in Counter(names).items() if n > 1)
    if duplicates or not names:
        raise ValueError(f"class_names must be a non-empty list of distinct class names; got {_listing(names)}"
                         + (f" (repeated: {duplicates})" if duplicates else ""))
    return names


def _checked_num_classes(wanted: Optional[int], classes: Sequence[str], origin: str) -> int:
    """``len(classes)``; a ``data.num_classes`` that disagrees is an error (it would fail later as
    'Target 2 is out of bounds', or train a head with classes that never occur)."""
    if wanted is not None and int(wanted) != len(classes):
        raise ValueError(f"data.num_classes={wanted} but {origin} give {len(classes)} classes {_listing(classes)}; "
                         f"set data.num_classes={len(classes)}, or null to take the count from the data")
    return len(classes)


def embedded_image_data(*, img_size: int, num_classes: int, train_size: int, val_size: int, seed: int,
                        noise: float, eval_only: bool = False,
                        class_names: Optional[Sequence[str]] = None) -> ImageData:
    """The embedded shapes set (:class:`ShapesDataset`)."""
    class_names = _checked_class_names(class_names)
    expected = list(SHAPE_CLASSES[:num_classes])
    if class_names is not None and class_names != expected:
        raise ValueError(f"class_names {_listing(class_names)} do not match the embedded set's classes {expected} "
                         f"(data.num_classes={num_classes}): its labels are fixed by the generator; "
                         "evaluate that model on the data it was trained on")
    common = dict(img_size=img_size, num_classes=num_classes, noise=noise)
    # distinct seeds: validation images are new draws, not copies of training ones
    train = None if eval_only else ShapesDataset(train_size, seed=seed, train=True, **common)
    val = ShapesDataset(val_size, seed=seed + 1_000_003, **common)
    return train, val, num_classes


def folder_image_data(*, root: Optional[str], train_split: str, val_split: str, img_size: int,
                      num_classes: Optional[int], on_bad_image: str, verify_val: bool, mean: Sequence[float],
                      std: Sequence[float], aug: Mapping[str, Any], eval_only: bool = False,
                      class_names: Optional[Sequence[str]] = None) -> ImageData:
    """ImageNet-style folders ``root/<train_split>/<class>/*`` and ``root/<val_split>/<class>/*``."""
    class_names = _checked_class_names(class_names)
    train_tf, val_tf = image_transforms(img_size=img_size, aug=aug, mean=mean, std=std)
    if not root:
        raise ValueError("data=folder needs data.root=DIR holding train/<class>/ and val/<class>/ image folders")
    root = Path(str(root))
    train_dir, val_dir = root / train_split, root / val_split
    class_to_idx, origin = None, f"the class folders of {train_dir}"
    if class_names is not None:
        class_to_idx = {c: i for i, c in enumerate(class_names)}
        origin = "class_names"
    train = None
    if not eval_only:
        train = ImageFolderDataset(train_dir, train_tf, class_to_idx, on_bad_image, classes_from=origin)
        absent = sorted(set(train.classes) - set(class_folders(train_dir)))
        if absent:
            log.warning("classes %s of class_names have no folder in %s: the model never sees them in training",
                        _listing(absent), train_dir)
        class_to_idx = train.class_to_idx
    elif class_to_idx is None and train_dir.is_dir():  # the class order of training, without listing its images
        class_to_idx = folder_class_to_idx(train_dir)
    elif class_to_idx is None:
        origin = f"the class folders of {val_dir}"
        log.warning("evaluating without %s and without a class list: labels follow the class folders of %s in "
                    "natural order; if that folder lacks a class the model was trained on, every later label is "
                    "shifted (keep the training folder, or pass the model's class names)", train_dir, val_dir)
    val = ImageFolderDataset(val_dir, val_tf, class_to_idx, on_bad_image, allow_empty_classes=True,
                             classes_from=origin)
    num_classes = _checked_num_classes(num_classes, val.classes, origin)
    if verify_val:
        val.verify_files(f"the validation set {val.root}")
    return train, val, num_classes


def hf_image_data(*, path: Optional[str], load_kwargs: Optional[Mapping[str, Any]], image_column: str,
                  label_column: str, train_split: str, val_split: str, img_size: int, num_classes: Optional[int],
                  on_bad_image: str, verify_val: bool, mean: Sequence[float], std: Sequence[float],
                  aug: Mapping[str, Any], eval_only: bool = False,
                  class_names: Optional[Sequence[str]] = None) -> ImageData:
    """A local Hugging Face image dataset (``save_to_disk`` output or a local ``load_dataset`` folder)."""
    class_names = _checked_class_names(class_names)
    train_tf, val_tf = image_transforms(img_size=img_size, aug=aug, mean=mean, std=std)
    ds = load_local_splits(path, (train_split, val_split), option="hf", load_kwargs=load_kwargs)
    splits = {"train": train_split, "val": val_split}
    names = {key: hf_class_names(ds[split], label_column) for key, split in splits.items()}
    own = names["train"] or names["val"]  # the data set's own class names, if its labels have any
    if eval_only:
        del splits["train"]  # nothing is read from it
    if class_names is None and names["train"] and names["val"] and names["train"] != names["val"]:
        raise ValueError(f"{path}: the {train_split!r} and {val_split!r} splits name "
                         f"their classes differently ({_listing(names['train'])} vs {_listing(names['val'])})")
    label_map = None
    if class_names is not None and own is not None:  # match the data set's class names to the given list
        unknown = [c for c in own if c not in class_names]
        if unknown:
            raise ValueError(f"{path}: classes {_listing(unknown)} of column {label_column!r} are "
                             f"not in class_names {_listing(class_names)}")
        label_map = [class_names.index(c) for c in own]
    kw = dict(image_column=image_column, label_column=label_column, on_bad_image=on_bad_image, label_map=label_map)
    tfs = {"train": train_tf, "val": val_tf}
    sets = {key: HFImageDataset(ds[split], transform=tfs[key], name=f"{path}:{split}", **kw)
            for key, split in splits.items()}
    if class_names is not None or own is not None:
        classes = class_names or own
        num_classes = _checked_num_classes(num_classes, classes, "class_names" if class_names else
                                           f"the ClassLabel names of column {label_column!r}")
    else:  # bare integer labels: data.num_classes, or as many as the largest label needs
        num_classes = num_classes or 1 + max(max(s.labels, default=0) for s in sets.values())
        classes = [f"class_{i}" for i in range(num_classes)]
    for dataset in sets.values():
        dataset.classes = list(classes)
        top = max(dataset.labels, default=0)
        if top >= num_classes:
            raise ValueError(f"{dataset.name}: label {top} (row {dataset.labels.index(top)}) is out of range for "
                             f"data.num_classes={num_classes}; set data.num_classes to at least {top + 1}, or null")
    val = sets["val"]
    if verify_val:
        val.verify_files(f"the validation set {val.name}")
    return sets.get("train"), val, num_classes
