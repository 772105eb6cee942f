"""Part-segmentation samples: their format, per-sample checks and transforms, and batching.

Every part-segmentation source (:mod:`bixt.data.shapenetpart`, :mod:`bixt.data.partseg_shapes`)
gives samples as ``torch_geometric.data.Data`` with ``pos`` (N, 3) float, ``x`` (N, 3) normals,
``y`` (N,) long global part labels and ``category`` (1,) long, described by a :class:`PartSegInfo`
(category names and each category's part labels). :class:`PointCloudDataset` checks and
transforms them; :func:`collate_point_clouds` pads clouds of any sizes into a batch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch_geometric.transforms as T
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.utils import to_dense_batch

from bixt.metrics.partseg import make_part_mask
from bixt.rng import host_rngs_restored, seed_host_rngs

__all__ = [
    "IGNORE_LABEL",
    "PartSegInfo",
    "NormalizeScale",
    "build_point_transform",
    "PointCloudDataset",
    "collate_point_clouds",
]

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
        *,
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
    if all(d.x is not None for d in data_list):  # PyG: an unset x reads as None
        batch["features"], _ = to_dense_batch(torch.cat([d.x for d in data_list]), batch_index,
                                              max_num_nodes=max_points)
    return batch

