"""Image classification data from a ``data`` config: the builders (the ``_target_`` of
``bixt/configs/imagenet/data/*.yaml``) and the timm transforms.

:func:`embedded_image_data` (the generated shapes of :mod:`bixt.data.shapes`),
:func:`folder_image_data` and :func:`hf_image_data` (the file readers of :mod:`bixt.data.image_files`)
each return a :class:`~bixt.data.task_data.TaskData` of ``(image tensor (3, H, W), label)`` datasets;
every dataset has ``classes`` (label index -> name), and the validation images' headers are
checked when the data is built, so bad files surface before training.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence

from timm.data import create_transform

from bixt.constraints import Range
from bixt.data.hf import load_local_splits
from bixt.data.image_files import HFImageDataset, ImageFolderDataset, class_folders, hf_class_names, _listing
from bixt.data.shapes import SHAPE_CLASSES, ShapesDataset
from bixt.data.task_data import TaskData

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ from config
# The task's data builders, named by ``_target_`` in bixt/configs/imagenet/data/*.yaml (which hold
# every default). Each returns a ``TaskData``; its ``train`` is ``None`` when
# ``eval_only`` (nothing is read or generated for it). ``class_names`` (e.g. stored with a
# checkpoint) fixes the labels: label i is ``class_names[i]``; a class folder (or ``ClassLabel``
# name) not in the list is an error, a listed class missing from the data just has no samples.
# Without it, labels follow the sorted class folders of ``train/`` (of ``val/`` when evaluating
# without ``train/``). Every returned dataset has ``.classes`` (index -> name). The file-backed
# builders check the validation images' headers (``verify_val``), so that a bad file is named
# (``on_bad_image=fail``) or dropped (``skip``) before any training.


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


def embedded_image_data(*, img_size: Annotated[int, Range(min=8)],
                        num_classes: Annotated[int, Range(min=2, max=len(SHAPE_CLASSES))],
                        train_size: Annotated[int, Range(min=0)], val_size: Annotated[int, Range(min=1)], seed: int,
                        noise: Annotated[float, Range(min=0.0)], eval_only: bool = False,
                        class_names: Optional[Sequence[str]] = None) -> TaskData:
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
    return TaskData(train, val, class_names=val.classes, num_classes=num_classes)


def folder_image_data(*, root: Optional[str], train_split: str, val_split: str, img_size: Annotated[int, Range(min=1)],
                      num_classes: Optional[Annotated[int, Range(min=1)]], on_bad_image: Literal["fail", "skip"],
                      verify_val: bool, mean: Sequence[float],
                      std: Sequence[float], aug: Mapping[str, Any], eval_only: bool = False,
                      class_names: Optional[Sequence[str]] = None) -> TaskData:
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
                    "shifted without an error. To fix the order, create %s/<class>/ for every class the model was "
                    "trained on (empty folders suffice)", train_dir, val_dir, train_dir)
    val = ImageFolderDataset(val_dir, val_tf, class_to_idx, on_bad_image, allow_empty_classes=True,
                             classes_from=origin)
    num_classes = _checked_num_classes(num_classes, val.classes, origin)
    if verify_val:
        val.verify_files(f"the validation set {val.root}")
    return TaskData(train, val, class_names=(train if train is not None else val).classes, num_classes=num_classes)


def hf_image_data(*, path: Optional[str], load_kwargs: Optional[Mapping[str, Any]], image_column: str,
                  label_column: str, train_split: str, val_split: str, img_size: Annotated[int, Range(min=1)],
                  num_classes: Optional[Annotated[int, Range(min=1)]], on_bad_image: Literal["fail", "skip"],
                  verify_val: bool, mean: Sequence[float], std: Sequence[float],
                  aug: Mapping[str, Any], eval_only: bool = False,
                  class_names: Optional[Sequence[str]] = None) -> TaskData:
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
    return TaskData(sets.get("train"), val, class_names=classes, num_classes=num_classes)
