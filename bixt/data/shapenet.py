"""Part-segmentation data: ShapeNetPart through PyG's reader, and an embedded procedural set.

Both produce the same sample format, a ``torch_geometric.data.Data`` with ``pos`` (N, 3) float,
``x`` (N, 3) normals, ``y`` (N,) long global part labels and ``category`` (1,) long, described
by a :class:`PartSegInfo` (category names and each category's part labels).

The user's ShapeNetPart folder is treated as read-only: PyG wants ``root/raw`` and writes
``root/processed``, so :func:`load_shapenetpart` builds ``<cache_dir>/shapenetpart-<hash>/raw``
out of symlinks to the user's folders and lets PyG write its processed files next to it. The
processed files are keyed on the size and modification time of every split and shape file they
were made from (and on the reader version): any edit gets them processed again.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import os.path as osp
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch_geometric.transforms as T
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.datasets import ShapeNet
from torch_geometric.utils import to_dense_batch

from bixt.data.surfaces import Parts as _Parts
from bixt.data.surfaces import box as _box, ellipsoid as _ellipsoid, frustum as _frustum, torus_arc as _torus_arc
from bixt.data.surfaces import rot_x as _rot_x, rot_y as _rot_y, rot_z as _rot_z
from bixt.engine.reproducibility import host_rngs_restored, seed_host_rngs
from bixt.metrics.partseg import make_part_mask

log = logging.getLogger(__name__)

__all__ = [
    "PartSegInfo",
    "NormalizeScale",
    "SHAPENET_INFO",
    "SYNTHETIC_INFO",
    "SHAPENET_FOLDER",
    "make_synthetic_partseg",
    "load_shapenetpart",
    "PointCloudDataset",
    "build_point_transform",
    "collate_point_clouds",
    "build_partseg_datasets",
    "IGNORE_LABEL",
]

#: Name of the extracted ShapeNetPart archive folder.
SHAPENET_FOLDER = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
#: Label value of padded points in a batch (``cross_entropy``'s default ignore index).
IGNORE_LABEL = -100


@dataclass(frozen=True)
class PartSegInfo:
    """Categories of a part-segmentation set and the global part labels each one owns."""

    category_names: tuple[str, ...]
    seg_classes: tuple[tuple[int, ...], ...]
    num_classes: int

    @property
    def num_categories(self) -> int:
        return len(self.category_names)

    @property
    def part_mask(self) -> torch.Tensor:
        """(num_categories, num_classes) bool, True where a label belongs to the category."""
        return make_part_mask(self.seg_classes, self.num_classes)

    def subset(self, names: Sequence[str]) -> "PartSegInfo":
        index = {n: i for i, n in enumerate(self.category_names)}
        return PartSegInfo(tuple(names), tuple(self.seg_classes[index[n]] for n in names), self.num_classes)


SHAPENET_INFO = PartSegInfo(
    tuple(ShapeNet.category_ids), tuple(tuple(ShapeNet.seg_classes[c]) for c in ShapeNet.category_ids), 50
)


# --------------------------------------------------------------------------------------------
# Embedded procedural set
# --------------------------------------------------------------------------------------------
# Global part labels, ShapeNet-style: each category owns a contiguous range.
_SYNTHETIC_PARTS = {
    "Table": ("top", "leg"),
    "Chair": ("seat", "back", "leg"),
    "Lamp": ("base", "pole", "shade"),
    "Mug": ("body", "handle"),
    "Airplane": ("fuselage", "wing", "tail"),
    "Rocket": ("body", "fin", "nose"),
}


def _synthetic_info() -> PartSegInfo:
    seg, start = [], 0
    for parts in _SYNTHETIC_PARTS.values():
        seg.append(tuple(range(start, start + len(parts))))
        start += len(parts)
    return PartSegInfo(tuple(_SYNTHETIC_PARTS), tuple(seg), start)


SYNTHETIC_INFO = _synthetic_info()


def _legs(parts: _Parts, label: int, width: float, depth: float, height: float, thickness: float, inset: float):
    for sx in (-1, 1):
        for sz in (-1, 1):
            size = (thickness, height, thickness)
            parts.add(lambda r, n, s=size: _box(r, n, s), 2 * height * thickness, label,
                      (sx * (width / 2 - inset), height / 2, sz * (depth / 2 - inset)))


def _table(rng, parts, base):
    w, d, h, t, lw = rng.uniform(0.8, 1.4), rng.uniform(0.5, 1.0), rng.uniform(0.5, 0.9), rng.uniform(0.03, 0.08), \
        rng.uniform(0.04, 0.1)
    parts.add(lambda r, n: _box(r, n, (w, t, d)), 2 * w * d, base, (0, h - t / 2, 0))
    _legs(parts, base + 1, w, d, h - t, lw, rng.uniform(lw, 0.15))


def _chair(rng, parts, base):
    w, d, h, t = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.5), rng.uniform(0.03, 0.07)
    bh, bt = rng.uniform(0.4, 0.7), rng.uniform(0.03, 0.06)
    parts.add(lambda r, n: _box(r, n, (w, t, d)), 2 * w * d, base, (0, h - t / 2, 0))
    tilt = _rot_x(rng.uniform(-0.25, 0.0))
    parts.add(lambda r, n: _box(r, n, (w, bh, bt)), 2 * w * bh, base + 1, (0, h + bh / 2, -d / 2 + bt / 2), tilt)
    lw = rng.uniform(0.03, 0.06)
    _legs(parts, base + 2, w, d, h - t, lw, lw)


def _lamp(rng, parts, base):
    br, bh = rng.uniform(0.15, 0.3), rng.uniform(0.03, 0.08)
    pr, pl = rng.uniform(0.015, 0.03), rng.uniform(0.5, 1.0)
    sb, st, sh = rng.uniform(0.2, 0.35), rng.uniform(0.06, 0.15), rng.uniform(0.2, 0.35)
    parts.add(lambda r, n: _frustum(r, n, br, br, bh, True, True), 2 * math.pi * br * (br + bh), base)
    parts.add(lambda r, n: _frustum(r, n, pr, pr, pl), 2 * math.pi * pr * pl, base + 1, (0, bh, 0))
    parts.add(lambda r, n: _frustum(r, n, sb, st, sh), math.pi * (sb + st) * sh, base + 2, (0, bh + pl - sh * 0.3, 0))


def _mug(rng, parts, base):
    r0, h, flare = rng.uniform(0.3, 0.45), rng.uniform(0.6, 1.0), rng.uniform(1.0, 1.15)
    ring, tube = rng.uniform(0.15, 0.25) * h / 0.8, rng.uniform(0.03, 0.05)
    parts.add(lambda r, n: _frustum(r, n, r0, r0 * flare, h, bottom_cap=True),
              2 * math.pi * r0 * h + math.pi * r0 ** 2, base)
    parts.add(lambda r, n: _torus_arc(r, n, ring, tube, -math.pi / 2, math.pi / 2), math.pi * ring * 2 * math.pi * tube,
              base + 1, (r0 + tube, h / 2, 0))


def _airplane(rng, parts, base):
    length, radius = rng.uniform(1.5, 2.2), rng.uniform(0.1, 0.18)
    span, chord, wt = rng.uniform(1.4, 2.2), rng.uniform(0.25, 0.45), rng.uniform(0.02, 0.05)
    sweep = rng.uniform(0.0, 0.35)
    parts.add(lambda r, n: _ellipsoid(r, n, (length / 2, radius, radius)), 2.5 * length * radius * math.pi, base)
    wing_x = rng.uniform(-0.1, 0.2)
    for side in (-1, 1):
        parts.add(lambda r, n: _box(r, n, (chord, wt, span / 2)), chord * span, base + 1,
                  (wing_x, -radius * 0.3, side * span / 4), _rot_y(side * sweep))
    fin_h, fin_c, stab = rng.uniform(0.3, 0.45), rng.uniform(0.2, 0.3), rng.uniform(0.5, 0.8)
    tail_x = -length / 2 + fin_c / 2
    parts.add(lambda r, n: _box(r, n, (fin_c, fin_h, 0.02)), 2 * fin_c * fin_h, base + 2, (tail_x, fin_h / 2, 0))
    parts.add(lambda r, n: _box(r, n, (fin_c * 0.8, 0.02, stab)), 2 * fin_c * stab * 0.8, base + 2, (tail_x, 0.02, 0))


def _rocket(rng, parts, base):
    radius, h, nose = rng.uniform(0.12, 0.2), rng.uniform(1.0, 1.6), rng.uniform(0.25, 0.5)
    parts.add(lambda r, n: _frustum(r, n, radius, radius, h, bottom_cap=True), 2 * math.pi * radius * h, base)
    parts.add(lambda r, n: _frustum(r, n, radius, 0.005, nose), math.pi * radius * nose, base + 2, (0, h, 0))
    fins, fh, fl = int(rng.integers(3, 5)), rng.uniform(0.2, 0.4), rng.uniform(0.12, 0.25)
    start = rng.uniform(0, 2 * math.pi)
    for i in range(fins):
        angle = start + 2 * math.pi * i / fins
        rot = _rot_y(angle)
        parts.add(lambda r, n: _box(r, n, (fl, fh, 0.02)), 2 * fl * fh, base + 1,
                  rot @ np.array([radius + fl / 2, 0, 0]) + np.array([0, fh / 2, 0]), rot)


_BUILDERS = {"Table": _table, "Chair": _chair, "Lamp": _lamp, "Mug": _mug, "Airplane": _airplane, "Rocket": _rocket}


def make_synthetic_partseg(
    num_shapes: int,
    seed: int = 0,
    split: str = "train",
    points: tuple[int, int] = (1024, 1536),
    noise: float = 0.01,
    max_yaw_degrees: float = 45.0,
    max_tilt_degrees: float = 8.0,
) -> list[Data]:
    """Procedural part-segmentation shapes in the ShapeNetPart sample format (see module docstring).

    Categories cycle through :data:`SYNTHETIC_INFO` (balanced). Every shape draws its proportions,
    its number of points (``points`` range), a pose (yaw within ``max_yaw_degrees``, tilt within
    ``max_tilt_degrees``, random offset and scale) and Gaussian surface noise of std ``noise``
    (relative to a unit-size shape) from its own RNG stream ``(seed, split, index)``, so a shape
    does not depend on how many others are generated.
    """
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    data = []
    for i in range(num_shapes):
        rng = np.random.default_rng([seed, split_id, i])
        category = i % SYNTHETIC_INFO.num_categories
        name = SYNTHETIC_INFO.category_names[category]
        parts = _Parts(rng)
        _BUILDERS[name](rng, parts, SYNTHETIC_INFO.seg_classes[category][0])
        pos, normals, labels = parts.sample(int(rng.integers(points[0], points[1] + 1)))
        pos = pos - pos.mean(axis=0)
        extent = np.abs(pos).max()
        pos = pos + rng.normal(scale=noise * extent, size=pos.shape)
        yaw = math.radians(rng.uniform(-max_yaw_degrees, max_yaw_degrees))
        tilt = math.radians(max_tilt_degrees)
        rot = _rot_y(yaw) @ _rot_x(rng.uniform(-tilt, tilt)) @ _rot_z(rng.uniform(-tilt, tilt))
        pos = (pos @ rot.T) * rng.uniform(0.7, 1.3) + rng.uniform(-0.2, 0.2, size=3)
        data.append(Data(
            pos=torch.from_numpy(pos).float(),
            x=torch.from_numpy(normals @ rot.T).float(),
            y=torch.from_numpy(labels).long(),
            category=torch.tensor([category]),
        ))
    return data


# --------------------------------------------------------------------------------------------
# ShapeNetPart through PyG
# --------------------------------------------------------------------------------------------
_SPLIT_FILE = "shuffled_{}_file_list.json"


def _find_shapenet_folder(root: str | os.PathLike) -> Path:
    """The folder holding ``train_test_split``: ``root`` itself, ``root/<archive folder>`` or ``root/raw``."""
    root = Path(root).expanduser()
    for candidate in (root, root / SHAPENET_FOLDER, root / "raw"):
        if (candidate / "train_test_split").is_dir():
            return candidate.resolve()
    if not root.exists():
        raise FileNotFoundError(f"ShapeNetPart root {str(root)!r} does not exist")
    raise FileNotFoundError(
        f"no ShapeNetPart data under {str(root)!r}: expected a 'train_test_split' folder in it or in "
        f"{str(root / SHAPENET_FOLDER)!r}. Point data.root at the extracted {SHAPENET_FOLDER} folder "
        "(or the folder holding it)"
    )


def _split_names(folder: Path, split: str) -> list[str]:
    """Shape paths ``<synset>/<id>.txt`` listed by a split file, in file order."""
    path = folder / "train_test_split" / _SPLIT_FILE.format(split)
    if not path.is_file():
        raise FileNotFoundError(
            f"split file {str(path)!r} is missing; ShapeNetPart needs train_test_split/"
            f"{_SPLIT_FILE.format('{train,val,test}')}"
        )
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(entries, list) or not all(isinstance(e, str) and e.count("/") >= 2 for e in entries):
        raise ValueError(
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
        raise ValueError(f"shape file {path!r} is empty (an empty cloud)")
    try:
        rows = np.loadtxt(raw_path, dtype=np.float64, ndmin=2)  # ndmin: a one-row file stays 2-D
    except ValueError as err:  # ragged or non-numeric rows
        raise ValueError(f"could not parse shape file {path!r} ({err}); expected rows {_COLUMNS}") from None
    if rows.shape[0] == 0:
        raise ValueError(f"shape file {path!r} is empty (an empty cloud)")
    if rows.shape[1] != 7:
        raise ValueError(f"shape file {path!r} has {rows.shape[1]} columns, expected 7 ({_COLUMNS} per row)")
    return rows


def _validate_rows(rows: np.ndarray, path: str, allowed: Sequence[int]) -> None:
    """Reject what would otherwise turn silently into wrong labels or NaN predictions."""
    bad_rows = ~np.isfinite(rows).all(axis=1)
    if bad_rows.any():
        raise ValueError(f"shape file {path!r} has NaN/inf coordinates, normals or labels "
                         f"(0-based rows {np.flatnonzero(bad_rows)[:5].tolist()}...)")
    labels = rows[:, 6]
    fractional = labels != np.round(labels)
    if fractional.any():  # a cast to long would truncate 1.7 to 1 without a word
        row = int(np.argmax(fractional))
        raise ValueError(f"shape file {path!r} has a non-integer part label {labels[row]:g} in 0-based row {row}; "
                         "labels must be whole numbers")
    wrong = sorted(set(labels.astype(np.int64).tolist()) - set(allowed))
    if wrong:
        raise ValueError(f"shape file {path!r} has part labels {wrong} outside its category's labels {list(allowed)}")
    pos = rows[:, :3]
    if (pos.max(axis=0) == pos.min(axis=0)).all():  # no extent: normalising it to the unit sphere divides by 0
        raise ValueError(f"shape file {path!r} has {len(pos)} point(s), all at {pos[0].tolist()}: a shape needs "
                         "points at two or more positions; remove it from the split files")


class _CheckedShapeNet(ShapeNet):
    """PyG's ShapeNet reader with per-file checks whose errors name the user's file.

    The per-file parse is PyG's (same tensors, same order), done here so that rows can be checked
    before their labels are cast to integers and a one-row file is read as one point.
    """

    def __init__(self, root: str, source: Path, **kwargs) -> None:
        self.source = source  # the user's folder, for error messages
        super().__init__(root, **kwargs)

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
                raise FileNotFoundError(f"shape file {user_path!r} is listed in a split file but does not exist")
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
        raise ValueError(f"data.categories: no shapes of {missing} in {str(folder)!r} (synset folders "
                         f"{[ShapeNet.category_ids[c] for c in missing]} are missing or empty); categories with "
                         f"shapes there: {present}")
    synsets = {ShapeNet.category_ids[c] for c in categories}
    for split, names in split_names.items():
        if not any(n.split(osp.sep)[0] in synsets for n in names):
            raise ValueError(f"split file {str(folder / 'train_test_split' / _SPLIT_FILE.format(split))!r} lists no "
                             f"shapes of the categories {list(categories)}; every split needs some")


def _default_cache_dir() -> Path:
    return Path(os.environ.get("BIXT_CACHE", Path.home() / ".cache" / "bixt"))


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
            raise FileNotFoundError(f"no synset folders (e.g. 02691156 for Airplane) found in {str(folder)!r}")
    categories = list(categories)
    unknown = [c for c in categories if c not in ShapeNet.category_ids]
    if unknown:
        raise ValueError(f"unknown ShapeNetPart categories {unknown}; choose from {list(ShapeNet.category_ids)}")
    _check_categories(folder, categories, split_names, chosen)
    digest = hashlib.sha1(str(folder).encode()).hexdigest()[:12]
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
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


# --------------------------------------------------------------------------------------------
# Sampling, augmentation and batching
# --------------------------------------------------------------------------------------------
class NormalizeScale(T.BaseTransform):
    """PyG's ``NormalizeScale`` (centre, then scale the largest absolute coordinate to just under 1),
    except that a cloud whose points all coincide is moved to the origin and left unscaled: PyG's
    divides by its zero extent and returns NaN coordinates, which become NaN predictions."""

    def forward(self, data: Data) -> Data:
        if bool((data.pos == data.pos[:1]).all()):
            # exactly: subtracting the mean would leave rounding residue, which scaling then blows up
            data.pos = torch.zeros_like(data.pos)
            return data
        data.pos = data.pos - data.pos.mean(dim=-2, keepdim=True)
        data.pos = data.pos * ((1.0 / data.pos.abs().max()) * 0.999999)
        return data


def build_point_transform(
    num_points: Optional[int],
    train: bool,
    scale: Optional[Sequence[float]] = (0.8, 1.25),
    jitter: float = 0.0,
    rotate_degrees: float = 0.0,
) -> T.Compose:
    """PyG transforms: unit-sphere normalisation, a fixed-size sample (None: all points), and for
    training random scaling / per-point jitter / rotation about the up (y) axis.

    Rotation turns ``pos`` only (PyG leaves normals alone), so keep it 0 when normals are used.
    """
    transforms: list[Callable] = [NormalizeScale()]
    if num_points:
        # Without replacement; smaller clouds are topped up with as few duplicates as possible.
        transforms.append(T.FixedPoints(num_points, replace=False, allow_duplicates=True))
    if train:
        if scale:
            transforms.append(T.RandomScale(tuple(scale)))
        if jitter:
            transforms.append(T.RandomJitter(jitter))
        if rotate_degrees:
            transforms.append(T.RandomRotate(rotate_degrees, axis=1))
    return T.Compose(transforms)


class PointCloudDataset(Dataset):
    """Samples of a part-segmentation set, transformed, with checks that name the offending sample.

    Args:
        samples: indexable collection of ``Data`` (a list or a PyG dataset).
        transform: applied to a copy of each sample.
        names: a name per sample for error messages (e.g. its file path).
        min_points: every raw cloud must have at least this many points (e.g. the group count).
        fixed_seed: if set, the transform's randomness is seeded per index (``fixed_seed + index``)
            so that evaluation sees the same subsample every time and in any worker.
        include_normals: keep ``x`` (normals) as input features; otherwise drop it.
        num_classes: labels must lie in ``[0, num_classes)``.
    """

    def __init__(
        self,
        samples,
        transform: Optional[Callable] = None,
        names: Optional[Sequence[str]] = None,
        min_points: int = 1,
        fixed_seed: Optional[int] = None,
        include_normals: bool = False,
        num_classes: Optional[int] = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.names = list(names) if names is not None else None
        self.min_points = min_points
        self.fixed_seed = fixed_seed
        self.include_normals = include_normals
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"sample {index}"

    def __getitem__(self, index: int) -> Data:
        data = copy.copy(self.samples[index])  # transforms reassign attributes; keep the source intact
        n = 0 if data.pos is None else data.pos.shape[0]
        if n < self.min_points:
            raise ValueError(
                f"{self.name(index)} has {n} points, fewer than the {self.min_points} the model needs "
                "(its group count / group size); remove it or lower model.tokenizer.num_groups"
            )
        if not bool(torch.isfinite(data.pos).all()):
            raise ValueError(f"{self.name(index)} has NaN/inf coordinates")
        if n and bool((data.pos.amax(dim=0) == data.pos.amin(dim=0)).all()):
            raise ValueError(f"{self.name(index)} has {n} point(s), all at {data.pos[0].tolist()}: no shape to "
                             "segment (it cannot be scaled to the unit sphere); remove it")
        if self.num_classes is not None and data.y is not None and data.y.numel():
            lo, hi = int(data.y.min()), int(data.y.max())
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"{self.name(index)} has part labels in [{lo}, {hi}], outside [0, {self.num_classes})"
                )
        if not self.include_normals:
            data.x = None
        if self.transform is not None:
            if self.fixed_seed is None:
                data = self.transform(data)
            else:
                data = _seeded(self.transform, data, self.fixed_seed + index)
        return data


def _seeded(fn: Callable, data: Data, seed: int) -> Data:
    """Run ``fn`` under fixed torch / python / numpy RNG states without disturbing the callers'."""
    with host_rngs_restored():
        seed_host_rngs(seed)
        return fn(data)


def collate_point_clouds(data_list: Sequence[Data]) -> dict[str, torch.Tensor]:
    """Pads clouds of any sizes into a batch.

    Returns ``pos`` (B, N, 3), ``point_mask`` (B, N) bool, ``labels`` (B, N) with
    :data:`IGNORE_LABEL` at padded points, ``category`` (B,), and ``features`` (B, N, 3) when the
    samples carry normals (``x``).
    """
    sizes = torch.tensor([d.pos.shape[0] for d in data_list])
    batch_index = torch.repeat_interleave(torch.arange(len(data_list)), sizes)
    max_points = int(sizes.max())
    pos, point_mask = to_dense_batch(torch.cat([d.pos for d in data_list]), batch_index, max_num_nodes=max_points)
    labels, _ = to_dense_batch(torch.cat([d.y for d in data_list]), batch_index, fill_value=IGNORE_LABEL,
                               max_num_nodes=max_points)
    batch = {
        "pos": pos,
        "point_mask": point_mask,
        "labels": labels,
        "category": torch.cat([d.category.view(-1) for d in data_list]).long(),
    }
    if all(getattr(d, "x", None) is not None for d in data_list):
        batch["features"], _ = to_dense_batch(torch.cat([d.x for d in data_list]), batch_index,
                                              max_num_nodes=max_points)
    return batch


def build_partseg_datasets(
    data_cfg, min_points: int = 1
) -> tuple[PointCloudDataset, PointCloudDataset, dict[str, PointCloudDataset], PartSegInfo]:
    """Train / val / test sets from a ``data`` config node (see ``bixt/configs/shapenet_partseg/data``).

    ``data_cfg.name`` is ``synthetic`` (the embedded procedural set) or ``shapenetpart`` (``root``
    required). ``min_points`` is what the model needs per raw cloud (its group count / size).
    """
    name = data_cfg.get("name")
    num_points = data_cfg.get("num_points")
    if num_points is not None and num_points < min_points:
        raise ValueError(
            f"data.num_points={num_points} is smaller than the {min_points} points the model needs per cloud "
            "(model.tokenizer.num_groups / group_size); raise data.num_points or lower those"
        )
    augment = data_cfg.get("augment") or {}
    train_tf = build_point_transform(num_points, True, augment.get("scale"), augment.get("jitter", 0.0),
                                     augment.get("rotate_degrees", 0.0))
    eval_tf = build_point_transform(num_points, False)
    normals = bool(data_cfg.get("normals", False))
    # Evaluation subsamples are fixed per shape, so every evaluation sees the same points.
    eval_seed = int(data_cfg.get("eval_seed", 0))

    def wrap(samples, names, train: bool, info: PartSegInfo) -> PointCloudDataset:
        return PointCloudDataset(samples, train_tf if train else eval_tf, names, min_points=min_points,
                                 fixed_seed=None if train else eval_seed, include_normals=normals,
                                 num_classes=info.num_classes)

    if name == "synthetic":
        kwargs = dict(seed=int(data_cfg.get("seed", 0)), points=tuple(data_cfg.get("points_per_shape", (1024, 1536))),
                      noise=float(data_cfg.get("noise", 0.01)))
        info = SYNTHETIC_INFO

        def split(split_name: str, size: int, train: bool) -> PointCloudDataset:
            samples = make_synthetic_partseg(int(size), split=split_name, **kwargs)
            return wrap(samples, [f"synthetic {split_name} shape {i}" for i in range(len(samples))], train, info)

        train = split("train", data_cfg.train_size, True)
        val = split("val", data_cfg.val_size, False)
        tests = {"test": split("test", data_cfg.test_size, False)} if data_cfg.get("test_size") else {}
        return train, val, tests, info

    if name == "shapenetpart":
        root = data_cfg.get("root")
        if not root:
            raise ValueError("data=shapenetpart needs data.root=DIR (the extracted "
                             f"{SHAPENET_FOLDER} folder or the folder holding it)")
        common = dict(categories=data_cfg.get("categories"), cache_dir=data_cfg.get("cache_dir"),
                      force_reload=bool(data_cfg.get("force_reload", False)))

        def split(split_name: str, train: bool) -> tuple[PointCloudDataset, PartSegInfo]:
            samples, names, info = load_shapenetpart(root, split_name, **common)
            if len(samples) == 0:
                raise ValueError(f"the {split_name!r} split of {root!r} holds no shapes of the chosen categories")
            return wrap(samples, names, train, info), info

        train, info = split(data_cfg.get("train_split", "train"), True)
        val, _ = split(data_cfg.get("val_split", "val"), False)
        tests = {s: split(s, False)[0] for s in (data_cfg.get("test_splits") or [])}
        return train, val, tests, info

    raise ValueError(f"unknown data.name={name!r}; expected 'synthetic' or 'shapenetpart'")
