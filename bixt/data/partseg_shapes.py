"""The embedded part-segmentation set: procedural shapes of six categories, labelled by part.

Shapes are assembled from the surface samplers of :mod:`bixt.data.surfaces` (shared with the
ModelNet solids) and come in the sample format of :mod:`bixt.data.partseg`, with part labels in
a ShapeNet-style global label space (:data:`SYNTHETIC_INFO`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch_geometric.data import Data

from bixt.data.partseg import PartSegInfo
from bixt.data.surfaces import Parts as _Parts
from bixt.data.surfaces import box as _box, ellipsoid as _ellipsoid, frustum as _frustum, torus_arc as _torus_arc
from bixt.data.surfaces import rot_x as _rot_x, rot_y as _rot_y, rot_z as _rot_z

__all__ = ["SYNTHETIC_INFO", "make_synthetic_partseg"]

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
    *,
    points: tuple[int, int],
    seed: int = 0,
    split: str = "train",
    noise: float = 0.01,
    max_yaw_degrees: float = 45.0,
    max_tilt_degrees: float = 8.0,
) -> list[Data]:
    """Procedural part-segmentation shapes in the sample format of :mod:`bixt.data.partseg`.

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

