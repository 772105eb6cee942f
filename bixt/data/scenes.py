"""The embedded semantic-segmentation set: procedurally generated textured scenes, in memory.

Each scene is a background split into 2-3 regions by random straight cuts, with 2-5 objects
(disks, ellipses, rectangles, triangles, blobs) of random size and pose painted over it and over
each other (later objects occlude earlier ones). Every region and object carries one of
:data:`SCENE_CLASSES`, and the class decides its *texture* (smooth gradient, fine noise, stripes of
a class-specific orientation, checkers, dots, rings, cross-hatching, blocky camouflage). Phase,
exact period, contrast, saturation and brightness are drawn per region; the hue leans to one per
class but is jittered by up to +-90 degrees (``hue_jitter=0.25``), so neighbouring classes share
colours; a global brightness shift and pixel noise come on top. Colour alone is therefore weak
evidence (a logistic regression on pixel RGB, or on RGB and its products, reaches about 0.11 mIoU
on 10 classes), so a model has to read the local texture and the shape context, yet the hue hint
lets a tiny model learn the task in a few CPU minutes. Boundaries follow the shapes: labels are exact.

A scene is a pure function of ``(seed, split, index)`` (numpy's ``default_rng([seed, split, index])``):
it does not depend on how many others are generated, and the splits never share a scene.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["SCENE_CLASSES", "make_scene", "make_scenes"]

#: class index -> name; the names say the texture
SCENE_CLASSES = ("smooth", "grain", "h_stripes", "v_stripes", "diagonal", "checker", "dots", "rings",
                 "crosshatch", "camouflage")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _pattern(cls: int, rng: np.random.Generator, y: np.ndarray, x: np.ndarray,
             centre: tuple[float, float], size: int) -> np.ndarray:
    """Texture of class ``cls`` at the pixel coordinates ``y, x`` (the painted pixels only, so the
    cost follows the painted area), values in [0, 1] (0/1 = the two colours)."""
    name = SCENE_CLASSES[cls]
    phase = rng.uniform(0, 2 * math.pi)

    def stripes(angle_deg: float, period: float) -> np.ndarray:
        a = math.radians(angle_deg)
        return 0.5 + 0.5 * np.sin(2 * math.pi * (x * math.cos(a) + y * math.sin(a)) / period + phase)

    if name == "smooth":  # a slow gradient across the region, no texture
        a = rng.uniform(0, 2 * math.pi)
        ramp = (x * math.cos(a) + y * math.sin(a) - size / 2) / size
        return np.clip(0.5 + ramp * rng.uniform(0.5, 1.0), 0, 1)
    if name == "grain":  # iid pixel noise, well above the global noise level
        return rng.uniform(0, 1, size=y.shape)
    if name == "h_stripes":  # waves, near horizontal
        return stripes(90 + rng.uniform(-12, 12), rng.uniform(4.0, 6.0))
    if name == "v_stripes":  # near vertical
        return stripes(rng.uniform(-12, 12), rng.uniform(4.0, 6.0))
    if name == "diagonal":  # either diagonal (a flip maps one onto the other)
        return stripes(rng.choice([45.0, 135.0]) + rng.uniform(-8, 8), rng.uniform(5.0, 7.0))
    if name == "checker":  # squares of 3-4 px, axis aligned
        size = rng.uniform(3.0, 4.0)
        ox, oy = rng.uniform(0, size, size=2)
        return ((np.floor((x + ox) / size) + np.floor((y + oy) / size)) % 2).astype(np.float64)
    if name == "dots":  # a grid of small round dots
        spacing, radius = rng.uniform(5.0, 7.0), rng.uniform(1.2, 1.8)
        ox, oy = rng.uniform(0, spacing, size=2)
        dx = (x + ox) % spacing - spacing / 2
        dy = (y + oy) % spacing - spacing / 2
        return (dx * dx + dy * dy <= radius * radius).astype(np.float64)
    if name == "rings":  # concentric rings around the region's centre
        r = np.sqrt((x - centre[1]) ** 2 + (y - centre[0]) ** 2)
        return 0.5 + 0.5 * np.sin(2 * math.pi * r / rng.uniform(4.0, 6.0) + phase)
    if name == "crosshatch":  # both diagonals at once: a diamond lattice
        period = rng.uniform(5.0, 7.0)
        s1 = stripes(45, period) > 0.75
        s2 = stripes(135, period) > 0.75
        return (s1 | s2).astype(np.float64)
    # camouflage: blocky noise, 4x4 cells of random level
    cells = rng.uniform(0, 1, size=(size // 4 + 2, size // 4 + 2))
    ox, oy = rng.integers(0, 4, size=2)
    return cells[((y + oy) // 4).astype(int), ((x + ox) // 4).astype(int)]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _colours(rng: np.random.Generator, cls: int, num_classes: int, hue_jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """The texture's dark and light colour. Each class leans to a hue of its own, jittered by up to
    ``hue_jitter`` of the colour wheel either way, so that neighbouring classes overlap in colour
    (colour alone is ambiguous, the texture decides); saturation and brightness are random."""
    hue = (cls / num_classes + rng.uniform(-hue_jitter, hue_jitter)) % 1.0
    sat = rng.uniform(0.25, 0.9)
    dark = rng.uniform(0.1, 0.5)
    light = min(1.0, dark + rng.uniform(0.3, 0.5))
    c1 = _hsv_to_rgb(hue, sat, dark)
    c2 = _hsv_to_rgb((hue + rng.uniform(-0.05, 0.05)) % 1.0, sat, light)
    return c1, c2


def _shape_mask(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, size: int) -> tuple[np.ndarray, tuple]:
    """A random object mask (disk, ellipse, rectangle, triangle, blob) and its centre."""
    cy, cx = rng.uniform(0.1, 0.9, size=2) * size
    r = rng.uniform(0.14, 0.32) * size
    a = rng.uniform(0, math.pi)
    # only the object's bounding square is evaluated (no shape reaches past 1.6 r from its centre)
    reach = 1.6 * r
    rows = slice(max(0, int(cy - reach)), min(size, int(cy + reach) + 2))
    cols = slice(max(0, int(cx - reach)), min(size, int(cx + reach) + 2))
    y, x = y[rows, cols], x[rows, cols]
    u = (x - cx) * math.cos(a) + (y - cy) * math.sin(a)
    v = -(x - cx) * math.sin(a) + (y - cy) * math.cos(a)
    kind = rng.integers(0, 5)
    if kind == 0:  # disk
        mask = u * u + v * v <= r * r
    elif kind == 1:  # ellipse
        e = rng.uniform(0.45, 0.75)
        mask = (u / r) ** 2 + (v / (r * e)) ** 2 <= 1
    elif kind == 2:  # rectangle
        e = rng.uniform(0.5, 1.0)
        mask = (np.abs(u) <= r) & (np.abs(v) <= r * e)
    elif kind == 3:  # triangle: inside three half-planes
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):
            b = math.radians(90 + 120 * k)
            mask &= u * math.cos(b) + v * math.sin(b) <= 0.6 * r
    else:  # blob: a radius modulated by a few harmonics
        theta = np.arctan2(v, u)
        rad = np.ones_like(theta)
        for k in (2, 3, 5):
            rad += rng.uniform(0, 0.18) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        mask = np.sqrt(u * u + v * v) <= r * rad
    full = np.zeros((size, size), dtype=bool)
    full[rows, cols] = mask
    return full, (cy, cx)


def make_scene(rng: np.random.Generator, size: int = 64, num_classes: int = len(SCENE_CLASSES),
               noise: float = 0.04, max_objects: int = 5, hue_jitter: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (size, size, 3) uint8 and labels (size, size) uint8 in [0, num_classes)."""
    y, x = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    image = np.zeros((size, size, 3))
    labels = np.zeros((size, size), dtype=np.uint8)

    def paint(mask: np.ndarray, cls: int, centre: tuple[float, float]) -> None:
        c1, c2 = _colours(rng, cls, num_classes, hue_jitter)
        t = _pattern(cls, rng, y[mask], x[mask], centre, size)[..., None]
        image[mask] = c1 * (1 - t) + c2 * t
        labels[mask] = cls

    # background: 2-3 regions cut by random lines through the canvas
    regions = np.zeros((size, size), dtype=np.int64)
    for k in range(1, int(rng.integers(2, 4))):
        a = rng.uniform(0, 2 * math.pi)
        py, px = rng.uniform(0.25, 0.75, size=2) * size
        side = (x - px) * math.cos(a) + (y - py) * math.sin(a) > 0
        regions[side] = k
    for k in np.unique(regions):
        mask = regions == k
        ys, xs = np.nonzero(mask)
        paint(mask, int(rng.integers(0, num_classes)), (float(ys.mean()), float(xs.mean())))
    # objects, painted in order: each occludes what is under it
    for _ in range(int(rng.integers(2, max_objects + 1))):
        mask, centre = _shape_mask(rng, y, x, size)
        if mask.any():
            paint(mask, int(rng.integers(0, num_classes)), centre)
    image = image + rng.uniform(-0.1, 0.1) + rng.normal(0, noise, size=image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels


def make_scenes(num_scenes: int, seed: int = 0, split: str = "train", size: int = 64,
                num_classes: int = len(SCENE_CLASSES), noise: float = 0.04, max_objects: int = 5,
                hue_jitter: float = 0.25) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_scenes`` scenes: images (N, 3, S, S) uint8 and labels (N, S, S) uint8.

    Scene ``i`` comes from the RNG stream ``(seed, split, i)`` alone.
    """
    if not 2 <= num_classes <= len(SCENE_CLASSES):
        raise ValueError(f"data.num_classes={num_classes}: the scene generator has {len(SCENE_CLASSES)} textures, "
                         f"expected 2..{len(SCENE_CLASSES)}")
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {list(_SPLIT_IDS)}, got {split!r}")
    if size < 16:
        raise ValueError(f"data.img_size={size} is too small for textured scenes; expected >= 16")
    images = np.empty((num_scenes, size, size, 3), dtype=np.uint8)
    labels = np.empty((num_scenes, size, size), dtype=np.uint8)
    for i in range(num_scenes):
        rng = np.random.default_rng([seed, _SPLIT_IDS[split], i])
        images[i], labels[i] = make_scene(rng, size, num_classes, noise, max_objects, hue_jitter)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
