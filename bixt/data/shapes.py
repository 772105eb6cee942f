"""The embedded image classification set: procedurally generated shapes, deterministic from a seed,
no files and no network. Ten shape classes (disk, ring, square, frame, triangle, plus, flower, two
dots, ellipse, half-disk) at random position, scale and rotation, random foreground and background
colours (colour carries no label information), a background gradient, a distractor line and pixel
noise. Learnable by a small model, yet not by a linear model on pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

__all__ = ["SHAPE_CLASSES", "generate_shapes", "ShapesDataset"]

SHAPE_CLASSES = ("disk", "ring", "square", "frame", "triangle", "plus", "flower", "two_dots", "ellipse",
                 "half_disk")



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
