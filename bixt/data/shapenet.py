"""The part-segmentation task's data builders, named by ``_target_`` in
``bixt/configs/shapenet_partseg/data/*.yaml``: each returns a :class:`~bixt.data.task_data.TaskData`
of :class:`~bixt.data.partseg.PointCloudDataset` splits (test splits by name), their
:class:`~bixt.data.partseg.PartSegInfo` as ``metadata["info"]``.

The YAML files hold every default; ``min_points`` is what the model needs per raw cloud (its
group count / group size), given by the task.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable, Mapping, Optional, Sequence

from bixt.constraints import Node, PositiveInterval, Range
from bixt.data.builder import check_num_points
from bixt.data.partseg import PartSegInfo, PointCloudDataset, build_point_transform, collate_point_clouds
from bixt.data.partseg_shapes import SYNTHETIC_INFO, make_synthetic_partseg
from bixt.data.shapenetpart import SHAPENET_FOLDER, load_shapenetpart
from bixt.data.task_data import TaskData

__all__ = ["synthetic_partseg_data", "shapenetpart_data"]



def _task_data(train: PointCloudDataset, val: PointCloudDataset, tests: dict[str, PointCloudDataset],
               info: PartSegInfo, eval_only: bool, normals: bool) -> TaskData:
    # the label space is the parts; the categories (and which parts each has) travel in metadata
    return TaskData(None if eval_only else train, val, tests, num_classes=info.num_classes,
                    collate_fn=collate_point_clouds,
                    metadata={"info": info, "in_features": 3 if normals else 0})


def augmentation(*, scale: PositiveInterval = None,
                 jitter: Annotated[float, Range(min=0.0)] = 0.0,
                 rotate_degrees: Annotated[float, Range(min=0.0, max=180.0)] = 0.0) -> dict[str, Any]:
    """The ``data.augment`` node: random isotropic scaling in ``[low, high]``, per-point jitter, rotation about y."""
    return dict(scale=scale, jitter=jitter, rotate_degrees=rotate_degrees)


Augment = Optional[Annotated[Mapping[str, Any], Node(augmentation)]]
Count = Annotated[int, Range(min=0)]
NumPoints = Optional[Annotated[int, Range(min=1)]]


def _split_wrapper(*, num_points: Optional[int], normals: bool, eval_seed: int, augment: Optional[Mapping[str, Any]],
                   min_points: int) -> Callable[..., PointCloudDataset]:
    """``wrap(samples, names, train, info)``: the checks and transforms every split shares."""
    check_num_points(num_points, min_points)
    train_tf = build_point_transform(num_points, True, **augmentation(**(augment or {})))
    eval_tf = build_point_transform(num_points, False)

    def wrap(samples, names: Sequence[str], train: bool, info: PartSegInfo) -> PointCloudDataset:
        # evaluation subsamples are fixed per shape, so every evaluation sees the same points
        return PointCloudDataset(samples, transform=train_tf if train else eval_tf, names=names,
                                 min_points=min_points, fixed_seed=None if train else int(eval_seed),
                                 include_normals=bool(normals), num_classes=info.num_classes)

    return wrap


def synthetic_partseg_data(
    *,
    seed: int,
    train_size: Count,
    val_size: Count,
    test_size: Count,
    points_per_shape: Sequence[int],
    noise: Annotated[float, Range(min=0.0)],
    num_points: NumPoints,
    normals: bool,
    eval_seed: int,
    augment: Augment,
    min_points: int = 1,
    eval_only: bool = False,
) -> TaskData:
    """The embedded procedural set (:mod:`bixt.data.partseg_shapes`); a test split only if ``test_size``."""
    wrap = _split_wrapper(num_points=num_points, normals=normals, eval_seed=eval_seed, augment=augment,
                          min_points=min_points)
    info = SYNTHETIC_INFO

    def split(split_name: str, size: int, train: bool) -> PointCloudDataset:
        samples = make_synthetic_partseg(int(size), seed=int(seed), split=split_name,
                                         points=tuple(points_per_shape), noise=float(noise))
        return wrap(samples, [f"synthetic {split_name} shape {i}" for i in range(len(samples))], train, info)

    train = split("train", train_size, True)
    val = split("val", val_size, False)
    tests = {"test": split("test", test_size, False)} if test_size else {}
    return _task_data(train, val, tests, info, eval_only, normals)


def shapenetpart_data(
    *,
    root: Optional[str],
    cache_dir: Optional[str],
    categories: Optional[Sequence[str]],
    force_reload: bool,
    train_split: str,
    val_split: str,
    test_splits: Optional[Sequence[str]],
    num_points: NumPoints,
    normals: bool,
    eval_seed: int,
    augment: Augment,
    min_points: int = 1,
    eval_only: bool = False,
) -> TaskData:
    """ShapeNetPart (:mod:`bixt.data.shapenetpart`) from ``root``; ``test_splits`` evaluated at the end."""
    wrap = _split_wrapper(num_points=num_points, normals=normals, eval_seed=eval_seed, augment=augment,
                          min_points=min_points)
    if not root:
        raise ValueError("data=shapenetpart needs data.root=DIR (the extracted "
                         f"{SHAPENET_FOLDER} folder or the folder holding it)")
    common = dict(categories=categories, cache_dir=cache_dir, force_reload=bool(force_reload))

    def split(split_name: str, train: bool) -> tuple[PointCloudDataset, PartSegInfo]:
        samples, names, info = load_shapenetpart(root, split_name, **common)
        if len(samples) == 0:
            raise ValueError(f"the {split_name!r} split of {root!r} holds no shapes of the chosen categories")
        return wrap(samples, names, train, info), info

    train, info = split(train_split, True)
    val, _ = split(val_split, False)
    tests = {s: split(s, False)[0] for s in (test_splits or [])}
    return _task_data(train, val, tests, info, eval_only, normals)
