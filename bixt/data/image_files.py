"""Image classification data read from files: ImageNet-style folders and local Hugging Face datasets.

* :class:`ImageFolderDataset`: ``root/<split>/<class>/**/*.jpg|png`` (class index = natural-sorted
  folder names, or the order of a given class list).
* :class:`HFImageDataset`: a Hugging Face ``datasets`` image split stored locally; labels are integer
  class indices.

Unreadable images raise :class:`BadImageError` naming the file (``on_bad_image: fail``) or are
replaced by the next readable sample and counted, with a warning naming the file (``skip``).
"""
from __future__ import annotations

import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps
from timm.data import get_img_extensions
from torch.utils.data import Dataset

from bixt.data.errors import DataError

log = logging.getLogger(__name__)


class BadImageError(DataError, RuntimeError):
    """An image file that cannot be read or decoded (``message`` names the file, also from a DataLoader worker)."""



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
        return open_rgb(self._source(index))

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


def open_rgb(source: Any) -> Image.Image:
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

    def __init__(self, split, image_column: str = "image", label_column: Optional[str] = "label",
                 transform: Optional[Callable] = None, on_bad_image: str = "fail", name: str = "dataset",
                 classes: Optional[Sequence[str]] = None, label_map: Optional[Sequence[int]] = None):
        from datasets import Image as HFImage

        for col in (image_column, label_column):
            if col is not None and col not in split.column_names:
                raise KeyError(f"{name} has no column {col!r}; columns: {split.column_names} "
                               "(set data.image_column / data.label_column)")
        self.split = split.cast_column(image_column, HFImage(decode=False))
        self.image_column, self.label_column = image_column, label_column
        self.name = name
        if label_column is None:  # unlabelled images (pre-training): every label 0, never read
            self.labels = [0] * len(self.split)
        else:
            self.labels = _integer_labels(self.split[label_column], f"{name} column {label_column!r}")
        if label_map is not None:
            self.labels = [int(label_map[y]) for y in self.labels]
        if classes is None and label_column is not None:
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
