"""ShapeNetPart through PyG's reader, with per-file checks and a processed cache.

Samples are in the format of :mod:`bixt.data.partseg`. The user's ShapeNetPart folder is treated
as read-only: PyG wants ``root/raw`` and writes ``root/processed``, so :func:`load_shapenetpart`
builds ``<cache_dir>/shapenetpart-<hash>/raw`` out of symlinks to the user's folders and lets PyG
write its processed files next to it. The processed files are keyed on the size and modification
time of every split and shape file they were made from (and on the reader version): any edit gets
them processed again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.datasets import ShapeNet

from bixt.data.cache import default_cache_dir
from bixt.data.errors import DataError
from bixt.data.partseg import PartSegInfo

log = logging.getLogger(__name__)

__all__ = ["SHAPENET_FOLDER", "SHAPENET_INFO", "READER_VERSION", "ShapeNetPartDataError", "ShapeNetPartMissingError",
           "load_shapenetpart"]

#: Name of the extracted ShapeNetPart archive folder.
SHAPENET_FOLDER = "shapenetcore_partanno_segmentation_benchmark_v0_normal"

SHAPENET_INFO = PartSegInfo(
    tuple(ShapeNet.category_ids), tuple(tuple(ShapeNet.seg_classes[c]) for c in ShapeNet.category_ids), 50
)

_SPLIT_FILE = "shuffled_{}_file_list.json"


class ShapeNetPartDataError(DataError, ValueError):
    """A ShapeNetPart input file or folder is malformed; the message names it."""


class ShapeNetPartMissingError(ShapeNetPartDataError, FileNotFoundError):
    """A ShapeNetPart folder or file is missing (also a FileNotFoundError, for callers catching that)."""


def _find_shapenet_folder(root: str | os.PathLike) -> Path:
    """The folder holding ``train_test_split``: ``root`` itself, ``root/<archive folder>`` or ``root/raw``."""
    root = Path(root).expanduser()
    for candidate in (root, root / SHAPENET_FOLDER, root / "raw"):
        if (candidate / "train_test_split").is_dir():
            return candidate.resolve()
    if not root.exists():
        raise ShapeNetPartMissingError(f"ShapeNetPart root {str(root)!r} does not exist")
    raise ShapeNetPartMissingError(
        f"no ShapeNetPart data under {str(root)!r}: expected a 'train_test_split' folder in it or in "
        f"{str(root / SHAPENET_FOLDER)!r}. Point data.root at the extracted {SHAPENET_FOLDER} folder "
        "(or the folder holding it)"
    )


def _split_names(folder: Path, split: str) -> list[str]:
    """Shape paths ``<synset>/<id>.txt`` listed by a split file, in file order."""
    path = folder / "train_test_split" / _SPLIT_FILE.format(split)
    if not path.is_file():
        raise ShapeNetPartMissingError(
            f"split file {str(path)!r} is missing; ShapeNetPart needs train_test_split/"
            f"{_SPLIT_FILE.format('{train,val,test}')}"
        )
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ShapeNetPartDataError(f"split file {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.count("/") >= 2 for e in entries):
        raise ShapeNetPartDataError(
            f"split file {str(path)!r} must be a JSON list of 'shape_data/<synset>/<shape id>' strings"
        )
    # PyG drops the leading 'shape_data/' in the same way.
    return [osp.join(*e.split("/")[1:]) + ".txt" for e in entries]


#: Part of the processed-cache key: bump when reading or checking shape files changes, so that
#: caches written by an older reader are processed again.
READER_VERSION = "2"
_COLUMNS = "'x y z nx ny nz label'"


def _read_shape_rows(raw_path: str, path: str) -> np.ndarray:
    """The (N, 7) float64 rows of one shape file; errors name the user's ``path``."""
    if osp.getsize(raw_path) == 0:
        raise ShapeNetPartDataError(f"shape file {path!r} is empty (an empty cloud)")
    try:
        rows = np.loadtxt(raw_path, dtype=np.float64, ndmin=2)  # ndmin: a one-row file stays 2-D
    except ValueError as err:  # ragged or non-numeric rows
        raise ShapeNetPartDataError(f"could not parse shape file {path!r} ({err}); expected rows {_COLUMNS}") from None
    if rows.shape[0] == 0:
        raise ShapeNetPartDataError(f"shape file {path!r} is empty (an empty cloud)")
    if rows.shape[1] != 7:
        raise ShapeNetPartDataError(f"shape file {path!r} has {rows.shape[1]} columns, expected 7 ({_COLUMNS} per row)")
    return rows


def _validate_rows(rows: np.ndarray, path: str, allowed: Sequence[int]) -> None:
    """Reject what would otherwise turn silently into wrong labels or NaN predictions."""
    bad_rows = ~np.isfinite(rows).all(axis=1)
    if bad_rows.any():
        raise ShapeNetPartDataError(f"shape file {path!r} has NaN/inf coordinates, normals or labels "
                         f"(0-based rows {np.flatnonzero(bad_rows)[:5].tolist()}...)")
    labels = rows[:, 6]
    fractional = labels != np.round(labels)
    if fractional.any():  # a cast to long would truncate 1.7 to 1 without a word
        row = int(np.argmax(fractional))
        raise ShapeNetPartDataError(f"shape file {path!r} has a non-integer part label {labels[row]:g} in 0-based "
                                    f"row {row}; labels must be whole numbers")
    wrong = sorted(set(labels.astype(np.int64).tolist()) - set(allowed))
    if wrong:
        raise ShapeNetPartDataError(f"shape file {path!r} has part labels {wrong} outside its category's labels "
                                    f"{list(allowed)}")
    pos = rows[:, :3]
    if (pos.max(axis=0) == pos.min(axis=0)).all():  # no extent: normalising it to the unit sphere divides by 0
        raise ShapeNetPartDataError(f"shape file {path!r} has {len(pos)} point(s), all at {pos[0].tolist()}: a shape "
                                    "needs points at two or more positions; remove it from the split files")


class _CheckedShapeNet(ShapeNet):
    """PyG's ShapeNet reader with per-file checks whose errors name the user's file.

    The per-file parse is PyG's (same tensors, same order), done here so that rows can be checked
    before their labels are cast to integers and a one-row file is read as one point.
    """

    def __init__(self, root: str, source: Path, **kwargs) -> None:
        self.source = source  # the user's folder, for error messages
        super().__init__(root, **kwargs)

    # The cache may be a shared folder: no file in it may run code when read. PyG's own loading
    # retries a refused file with weights_only=False, and its _process unpickles pre_transform.pt and
    # pre_filter.pt that way, so both are replaced by loads that only take tensors and plain data.
    def _process(self) -> None:
        if self.force_reload or not all(osp.isfile(p) for p in self.processed_paths):
            os.makedirs(self.processed_dir, exist_ok=True)
            self.process()  # no pre_transform / pre_filter to record: bixt passes neither

    def load(self, path: str, data_cls: type = Data) -> None:
        out = load_processed(path, Path(self.root))
        data, self.slices = out[0], out[1]
        self.data = Data.from_dict(data) if isinstance(data, dict) else data

    def process_filenames(self, filenames: list[str]) -> list[Data]:
        category_index = {ShapeNet.category_ids[c]: i for i, c in enumerate(self.categories)}
        name_of = {v: k for k, v in ShapeNet.category_ids.items()}
        data_list = []
        for name in filenames:
            synset = name.split(osp.sep)[0]
            if synset not in category_index:
                continue
            user_path, raw_path = str(self.source / name), osp.join(self.raw_dir, name)
            if not osp.isfile(raw_path):
                raise ShapeNetPartMissingError(f"shape file {user_path!r} is listed in a split file but does not exist")
            rows = _read_shape_rows(raw_path, user_path)
            _validate_rows(rows, user_path, ShapeNet.seg_classes[name_of[synset]])
            table = torch.from_numpy(rows).float()
            data = Data(pos=table[:, :3], x=table[:, 3:6], y=torch.from_numpy(rows[:, 6]).long(),
                        category=category_index[synset])
            if self.pre_filter is not None and not self.pre_filter(data):
                continue
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)
        return data_list


def load_processed(path: str | os.PathLike, cache_root: Path) -> tuple:
    """A processed file of the cache, read with ``weights_only=True`` (tensors and plain data only,
    never code); anything else is refused naming the file and the fix."""
    def refuse(why: str) -> ShapeNetPartDataError:
        return ShapeNetPartDataError(
            f"the processed cache file {str(path)!r} {why}; it was not written by bixt's ShapeNetPart reader (or is "
            f"damaged) and is not loaded: delete the cache folder {str(cache_root)!r} (it is made again from "
            "data.root) or set data.force_reload=true")

    try:
        out = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unsafe pickle, a truncated file, ...
        # torch's own text would suggest loading it unsafely: only its type is shown
        raise refuse(f"cannot be read as tensors and plain data ({type(err).__name__})") from None
    if not (isinstance(out, tuple) and len(out) in (2, 3) and isinstance(out[0], (dict, Data))
            and (out[1] is None or isinstance(out[1], dict))):  # None: a split of one shape
        raise refuse("does not hold (data, slices)")
    return out


def _input_fingerprint(folder: Path, split_names: dict[str, list[str]], categories: Sequence[str]) -> str:
    """Identity of everything processing reads: the split files and every listed shape file of the
    chosen categories (path, size, mtime in ns), with the reader version and the categories.

    A change of any file, not only of their number, then means the processed cache is stale.
    """
    synsets = {ShapeNet.category_ids[c] for c in categories}
    files = [osp.join("train_test_split", _SPLIT_FILE.format(s)) for s in ("train", "val", "test")]
    files += sorted({n for names in split_names.values() for n in names if n.split(osp.sep)[0] in synsets})
    digest = hashlib.sha1(f"reader {READER_VERSION}; categories {list(categories)}\n".encode())
    for rel in files:
        try:
            stat = os.stat(folder / rel)
            identity = f"{stat.st_size} {stat.st_mtime_ns}"
        except FileNotFoundError:  # processing reports it by name
            identity = "missing"
        digest.update(f"{rel}\0{identity}\n".encode())
    return digest.hexdigest()


def _fingerprint_file(cache_root: Path, categories: Sequence[str]) -> Path:
    # named like PyG's processed files for these categories, next to them
    key = "_".join(c[:3].lower() for c in categories)
    return cache_root / "processed" / f"{key}_inputs.sha1"


def _check_categories(folder: Path, categories: Sequence[str], split_names: dict[str, list[str]],
                      chosen: bool) -> None:
    """Each category the user chose has shapes on disk (the default, every synset folder present,
    may include empty ones), and each split lists some of them (PyG fails with an IndexError on a
    split without shapes)."""
    def has_shapes(category: str) -> bool:
        synset = folder / ShapeNet.category_ids[category]
        if not synset.is_dir():
            return False
        with os.scandir(synset) as entries:
            return any(True for _ in entries)

    missing = [c for c in categories if not has_shapes(c)] if chosen else []
    if missing:
        present = [c for c in ShapeNet.category_ids if has_shapes(c)]
        raise ShapeNetPartDataError(f"data.categories: no shapes of {missing} in {str(folder)!r} (synset folders "
                         f"{[ShapeNet.category_ids[c] for c in missing]} are missing or empty); categories with "
                         f"shapes there: {present}")
    synsets = {ShapeNet.category_ids[c] for c in categories}
    for split, names in split_names.items():
        if not any(n.split(osp.sep)[0] in synsets for n in names):
            path = folder / "train_test_split" / _SPLIT_FILE.format(split)
            raise ShapeNetPartDataError(f"split file {str(path)!r} lists no shapes of the categories "
                                        f"{list(categories)}; every split needs some")

def _link_raw(folder: Path, cache_root: Path) -> None:
    """``cache_root/raw`` mirrors ``folder`` with symlinks; absent synsets become empty folders there.

    PyG only skips its download when every synset folder and ``train_test_split`` exist under
    ``raw``, so folders for categories the user does not have are created (empty) in the cache.
    """
    raw = cache_root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for entry in list(ShapeNet.category_ids.values()) + ["train_test_split"]:
        link, target = raw / entry, folder / entry
        if link.is_symlink() and Path(os.readlink(link)) != target:
            link.unlink()
        if target.exists():
            if link.is_dir() and not link.is_symlink():  # an empty placeholder from an earlier run
                link.rmdir()
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)
        elif not link.exists():
            link.mkdir()


def load_shapenetpart(
    root: str | os.PathLike,
    split: str,
    categories: Optional[Sequence[str]] = None,
    cache_dir: Optional[str | os.PathLike] = None,
    force_reload: bool = False,
) -> tuple[ShapeNet, list[str], PartSegInfo]:
    """ShapeNetPart split through PyG, processed into a cache (the user's folder is never written).

    Args:
        root: the extracted ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` folder, the
            folder holding it, or a PyG root with that folder as ``raw``.
        split: ``train``, ``val``, ``trainval`` or ``test``.
        categories: category names (e.g. ``["Airplane", "Chair"]``), each with shapes on disk; None:
            every category whose synset folder exists.
        cache_dir: where processed files go (default ``$BIXT_CACHE`` or ``~/.cache/bixt``); they
            are made again when any input file changed (size or modification time).
        force_reload: process again even if nothing changed.

    Returns:
        ``(dataset, names, info)``: PyG dataset (items have ``pos``, ``x`` normals, ``y`` global
        labels, ``category`` indexing ``info.category_names``), the user-side path of each item,
        and the :class:`PartSegInfo` of the chosen categories (labels stay global, 0-49).
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be one of train, val, trainval, test; got {split!r}")
    folder = _find_shapenet_folder(root)
    split_names = {s: _split_names(folder, s) for s in ("train", "val", "test")}  # checks all three exist
    chosen = categories is not None
    if categories is None:
        categories = [c for c, sid in ShapeNet.category_ids.items() if (folder / sid).is_dir()]
        if not categories:
            raise ShapeNetPartMissingError(f"no synset folders (e.g. 02691156 for Airplane) found in {str(folder)!r}")
    categories = list(categories)
    unknown = [c for c in categories if c not in ShapeNet.category_ids]
    if unknown:
        raise ValueError(f"unknown ShapeNetPart categories {unknown}; choose from {list(ShapeNet.category_ids)}")
    _check_categories(folder, categories, split_names, chosen)
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_root = cache_root / f"shapenetpart-{digest}"
    _link_raw(folder, cache_root)
    # PyG reprocesses only when processed files are missing: an edited shape file would be ignored
    fingerprint, marker = _input_fingerprint(folder, split_names, categories), _fingerprint_file(cache_root, categories)
    stale = not marker.is_file() or marker.read_text().strip() != fingerprint
    if stale and not force_reload and marker.parent.is_dir():
        log.info("ShapeNetPart files changed since %s was processed (or it predates this check): processing again",
                 cache_root)
    dataset = _CheckedShapeNet(str(cache_root), folder, categories=categories, include_normals=True,
                               split=split, force_reload=force_reload or stale)
    if stale or force_reload:
        tmp = marker.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(fingerprint + "\n")
        os.replace(tmp, marker)  # atomic: a concurrent reader sees the old marker or the new one
    wanted = {ShapeNet.category_ids[c] for c in categories}
    listed = split_names["train"] + split_names["val"] if split == "trainval" else split_names[split]
    names = [str(folder / n) for n in listed if n.split(osp.sep)[0] in wanted]
    if len(names) != len(dataset):  # processed with other files than the split lists now: stale cache
        raise RuntimeError(
            f"the processed cache {str(cache_root)!r} holds {len(dataset)} {split} shapes but the split file lists "
            f"{len(names)}; the data changed since it was processed: delete the cache folder or set "
            "data.force_reload=true"
        )
    log.info("ShapeNetPart %s: %d shapes of %d categories (processed cache %s)", split, len(dataset),
             len(categories), cache_root)
    return dataset, names, SHAPENET_INFO.subset(categories)

