"""Surface samplers of simple solids, shared by the embedded procedural point-cloud sets
(:mod:`bixt.data.partseg_shapes` part segmentation, :mod:`bixt.data.modelnet` classification).

Every sampler takes ``(rng, n)`` (after its shape arguments) and returns ``(points, normals)``,
both (n, 3) float64, uniform over the surface by area; :class:`Parts` places several of them and
samples a composite shape.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["unit", "box", "frustum", "ellipsoid", "torus_arc", "triangle", "hemisphere", "rot_x", "rot_y", "rot_z",
           "Parts"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def box(rng: np.random.Generator, n: int, size) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples of an axis-aligned box centred at the origin, faces chosen by area."""
    sx, sy, sz = size
    areas = np.array([sy * sz, sy * sz, sx * sz, sx * sz, sx * sy, sx * sy])
    face = rng.choice(6, size=n, p=areas / areas.sum())
    pts = (rng.random((n, 3)) - 0.5) * np.array(size)
    axis, sign = face // 2, np.where(face % 2 == 0, 1.0, -1.0)
    pts[np.arange(n), axis] = sign * np.array(size)[axis] / 2
    normals = np.zeros((n, 3))
    normals[np.arange(n), axis] = sign
    return pts, normals


def frustum(rng: np.random.Generator, n: int, r_bottom: float, r_top: float, height: float,
             bottom_cap: bool = False, top_cap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Surface samples of a y-axis frustum (cylinder when the radii agree) from y=0 to y=height."""
    slant = math.hypot(height, r_bottom - r_top)
    areas = np.array([math.pi * (r_bottom + r_top) * slant, math.pi * r_bottom ** 2 * bottom_cap,
                      math.pi * r_top ** 2 * top_cap])
    part = rng.choice(3, size=n, p=areas / areas.sum())
    theta = rng.random(n) * 2 * math.pi
    t = rng.random(n)
    # Lateral surface: radius varies linearly with height; sample t with density ∝ radius.
    if abs(r_top - r_bottom) > 1e-9:
        t = (np.sqrt(r_bottom ** 2 + t * (r_top ** 2 - r_bottom ** 2)) - r_bottom) / (r_top - r_bottom)
    radius = r_bottom + t * (r_top - r_bottom)
    y = t * height
    # Caps: uniform on the disc.
    cap_r = np.sqrt(rng.random(n)) * np.where(part == 1, r_bottom, r_top)
    radius = np.where(part == 0, radius, cap_r)
    y = np.where(part == 0, y, np.where(part == 1, 0.0, height))
    pts = np.stack([radius * np.cos(theta), y, radius * np.sin(theta)], axis=1)
    lateral_n = unit(np.stack([np.cos(theta) * height, np.full(n, r_bottom - r_top), np.sin(theta) * height], 1))
    cap_n = np.zeros((n, 3))
    cap_n[:, 1] = np.where(part == 1, -1.0, 1.0)
    normals = np.where((part == 0)[:, None], lateral_n, cap_n)
    return pts, normals


def ellipsoid(rng: np.random.Generator, n: int, radii) -> tuple[np.ndarray, np.ndarray]:
    radii = np.asarray(radii, dtype=np.float64)
    direction = unit(rng.normal(size=(n, 3)))
    pts = direction * radii
    return pts, unit(pts / radii ** 2)


def torus_arc(rng: np.random.Generator, n: int, ring: float, tube: float, start: float, stop: float):
    """Torus in the xy-plane around the origin, ring angle restricted to [start, stop]."""
    phi = start + rng.random(n) * (stop - start)
    psi = rng.random(n) * 2 * math.pi
    centre = np.stack([ring * np.cos(phi), ring * np.sin(phi), np.zeros(n)], 1)
    normal = np.stack([np.cos(psi) * np.cos(phi), np.cos(psi) * np.sin(phi), np.sin(psi)], 1)
    return centre + tube * normal, normal


def rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def triangle(rng: np.random.Generator, n: int, a, b, c) -> tuple[np.ndarray, np.ndarray]:
    """Uniform samples of the triangle ``a, b, c`` (normal by the right-hand rule)."""
    a, b, c = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    pts = a + u[:, None] * (b - a) + v[:, None] * (c - a)
    normal = unit(np.cross(b - a, c - a))
    return pts, np.broadcast_to(normal, pts.shape).copy()


def hemisphere(rng: np.random.Generator, n: int, radius: float, up: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The upper (``up``) or lower half of a sphere of ``radius`` around the origin (y axis up)."""
    normal = unit(rng.normal(size=(n, 3)))
    normal[:, 1] = np.abs(normal[:, 1]) * (1.0 if up else -1.0)
    return normal * radius, normal


class Parts:
    """Collects surface pieces (sampler, weight, placement, label) and samples a whole shape."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.pieces: list[tuple[Callable, float, np.ndarray, np.ndarray, int]] = []

    def add(self, sampler: Callable, area: float, label: int, offset=(0.0, 0.0, 0.0), rotation=None) -> None:
        rot = np.eye(3) if rotation is None else rotation
        self.pieces.append((sampler, area, rot, np.asarray(offset, dtype=np.float64), label))

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        areas = np.array([p[1] for p in self.pieces])
        # Every piece gets a few points so that thin parts are never missing entirely.
        share = 0.9 * areas / areas.sum() + 0.1 / len(areas)
        # (one piece: its share can round to just above 1, which multinomial refuses)
        counts = self.rng.multinomial(n, share) if len(areas) > 1 else np.array([n])
        pos, normals, labels = [], [], []
        for (sampler, _, rot, offset, label), count in zip(self.pieces, counts):
            if count == 0:
                continue
            p, nrm = sampler(self.rng, int(count))
            pos.append(p @ rot.T + offset)
            normals.append(nrm @ rot.T)
            labels.append(np.full(count, label))
        return np.concatenate(pos), np.concatenate(normals), np.concatenate(labels)
