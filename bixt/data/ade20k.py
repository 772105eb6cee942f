"""ADE20K semantic segmentation data: the ``ADEChallengeData2016`` folder, a local Hugging Face
``datasets`` copy, and the embedded procedural scenes, all as one :class:`SegmentationDataset`.

* ``ade20k``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png``, paired by file stem (:func:`read_ade20k_split`). The
  annotations hold 0 = "other" and 1..150 = the classes; with ``reduce_zero_label`` (the ADE20K
  protocol) 0 becomes the ignore value 255 and k becomes k - 1. ``num_classes`` serves a folder in the
  same layout with another label set. The folder is only read.
* ``ade20k_hf``: a local ``datasets`` copy with an image and an annotation column
  (``scene_parse_150``: ``image``, ``annotation``), ``save_to_disk`` output or a folder of parquet
  files; same label rules.
* ``scenes``: :mod:`bixt.data.scenes`, generated in memory (labels already 0..C-1).

Samples are ``{"image": float (3, H, W) normalised with the ImageNet mean/std, "labels": long (H, W)
(255 = ignore), "name": str}``. Checking every pixel of 20k training annotations up front would take
minutes, so their label values are checked when a sample is loaded (:class:`ADE20KDataError` names
the file, the value, its pixel count and the valid range); the (smaller) evaluation split is scanned
when its dataset is made (:meth:`SegmentationDataset.check_label_values`), so that a bad value is not
found hours into a run, at the first evaluation. Pairing (by file stem, Unicode-normalised),
single-channel annotations and matching sizes are checked when the split is read (modes and sizes
come from the headers, no decoding). Images are used upright as viewers show them (the EXIF
Orientation tag applied), and so are annotations.
"""
from __future__ import annotations

import io
import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from bixt.constraints import Ascending, Node, Range
from bixt.data.errors import DataError
from bixt.data.hf import load_local_splits
from bixt.data.scenes import SCENE_CLASSES, make_scenes
from bixt.data.seg_transforms import IGNORE_INDEX, SegEvalTransform, SegTrainTransform, as_pair, collate_segmentation
from bixt.data.task_data import TaskData

log = logging.getLogger(__name__)

__all__ = ["ADE20K_CLASSES", "ADE20KDataError", "ADE_FOLDER", "read_ade20k_split", "SegmentationDataset",
           "scenes_data", "ade20k_data", "ade20k_hf_data", "class_names_for", "map_labels"]

ADE_FOLDER = "ADEChallengeData2016"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: annotation modes that hold one value per pixel (a palette PNG stores indices, read as such)
SINGLE_CHANNEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")

#: The 150 classes of the ADE20K SceneParsing benchmark (objectInfo150), label k + 1 in the files.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150


class ADE20KDataError(DataError, ValueError):
    """A segmentation input is missing or malformed; the message names the file, what was found and
    what was expected (``.message``: the same text in the main process when a DataLoader worker raised it)."""


def class_names_for(num_classes: int) -> list[str]:
    """The ADE20K names for 150 classes, ``class_<i>`` for another label set."""
    if num_classes == len(ADE20K_CLASSES):
        return list(ADE20K_CLASSES)
    return [f"class_{i}" for i in range(num_classes)]


def _listing(names: Sequence[str], limit: int = 5) -> str:
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# ---------------------------------------------------------------------------------- label values
def _value_counts(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if raw.dtype == np.uint8:  # the usual PNG: a bincount is much faster than np.unique
        counts = np.bincount(raw.ravel(), minlength=256)
        values = np.nonzero(counts)[0]
        return values, counts[values]
    return np.unique(raw, return_counts=True)


def map_labels(raw: np.ndarray, num_classes: int, reduce_zero_label: bool, where: str) -> torch.Tensor:
    """File values -> training labels (long, 255 = ignore), or :class:`ADE20KDataError` for a value
    outside the label set, naming ``where``, the value, its pixel count and the valid range."""
    _check_values(*_value_counts(raw), num_classes, reduce_zero_label, where)
    labels = torch.from_numpy(raw.astype(np.int64, copy=False))
    if reduce_zero_label:
        labels = torch.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1)
    return labels


def _check_values(values: np.ndarray, counts: np.ndarray, num_classes: int, reduce_zero_label: bool,
                  where: str) -> int:
    """The number of labelled (not ignored) pixels among file ``values`` with ``counts``, or
    :class:`ADE20KDataError` for a value outside the label set."""
    low, high = (1, num_classes) if reduce_zero_label else (0, num_classes - 1)
    bad = [(int(v), int(c)) for v, c in zip(values, counts)
           if not (low <= v <= high) and v != IGNORE_INDEX and not (reduce_zero_label and v == 0)]
    if bad:
        value, count = bad[0]
        others = f" (and {len(bad) - 1} other bad value(s): {[v for v, _ in bad[1:6]]})" if len(bad) > 1 else ""
        zero = "0 = other (ignored), " if reduce_zero_label else ""
        raise ADE20KDataError(
            f"{where}: label value {value} in {count} pixel(s){others}; expected {zero}{low}..{high} for "
            f"data.num_classes={num_classes}, or {IGNORE_INDEX} (ignore). Set data.num_classes for a folder with "
            "another label set, or fix the annotation")
    return int(sum(c for v, c in zip(values, counts) if low <= v <= high))


def _annotation_array(img: Image.Image, where: str) -> np.ndarray:
    if img.mode not in SINGLE_CHANNEL_MODES:
        if img.mode == "1":
            found, fix = "mode 1 (1-bit black and white: two values, not class indices)", "Save it as mode L with " \
                "the class index of each pixel"
        else:
            found, fix = f"mode {img.mode} ({len(img.getbands())} channels)", "A colour-coded mask must be " \
                "converted to class indices first"
        raise ADE20KDataError(f"{where}: annotation has {found}; expected a single-channel label image (PNG mode L, P "
                              f"or I;16) holding one class index per pixel. {fix}")
    # a palette (P) PNG stores the class index as the palette index: np.asarray reads the index, not the colour
    return np.asarray(img)


# ---------------------------------------------------------------------------------- folder reader
def ade_root(root: str | os.PathLike) -> Path:
    """The ``ADEChallengeData2016`` folder: ``root`` itself or the one inside it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.root={str(root)!r} does not exist; expected the extracted {ADE_FOLDER} folder "
                                "(images/{training,validation}, annotations/{training,validation}) or its parent")
    for candidate in (root, root / ADE_FOLDER):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(f"{root} holds neither images/ and annotations/ nor {ADE_FOLDER}/ with them; expected "
                            f"data.root to be the extracted {ADE_FOLDER} folder or the folder holding it")


def _files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; the {ADE_FOLDER} layout has images/<split>/*.jpg and "
                                "annotations/<split>/*.png")
    found: dict[str, Path] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        path = Path(entry.path)
        if path.suffix.lower() in suffixes:
            # one name typed on two systems may arrive composed (NFC, macOS-copied files: NFD): pair by the text
            stem = unicodedata.normalize("NFC", path.stem)
            if stem in found:
                twins = " (the same name in two Unicode normalisations, NFC and NFD)" \
                    if found[stem].stem != path.stem else ""
                raise ADE20KDataError(f"{folder}: two files for {stem!r}{twins} ({found[stem].name!r}, "
                                      f"{path.name!r}); keep one")
            found[stem] = path
    return found


def read_ade20k_split(root: str | os.PathLike, split: str = "training", num_classes: int = 150,
                      check_headers: bool = True) -> list[tuple[Path, Path]]:
    """``(image, annotation)`` path pairs of one split, matched by file stem and sorted by it.

    An image without an annotation, or an annotation without an image, is an error listing the
    first few of each and their counts. With ``check_headers`` every pair's PNG/JPEG header is read
    (no pixels): an annotation that is not single-channel, or whose size differs from its image's,
    is an error naming the file(s) and what was found. Label values are checked per sample when
    it is loaded (:func:`map_labels`).
    """
    if num_classes < 1:
        raise ValueError(f"data.num_classes={num_classes}: expected >= 1")
    base = ade_root(root)
    images = _files(base / "images" / split, IMAGE_SUFFIXES)
    annotations = _files(base / "annotations" / split, (".png",))
    no_ann = sorted(set(images) - set(annotations))
    no_img = sorted(set(annotations) - set(images))
    if no_ann or no_img:
        parts = []
        if no_ann:
            parts.append(f"{len(no_ann)} image(s) in {base / 'images' / split} without an annotation "
                         f"annotations/{split}/<name>.png: {_listing([images[s].name for s in no_ann])}")
        if no_img:
            parts.append(f"{len(no_img)} annotation(s) in {base / 'annotations' / split} without an image "
                         f"images/{split}/<name>.jpg: {_listing([annotations[s].name for s in no_img])}")
        raise ADE20KDataError("; ".join(parts) + ". Every image needs the annotation of the same name (and the "
                              "reverse): add the missing files or remove the unpaired ones")
    if not images:
        raise ADE20KDataError(f"no images (*.jpg) in {base / 'images' / split}")
    pairs = [(images[s], annotations[s]) for s in sorted(images)]
    if check_headers:
        # header reads wait on storage more than on the CPU; list() re-raises the first error in order
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda pair: check_pair(*pair), pairs))
    return pairs


def check_pair(image_path: Path, ann_path: Path) -> None:
    """Single-channel annotation of the image's size (headers only)."""
    try:
        with Image.open(ann_path) as ann:
            if ann.mode not in SINGLE_CHANNEL_MODES:
                _annotation_array(ann, str(ann_path))  # raises the mode error
            ann_size, ann_turned = _upright_size(ann)
        with Image.open(image_path) as img:
            img_size, img_turned = _upright_size(img)
    except ADE20KDataError:
        raise
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise ADE20KDataError(f"cannot read the header of {ann_path} or {image_path}: {type(err).__name__}: {err}; "
                              "replace or remove the pair") from None
    if img_size != ann_size:
        raise ADE20KDataError(_size_mismatch(str(ann_path), ann_size, f"its image {image_path}", img_size,
                                             img_turned, ann_turned))


#: EXIF Orientation values that swap width and height (a quarter turn, possibly mirrored)
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    return int(img.getexif().get(0x0112, 1) or 1)  # 0x0112: the EXIF Orientation tag


def _upright_size(img: Image.Image) -> tuple[tuple[int, int], int]:
    """``(width, height)`` as shown once the EXIF orientation is applied (header only), and the orientation."""
    orientation = _orientation(img)
    w, h = img.size
    return ((h, w) if orientation in _QUARTER_TURNS else (w, h)), orientation


def _upright(img: Image.Image) -> Image.Image:
    """The image as every viewer shows it: the EXIF Orientation tag (phones store rotation there) applied."""
    return ImageOps.exif_transpose(img) if _orientation(img) != 1 else img  # no copy for an untagged one


def _size_mismatch(ann_where: str, ann_size: tuple[int, int], image_what: str, img_size: tuple[int, int],
                   img_orientation: int, ann_orientation: int = 1) -> str:
    """The message for an annotation whose (upright) size is not its image's; it names the EXIF
    orientation when that is what makes them differ."""
    text = (f"{ann_where}: annotation is {ann_size[0]}x{ann_size[1]} (WxH) but {image_what} is "
            f"{img_size[0]}x{img_size[1]}")
    turned = (img_orientation in _QUARTER_TURNS) != (ann_orientation in _QUARTER_TURNS)
    if turned and ann_size == img_size[::-1]:
        tagged, tag, other = ("the image", img_orientation, "the annotation") if img_orientation in _QUARTER_TURNS \
            else ("the annotation", ann_orientation, "the image")
        return (f"{text} as shown upright: {tagged} has EXIF Orientation={tag} (a quarter turn) and {other} matches "
                f"its stored, unturned pixels. Images and annotations are used as viewers show them: make the "
                "annotation match the upright image, or remove the Orientation tag if the pixels are already upright")
    return f"{text}; expected the same size (labels are per pixel)"


# ---------------------------------------------------------------------------------- sources
class _NamedBytes(io.BytesIO):
    """Bytes whose repr names the sample, so PIL's errors say which one is broken."""

    def __init__(self, data: bytes, where: str) -> None:
        super().__init__(data)
        self.where = where

    def __repr__(self) -> str:
        return self.where


def _rgb_tensor(source: Any, where: str) -> tuple[torch.Tensor, int]:
    """The upright image (3, H, W) uint8 and its EXIF orientation."""
    try:
        with Image.open(source) as img:
            orientation = _orientation(img)
            rgb = np.asarray(_upright(img).convert("RGB"))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for broken files
        raise ADE20KDataError(f"cannot read image {where}: {type(err).__name__}: {err}; replace or remove it") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(), orientation


def _annotation(source: Any, where: str) -> np.ndarray:
    try:
        img = Image.open(source)
        img.load()
    except Exception as err:  # noqa: BLE001
        raise ADE20KDataError(f"cannot read annotation {where}: {type(err).__name__}: {err}; "
                              "replace or remove it") from None
    with img:
        return _annotation_array(_upright(img), where)  # upright like its image (annotations rarely carry the tag)


def _annotation_value_counts(source: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    return _value_counts(_annotation(source, where))


class _FolderSource:
    def __init__(self, pairs: Sequence[tuple[Path, Path]], num_classes: int, reduce_zero_label: bool) -> None:
        self.pairs = list(pairs)
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label

    def __len__(self) -> int:
        return len(self.pairs)

    def annotations(self) -> list[tuple[Any, str]]:
        """``(source, where)`` of every annotation, for the label scan."""
        return [(ann, str(ann)) for _, ann in self.pairs]

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        image_path, ann_path = self.pairs[index]
        image, orientation = _rgb_tensor(image_path, str(image_path))
        raw = _annotation(ann_path, str(ann_path))
        if raw.shape != tuple(image.shape[-2:]):
            raise ADE20KDataError(_size_mismatch(str(ann_path), raw.shape[::-1], f"its image {image_path}",
                                                 (image.shape[2], image.shape[1]), orientation))
        return image, map_labels(raw, self.num_classes, self.reduce_zero_label, str(ann_path)), image_path.stem


class _HFSource:
    def __init__(self, split: Any, name: str, image_column: str, label_column: str, num_classes: int,
                 reduce_zero_label: bool) -> None:
        from datasets import Image as HFImage

        for col, key in ((image_column, "data.image_column"), (label_column, "data.label_column")):
            if col not in split.column_names:
                raise ADE20KDataError(f"{name} has no column {col!r}; columns: {split.column_names} (set {key})")
            if not isinstance(split.features[col], HFImage):
                raise ADE20KDataError(f"{name}: column {col!r} is {split.features[col]}, expected an Image feature "
                                      f"(encoded JPEG/PNG); set {key} to the image column")
        # raw bytes: decoding here lets errors name the row, and the annotation keeps its own mode
        self.split = split.cast_column(image_column, HFImage(decode=False)).cast_column(label_column,
                                                                                          HFImage(decode=False))
        self.name, self.image_column, self.label_column = name, image_column, label_column
        self.num_classes, self.reduce_zero_label = num_classes, reduce_zero_label

    def __len__(self) -> int:
        return len(self.split)

    def _where(self, item: dict, index: int, what: str) -> str:
        path = item.get("path")
        return f"{self.name}[{index}].{what}" + (f" ({path})" if path else "")

    def _src(self, item: dict, where: str) -> Any:
        return _NamedBytes(item["bytes"], where) if item.get("bytes") else item["path"]

    def annotations(self) -> Any:
        """``(source, where)`` of every annotation, for the label scan (read lazily, one row at a time)."""
        column = self.split.select_columns([self.label_column])
        for index in range(len(column)):
            item = column[index][self.label_column]
            where = self._where(item, index, self.label_column)
            yield self._src(item, where), where

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        row = self.split[index]
        img_item, ann_item = row[self.image_column], row[self.label_column]
        img_where = self._where(img_item, index, self.image_column)
        ann_where = self._where(ann_item, index, self.label_column)
        image, orientation = _rgb_tensor(self._src(img_item, img_where), img_where)
        raw = _annotation(self._src(ann_item, ann_where), ann_where)
        if raw.shape != tuple(image.shape[-2:]):
            raise ADE20KDataError(_size_mismatch(ann_where, raw.shape[::-1], "the image", (image.shape[2],
                                                 image.shape[1]), orientation))
        stem = Path(img_item["path"]).stem if img_item.get("path") else f"{index:08d}"
        return image, map_labels(raw, self.num_classes, self.reduce_zero_label, ann_where), stem


class _TensorSource:
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, prefix: str) -> None:
        self.images, self.labels, self.prefix = images, labels, prefix

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        return self.images[index], self.labels[index].long(), f"{self.prefix}_{index:06d}"


class SegmentationDataset(Dataset):
    """Map-style dataset over a source of ``(image uint8 (3, H, W), labels (H, W), name)``, applying
    a joint ``transform(image, labels) -> (image float, labels long)``.

    ``check_labels``: scan every annotation's values now (:meth:`check_label_values`); None (the
    default) does so for an evaluation set (a :class:`SegEvalTransform`), whose samples would
    otherwise be read first at the first evaluation, possibly hours into a run.
    """

    def __init__(self, *, source: Any, transform: Callable, class_names: Sequence[str],
                 check_labels: Optional[bool] = None) -> None:
        self.source = source
        self.transform = transform
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if check_labels if check_labels is not None else isinstance(transform, SegEvalTransform):
            self.check_label_values()

    def check_label_values(self, threads: int = 8) -> int:
        """Every annotation's values checked against the label set (:class:`ADE20KDataError` naming
        the file and the ``data.*`` keys); returns the number of labelled pixels and warns when there
        is none (every metric would be 0 without meaning)."""
        if isinstance(self.source, _TensorSource):
            labelled = int((self.source.labels != IGNORE_INDEX).sum())
            where = f"the {self.source.prefix} split"
        else:
            annotations = self.source.annotations()
            from tqdm import tqdm

            source = self.source
            with ThreadPoolExecutor(threads) as pool:  # PNG decoding releases the GIL
                counts = pool.map(lambda item: (item[1], _annotation_value_counts(*item)), annotations)
                counts = tqdm(counts, total=len(source), desc="checking label values", unit="file",
                              disable=len(source) < 500, leave=False)
                labelled = sum(_check_values(values, count, source.num_classes, source.reduce_zero_label, name)
                               for name, (values, count) in counts)
            where = f"the {len(source)} annotations"
        if labelled == 0:
            log.warning("%s hold no labelled pixel (every value is ignored%s): every IoU and accuracy on them is 0 "
                        "without meaning; check the annotations and data.reduce_zero_label", where,
                        ", 0 included: data.reduce_zero_label=true" if getattr(self.source, "reduce_zero_label", False)
                        else "")
        return labelled

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, labels, name = self.source.load(index)
        image, labels = self.transform(image, labels)
        return {"image": image, "labels": labels, "name": name}


# ------------------------------------------------------------------------- builders (data=<option>)
Positive = Annotated[int, Range(min=1)]
Size = Annotated[int, Range(min=0)]


def _transforms(*, crop_size: Optional[Union[Positive, Sequence[Positive]]] = None,
                scale: Optional[Sequence[Positive]] = None,
                ratio_range: Optional[Annotated[Sequence[float], Ascending()]] = None,
                cat_max_ratio: Optional[Annotated[float, Range(min=0.0, max=1.0, open_min=True)]] = 1.0,
                flip_prob: Annotated[float, Range(min=0.0, max=1.0)] = 0.5, photometric: bool = True,
                test_scale: Optional[Sequence[Positive]] = None,
                ) -> tuple[SegTrainTransform, SegEvalTransform]:
    """The training and evaluation pipelines from the flat ``data.*`` pipeline keys."""
    as_pair(crop_size, "data.crop_size")
    train = SegTrainTransform(crop_size=crop_size, scale=scale, ratio_range=ratio_range,
                              cat_max_ratio=float(cat_max_ratio or 1.0), flip_prob=float(flip_prob),
                              photometric=bool(photometric), ignore_index=IGNORE_INDEX)
    return train, SegEvalTransform(scale=test_scale)


def _labelled_classes(num_classes: int, class_names: Optional[Sequence[str]]) -> list[str]:
    classes = [str(c) for c in class_names] if class_names else class_names_for(int(num_classes))
    if len(classes) != int(num_classes):
        raise ValueError(f"data.class_names has {len(classes)} names but data.num_classes={num_classes}; give one name "
                         "per class, or null for the defaults")
    return classes


def scenes_data(*, seed: int, train_size: Size, val_size: Size, img_size: Positive,
                num_classes: Annotated[int, Range(min=2, max=len(SCENE_CLASSES))], noise: Annotated[float, Range(min=0.0)],
                max_objects: Annotated[int, Range(min=2)], hue_jitter: Annotated[float, Range(min=0.0)],
                eval_only: bool = False, **pipeline: Annotated[Any, Node(_transforms)]) -> TaskData:
    """The embedded procedural scenes (:mod:`bixt.data.scenes`); ``train`` is None with ``eval_only``."""
    train_tf, val_tf = _transforms(**pipeline)
    classes = list(SCENE_CLASSES[:int(num_classes)])
    gen = dict(seed=int(seed), size=int(img_size), num_classes=int(num_classes), noise=float(noise),
               max_objects=int(max_objects), hue_jitter=float(hue_jitter))
    train = None
    if not eval_only:
        source = _TensorSource(*make_scenes(int(train_size), split="train", **gen), "train")
        train = SegmentationDataset(source=source, transform=train_tf, class_names=classes)
    source = _TensorSource(*make_scenes(int(val_size), split="val", **gen), "val")
    val = SegmentationDataset(source=source, transform=val_tf, class_names=classes)
    return TaskData(train, val, class_names=classes, collate_fn=collate_segmentation)


def ade20k_data(*, root: Optional[str], num_classes: Positive, class_names: Optional[Sequence[str]],
                reduce_zero_label: bool, train_split: str, val_split: str, check_headers: bool,
                eval_only: bool = False, **pipeline: Annotated[Any, Node(_transforms)]) -> TaskData:
    """An ``ADEChallengeData2016``-layout folder (read only); ``train`` is None with ``eval_only``."""
    if not root:
        raise ValueError(f"data=ade20k needs data.root=DIR, the extracted {ADE_FOLDER} folder (or its parent)")
    train_tf, val_tf = _transforms(**pipeline)
    classes = _labelled_classes(num_classes, class_names)

    def split_set(split: str, transform: Callable) -> SegmentationDataset:
        pairs = read_ade20k_split(root, split, int(num_classes), check_headers=bool(check_headers))
        return SegmentationDataset(source=_FolderSource(pairs, int(num_classes), bool(reduce_zero_label)),
                                   transform=transform, class_names=classes)

    train = None if eval_only else split_set(train_split, train_tf)
    return TaskData(train, split_set(val_split, val_tf), class_names=classes, collate_fn=collate_segmentation)


def ade20k_hf_data(*, path: Optional[str], image_column: str, label_column: str, num_classes: Positive,
                   class_names: Optional[Sequence[str]], reduce_zero_label: bool, train_split: str, val_split: str,
                   load_kwargs: Optional[dict] = None, eval_only: bool = False,
                   **pipeline: Annotated[Any, Node(_transforms)]) -> TaskData:
    """A local Hugging Face copy with an image and an annotation column; same label rules as ade20k."""
    train_tf, val_tf = _transforms(**pipeline)
    classes = _labelled_classes(num_classes, class_names)
    ds = load_local_splits(path, (train_split, val_split), option="ade20k_hf", load_kwargs=load_kwargs)

    def split_set(split: str, transform: Callable) -> SegmentationDataset:
        source = _HFSource(ds[split], f"{path}:{split}", image_column, label_column, int(num_classes),
                           bool(reduce_zero_label))
        return SegmentationDataset(source=source, transform=transform, class_names=classes)

    train = None if eval_only else split_set(train_split, train_tf)
    return TaskData(train, split_set(val_split, val_tf), class_names=classes, collate_fn=collate_segmentation)
