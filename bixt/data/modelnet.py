"""Point-cloud classification data: ModelNet40 (PointNet++'s ``modelnet40_normal_resampled``) and an
embedded procedural set of solids.

Both give the same sample format: a cloud ``(P, 6)`` float32 of rows ``x, y, z, nx, ny, nz`` (y up)
and a class index, held as one tensor ``points`` (S, P, 6) and ``labels`` (S,) per split, with the
class names. :class:`PointClassificationDataset` turns a sample into ``(points (num_points, 3 or 6),
label)``: unit-sphere normalisation (centre on the mean, largest distance from it = 1) and, for
training, random anisotropic scaling, translation and an optional rotation about the up axis.

The ModelNet40 folder is only read. Each split is parsed once into ``num_points`` points per shape
(the first ``num_points`` rows of each file, PointNet++'s default, or a farthest-point subsample)
and cached under ``cache_dir`` (default ``$BIXT_CACHE`` or ``~/.cache/bixt``), keyed on the size and
modification time of the names file, the split file and every listed shape file.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from bixt.constraints import Node, PositiveInterval, Range
from bixt.data.builder import check_num_points
from bixt.data.cache import default_cache_dir
from bixt.data.errors import DataError
from bixt.data.surfaces import Parts, box, ellipsoid, frustum, hemisphere, rot_x, rot_y, rot_z, torus_arc, triangle
from bixt.data.task_data import TaskData

log = logging.getLogger(__name__)

__all__ = [
    "MODELNET_FOLDER",
    "ModelNetDataError",
    "SOLID_CLASSES",
    "make_solids",
    "read_shape_file",
    "load_modelnet40",
    "PointClassificationDataset",
    "solids_data",
    "modelnet40_data",
]

#: Name of PointNet++'s resampled ModelNet40 folder.
MODELNET_FOLDER = "modelnet40_normal_resampled"
#: Part of the cache key: bump when reading or subsampling changes.
READER_VERSION = "1"
_SHAPE_ID = re.compile(r"^(?P<cls>.+)_(?P<num>\d+)$")


class ModelNetDataError(DataError, ValueError):
    """A ModelNet40 input file is malformed or missing; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------
# Embedded procedural set
# --------------------------------------------------------------------------------------------
def _sphere(rng, parts):
    r = rng.uniform(0.8, 1.2)
    parts.add(lambda g, n: ellipsoid(g, n, (r, r, r)), 4 * math.pi * r * r, 0)


def _ellipsoid(rng, parts):  # elongated well beyond what anisotropic scaling (at most 2.25x) makes of a sphere
    a = rng.uniform(2.6, 3.4)
    b = rng.uniform(0.9, 1.1)
    parts.add(lambda g, n: ellipsoid(g, n, (a, b, b * rng.uniform(0.9, 1.1))), 4 * math.pi * a * b, 0)


def _cube(rng, parts):
    s = np.array([1.0, 1.0, 1.0]) * rng.uniform(0.9, 1.1, size=3)
    parts.add(lambda g, n: box(g, n, s), 6.0, 0)


def _cylinder(rng, parts):
    r, h = rng.uniform(0.4, 0.6), rng.uniform(1.0, 1.6)
    parts.add(lambda g, n: frustum(g, n, r, r, h, True, True), 2 * math.pi * r * (r + h), 0, (0, -h / 2, 0))


def _disc(rng, parts):
    r, h = rng.uniform(0.8, 1.0), rng.uniform(0.03, 0.08)
    parts.add(lambda g, n: frustum(g, n, r, r, h, True, True), 2 * math.pi * r * (r + h), 0, (0, -h / 2, 0))


def _cone(rng, parts):
    r, h = rng.uniform(0.5, 0.7), rng.uniform(1.1, 1.6)
    parts.add(lambda g, n: frustum(g, n, r, 0.0, h, bottom_cap=True), math.pi * r * (r + math.hypot(r, h)), 0,
              (0, -h / 3, 0))


def _torus(rng, parts):
    ring, tube = rng.uniform(0.8, 1.0), rng.uniform(0.2, 0.35)
    parts.add(lambda g, n: torus_arc(g, n, ring, tube, 0.0, 2 * math.pi), 4 * math.pi ** 2 * ring * tube, 0)


def _pyramid(rng, parts):
    w, h = rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.3)
    corners = [(-w, 0, -w), (w, 0, -w), (w, 0, w), (-w, 0, w)]
    apex = (0.0, h, 0.0)
    side = w * math.hypot(w, h) * 2
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        parts.add(lambda g, n, a=a, b=b: triangle(g, n, a, apex, b), side, 0, (0, -h / 3, 0))
    for a, b, c in ((corners[0], corners[1], corners[2]), (corners[0], corners[2], corners[3])):  # the base
        parts.add(lambda g, n, a=a, b=b, c=c: triangle(g, n, a, b, c), 2 * w * w, 0, (0, -h / 3, 0))


def _capsule(rng, parts):
    r, h = rng.uniform(0.35, 0.5), rng.uniform(0.9, 1.4)
    parts.add(lambda g, n: frustum(g, n, r, r, h), 2 * math.pi * r * h, 0, (0, -h / 2, 0))
    parts.add(lambda g, n: hemisphere(g, n, r, up=True), 2 * math.pi * r * r, 0, (0, h / 2, 0))
    parts.add(lambda g, n: hemisphere(g, n, r, up=False), 2 * math.pi * r * r, 0, (0, -h / 2, 0))


def _bowl(rng, parts):  # an open half-sphere shell
    r = rng.uniform(0.8, 1.1)
    parts.add(lambda g, n: hemisphere(g, n, r, up=False), 2 * math.pi * r * r, 0)


#: The embedded classes, in label order.
SOLID_CLASSES = ("sphere", "ellipsoid", "cube", "cylinder", "disc", "cone", "torus", "pyramid", "capsule", "bowl")
_BUILDERS = {"sphere": _sphere, "ellipsoid": _ellipsoid, "cube": _cube, "cylinder": _cylinder, "disc": _disc,
             "cone": _cone, "torus": _torus, "pyramid": _pyramid, "capsule": _capsule, "bowl": _bowl}


def make_solids(num_shapes: int, seed: int = 0, split: str = "train", num_points: int = 1024,
                noise: float = 0.02, max_tilt_degrees: float = 15.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural solids in the ModelNet sample format: ``(points (S, P, 6) float32, labels (S,) long)``.

    Classes cycle through :data:`SOLID_CLASSES` (balanced). Every shape draws its proportions, a
    pose (any rotation about the up axis y, a tilt within ``max_tilt_degrees`` about x and z), a
    scale in [0.6, 1.4] and an offset in [-0.3, 0.3]^3 (both undone by the unit-sphere normalisation,
    as for real scans) and Gaussian surface noise of std ``noise`` (relative to its size) from its own
    RNG stream ``(seed, split, index)``: a shape does not depend on how many others are generated.
    """
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    points = np.empty((num_shapes, num_points, 6), dtype=np.float32)
    labels = np.empty(num_shapes, dtype=np.int64)
    for i in range(num_shapes):
        rng = np.random.default_rng([seed, split_id, i])
        label = i % len(SOLID_CLASSES)
        parts = Parts(rng)
        _BUILDERS[SOLID_CLASSES[label]](rng, parts)
        pos, normals, _ = parts.sample(num_points)
        order = rng.permutation(num_points)  # pieces come out in blocks: shuffle, so "first N" is uniform
        pos, normals = pos[order], normals[order]
        extent = np.linalg.norm(pos - pos.mean(axis=0), axis=1).max()
        pos = pos + rng.normal(scale=noise * extent, size=pos.shape)
        tilt = math.radians(max_tilt_degrees)
        rot = rot_y(rng.uniform(0, 2 * math.pi)) @ rot_x(rng.uniform(-tilt, tilt)) @ rot_z(rng.uniform(-tilt, tilt))
        pos = (pos @ rot.T) * rng.uniform(0.6, 1.4) + rng.uniform(-0.3, 0.3, size=3)
        points[i, :, :3], points[i, :, 3:] = pos, normals @ rot.T
        labels[i] = label
    return torch.from_numpy(points), torch.from_numpy(labels)


# --------------------------------------------------------------------------------------------
# ModelNet40 (modelnet40_normal_resampled)
# --------------------------------------------------------------------------------------------
def _find_modelnet_folder(root: str | os.PathLike, names_file: str) -> Path:
    root = Path(root).expanduser()
    for candidate in (root, root / MODELNET_FOLDER):
        if (candidate / names_file).is_file():
            return candidate.resolve()
    if not root.exists():
        raise FileNotFoundError(f"ModelNet40 root {str(root)!r} does not exist")
    raise FileNotFoundError(f"no ModelNet40 data under {str(root)!r}: expected {names_file} in it or in "
                            f"{str(root / MODELNET_FOLDER)!r}. Point data.root at the {MODELNET_FOLDER} folder")


def _text_lines(path: Path) -> list[str]:
    """The lines of a text file, UTF-8 with or without a byte-order mark (editors on Windows write one,
    and it would otherwise stick to the first name); a byte that is not UTF-8 is named by line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        lineno = data[:err.start].count(b"\n") + 1
        raise ModelNetDataError(f"{path}:{lineno}: byte {data[err.start:err.start + 1]!r} is not UTF-8 text; "
                                "save the file as UTF-8 (names are plain ASCII in ModelNet40)") from None


def _read_names(path: Path) -> list[str]:
    names = [line.strip() for line in _text_lines(path)]
    names = [n for n in names if n]
    if not names:
        raise ModelNetDataError(f"{str(path)!r} lists no class names (one per line expected)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelNetDataError(f"{str(path)!r} lists the class name(s) {dup} more than once")
    return names


def _shape_class(shape_id: str, classes: Sequence[str]) -> Optional[str]:
    """The class of ``<class>_<digits>``: the id with its trailing ``_<digits>`` stripped
    (``night_stand_0001`` -> ``night_stand``), if that is one of ``classes``."""
    match = _SHAPE_ID.match(shape_id)
    if match is None:
        return None
    return match.group("cls") if match.group("cls") in set(classes) else None


def _read_split(folder: Path, split_file: str, classes: Sequence[str]) -> list[tuple[Path, int, str]]:
    """``(shape file, label, 'split file:line')`` for every entry of a split file, checked."""
    path = folder / split_file
    if not path.is_file():
        raise FileNotFoundError(f"split file {str(path)!r} is missing; ModelNet40 needs modelnet40_train.txt and "
                                "modelnet40_test.txt listing <class>_<id> per line")
    index = {c: i for i, c in enumerate(classes)}
    entries, first_line = [], {}
    for lineno, line in enumerate(_text_lines(path), start=1):
        shape_id = line.strip()
        if not shape_id:
            continue
        where = f"{path}:{lineno}"
        if shape_id in first_line:
            first_line[shape_id].append(lineno)
            continue
        first_line[shape_id] = [lineno]
        cls = _shape_class(shape_id, classes)
        if cls is None:
            names_path = str(folder / "modelnet40_shape_names.txt")
            raise ModelNetDataError(f"{where}: shape {shape_id!r} does not name a class of {names_path!r} "
                                    "(entries are <class>_<digits> with <class> one of those names)")
        shape_file = folder / cls / f"{shape_id}.txt"
        if not shape_file.is_file():
            raise ModelNetDataError(f"{where}: shape {shape_id!r} is listed but {str(shape_file)!r} does not exist")
        entries.append((shape_file, index[cls], where))
    if not entries:
        raise ModelNetDataError(f"split file {str(path)!r} lists no shapes")
    repeated = {k: v for k, v in first_line.items() if len(v) > 1}
    if repeated:
        examples = ", ".join(f"{k!r} (lines {', '.join(map(str, v[:3]))})" for k, v in list(repeated.items())[:3])
        log.warning("%s lists %d shape(s) more than once, e.g. %s: each is read once; remove the repeats",
                    path, len(repeated), examples)
    return entries


def _warn_overlap(folder: Path, split_file: str, names: dict[str, str]) -> None:
    """Warn when the test split lists shapes of the training split: its accuracy would count shapes
    the model was trained on."""
    train_path, test_path = folder / split_file.format(split="train"), folder / split_file.format(split="test")
    if not train_path.is_file() or not test_path.is_file():
        return
    train_ids = {line.strip() for line in _text_lines(train_path)} - {""}
    both = [n for n in names if n in train_ids]
    if both:
        log.warning("%d shape(s) are listed in both %s and %s, e.g. %s: the test accuracy counts shapes the model "
                    "was trained on; remove them from one of the files", len(both), train_path, test_path,
                    ", ".join(both[:5]))


def _bad_line(path: Path, columns: int) -> Optional[str]:
    """Describes the first row of ``path`` that is not ``columns`` finite comma-separated numbers."""
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            cells = line.strip().split(",")
            if len(cells) != columns:
                return f"{path}:{lineno}: {len(cells)} columns, expected {columns} (x,y,z,nx,ny,nz)"
            try:
                values = [float(c) for c in cells]
            except ValueError:
                return f"{path}:{lineno}: not a number in {line.strip()!r}"
            if not all(math.isfinite(v) for v in values):
                return f"{path}:{lineno}: NaN/inf value in {line.strip()!r}"
    return None


def read_shape_file(path: str | os.PathLike, columns: int = 6) -> np.ndarray:
    """The (N, 6) float32 rows ``x,y,z,nx,ny,nz`` of one shape file; errors name the file and line."""
    path = Path(path)
    lines = [line for line in _text_lines(path) if line.strip()]
    if not lines:
        raise ModelNetDataError(f"shape file {str(path)!r} is empty (no points)")
    values = None
    if all(line.count(",") == columns - 1 for line in lines):  # every row has the right number of cells
        try:
            values = np.array(",".join(lines).split(","), dtype=np.float32)
        except ValueError:  # a cell that is not a number
            values = None
    if values is None or not np.isfinite(values).all():
        raise ModelNetDataError(f"bad row in shape file {_bad_line(path, columns) or str(path)}")
    return values.reshape(len(lines), columns)


def _read_usable_shape(path: Path, num_points: int, short: list[str]) -> np.ndarray:
    """A shape's rows, refused when they cannot make a cloud (all at one position: nothing to
    normalise to the unit sphere, nothing for the tokeniser's groups); noted in ``short`` when it
    has fewer than ``num_points`` rows (they are repeated)."""
    rows = read_shape_file(path)
    pos = rows[:, :3]
    if (pos.max(axis=0) == pos.min(axis=0)).all():
        raise ModelNetDataError(f"shape file {str(path)!r} has {len(rows)} point(s), all at {pos[0].tolist()}: a shape "
                                "needs points at two or more positions; remove it from the split file")
    if len(rows) < num_points:
        short.append(f"{path} ({len(rows)} points)")
    return rows


def _subsample(rows: np.ndarray, num_points: int, sampling: str) -> np.ndarray:
    n = rows.shape[0]
    if n < num_points:  # too few points: cycle through them (duplicates, as few as possible)
        return rows[np.arange(num_points) % n]
    if sampling == "first":
        return rows[:num_points]
    from bixt.tokenizers.point import farthest_point_sample

    index = farthest_point_sample(torch.from_numpy(rows[None, :, :3].copy()), num_points)[0].numpy()
    return rows[index]


def _fingerprint(files: Sequence[Path], num_points: int, sampling: str) -> str:
    digest = hashlib.sha1(f"reader {READER_VERSION}; points {num_points}; sampling {sampling}\n".encode())
    for path in files:
        st = path.stat()
        digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _load_cache(cache: Path) -> dict[str, torch.Tensor]:
    """A cached split, read with ``weights_only=True``: the cache may be a shared folder and no file
    in it may run code; anything but the two tensors written below is refused."""
    try:
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        ok = isinstance(blob, dict) and all(isinstance(blob.get(k), torch.Tensor) for k in ("points", "labels"))
        why = "does not hold the tensors 'points' and 'labels'"
    except Exception as err:  # noqa: BLE001 - an unsafe pickle, a truncated file, ...
        ok, why = False, f"cannot be read as tensors ({type(err).__name__})"
    if not ok:
        raise ModelNetDataError(f"the cache file {str(cache)!r} {why}; it was not written by bixt (or is damaged) and "
                                f"is not loaded: delete it, or its folder {str(cache.parent)!r}, to read the split "
                                "again (or set data.force_reload=true)")
    return blob


def load_modelnet40(root: str | os.PathLike, split: str = "train", num_points: int = 1024, sampling: str = "first",
                    cache_dir: Optional[str | os.PathLike] = None, force_reload: bool = False,
                    names_file: str = "modelnet40_shape_names.txt",
                    split_file: str = "modelnet40_{split}.txt",
                    ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """One split of ``modelnet40_normal_resampled``: ``(points (S, num_points, 6), labels (S,), classes, names)``.

    ``sampling``: ``first`` (the first ``num_points`` rows, as PointNet++) or ``fps`` (farthest-point
    subsample of all rows). Shapes with fewer rows repeat theirs. ``names`` are the shape files.
    """
    if sampling not in ("first", "fps"):
        raise ValueError(f"data.sampling must be 'first' or 'fps', got {sampling!r}")
    folder = _find_modelnet_folder(root, names_file)
    classes = _read_names(folder / names_file)
    split_name = split_file.format(split=split)
    entries = _read_split(folder, split_name, classes)
    files = [folder / names_file, folder / split_name] + [e[0] for e in entries]
    key = _fingerprint(files, num_points, sampling)
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache = cache_root / f"modelnet40-{hashlib.sha1(str(folder).encode()).hexdigest()[:12]}" / f"{split}-{key[:16]}.pt"
    names = [str(e[0]) for e in entries]
    if split == "test":
        _warn_overlap(folder, split_file, {e[0].stem: e[2] for e in entries})
    short: list[str] = []
    if cache.is_file() and not force_reload:
        blob = _load_cache(cache)
        log.info("ModelNet40 %s: %d shapes (cache %s)", split, len(names), cache)
        return blob["points"], blob["labels"], classes, names
    log.info("ModelNet40 %s: reading %d shape files from %s (cached in %s)", split, len(entries), folder, cache)
    points = np.stack([_subsample(_read_usable_shape(path, num_points, short), num_points, sampling)
                       for path, _, _ in entries])
    if short:
        log.warning("%d shape(s) of the %s split have fewer than data.num_points=%d points and repeat theirs, e.g. "
                    "%s", len(short), split, num_points, ", ".join(short[:3]))
    labels = torch.tensor([e[1] for e in entries], dtype=torch.long)
    blob = {"points": torch.from_numpy(points), "labels": labels}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, cache)  # atomic: a concurrent reader sees no file or the whole one
    return blob["points"], labels, classes, names


# --------------------------------------------------------------------------------------------
# Normalisation, augmentation, the dataset
# --------------------------------------------------------------------------------------------
class PointClassificationDataset(Dataset):
    """``(points (P, 3) or (P, 6) with normals, label)`` per shape, unit-sphere normalised.

    Training augmentation (global torch RNG, which the engine seeds per sample): per-axis scale in
    ``scale`` (normals transformed by the inverse and renormalised), translation in ``±translate``
    (after normalisation), rotation about the up (y) axis within ``±rotate_degrees`` (normals too).
    """

    def __init__(self, points: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, normals: bool = False,
                 train: bool = False, scale: Optional[Sequence[float]] = (2 / 3, 3 / 2), translate: float = 0.2,
                 rotate_degrees: float = 0.0, names: Optional[Sequence[str]] = None) -> None:
        if points.dim() != 3 or points.shape[-1] != 6 or points.shape[0] != labels.shape[0]:
            raise ValueError(f"points must be (S, P, 6) with one label per shape, got {tuple(points.shape)} and "
                             f"{tuple(labels.shape)}")
        self.points, self.labels, self.classes = points, labels.long(), list(classes)
        self.normals, self.train = normals, train
        self.scale, self.translate, self.rotate_degrees = scale, translate, rotate_degrees
        self.names = list(names) if names is not None else None

    def __len__(self) -> int:
        return self.points.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        cloud = self.points[index]
        pos, nrm = cloud[:, :3], cloud[:, 3:]
        pos = pos - pos.mean(dim=0)
        radius = pos.norm(dim=1).max()
        pos = pos / radius if radius > 0 else pos
        if self.train:
            if self.scale:
                lo, hi = self.scale
                s = torch.empty(3).uniform_(lo, hi)
                pos = pos * s
                nrm = nrm / s
            if self.rotate_degrees:
                a = math.radians(float(torch.empty(()).uniform_(-self.rotate_degrees, self.rotate_degrees)))
                c, s_ = math.cos(a), math.sin(a)
                rot = torch.tensor([[c, 0.0, s_], [0.0, 1.0, 0.0], [-s_, 0.0, c]])
                pos, nrm = pos @ rot.T, nrm @ rot.T
            if self.translate:
                pos = pos + torch.empty(3).uniform_(-self.translate, self.translate)
        if not self.normals:
            return pos.contiguous(), self.labels[index]
        nrm = nrm / nrm.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.cat([pos, nrm], dim=1), self.labels[index]


def augmentation(*, scale: PositiveInterval = None,
                 translate: Annotated[float, Range(min=0.0)] = 0.0,
                 rotate_degrees: Annotated[float, Range(min=0.0, max=180.0)] = 0.0) -> dict[str, Any]:
    """The ``data.augment`` node: random per-axis scaling in ``[low, high]``, translation, rotation about y."""
    return dict(train=True, scale=scale, translate=float(translate), rotate_degrees=float(rotate_degrees))


def _augmentation(augment: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    return augmentation(**(augment or {}))


Augment = Optional[Annotated[Mapping[str, Any], Node(augmentation)]]


# The task's data builders, named by ``_target_`` in bixt/configs/modelnet40_cls/data/*.yaml (which
# hold every default): each returns a ``TaskData`` whose ``val`` is the test split.
def solids_data(*, seed: int, train_size: Annotated[int, Range(min=0)], test_size: Annotated[int, Range(min=0)],
                noise: Annotated[float, Range(min=0.0)], max_tilt_degrees: float,
                num_points: Annotated[int, Range(min=1)], normals: bool, augment: Augment, eval_only: bool = False,
                min_points: int = 1) -> TaskData:
    """The embedded procedural solids (:func:`make_solids`)."""
    check_num_points(num_points, min_points)
    gen = dict(seed=int(seed), num_points=int(num_points), noise=float(noise), max_tilt_degrees=float(max_tilt_degrees))
    train = PointClassificationDataset(*make_solids(int(train_size), split="train", **gen), SOLID_CLASSES,
                                       normals=bool(normals), **_augmentation(augment))
    test = PointClassificationDataset(*make_solids(int(test_size), split="test", **gen), SOLID_CLASSES,
                                      normals=bool(normals))
    return TaskData(None if eval_only else train, test, class_names=SOLID_CLASSES,
                    metadata={"in_features": 3 if normals else 0})


def modelnet40_data(*, root: Optional[str], cache_dir: Optional[str], force_reload: bool,
                    num_points: Annotated[int, Range(min=1)], sampling: Literal["first", "fps"], normals: bool,
                    augment: Augment, eval_only: bool = False,
                    min_points: int = 1) -> TaskData:
    """ModelNet40 from ``root`` (:func:`load_modelnet40`); its test split is the task's validation set."""
    check_num_points(num_points, min_points)
    if not root:
        raise ValueError(f"data=modelnet40 needs data.root=DIR (the {MODELNET_FOLDER} folder)")
    kw = dict(num_points=int(num_points), sampling=str(sampling), cache_dir=cache_dir, force_reload=bool(force_reload))
    pts, lab, classes, names = load_modelnet40(root, "train", **kw)
    train = PointClassificationDataset(pts, lab, classes, names=names, normals=bool(normals), **_augmentation(augment))
    pts, lab, test_classes, names = load_modelnet40(root, "test", **kw)
    test = PointClassificationDataset(pts, lab, test_classes, names=names, normals=bool(normals))
    return TaskData(None if eval_only else train, test, class_names=classes,
                    metadata={"in_features": 3 if normals else 0})
