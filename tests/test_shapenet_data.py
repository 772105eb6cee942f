"""ShapeNetPart reading through PyG (tiny on-disk fixture), the procedural set, batching, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Data
from torch_geometric.datasets import ShapeNet

from bixt.data.partseg import (IGNORE_LABEL, NormalizeScale, PointCloudDataset, build_point_transform,
                               collate_point_clouds)
from bixt.data.partseg_shapes import SYNTHETIC_INFO, make_synthetic_partseg
from bixt.data.shapenetpart import SHAPENET_FOLDER, load_shapenetpart

# Procedural categories re-labelled into ShapeNetPart's global label space.
_TO_SHAPENET = {
    "Table": ("Table", [47, 48]),
    "Chair": ("Chair", [12, 13, 14]),
    "Lamp": ("Lamp", [24, 25, 26]),
    "Mug": ("Mug", [36, 37]),
    "Airplane": ("Airplane", [0, 1, 2]),
    "Rocket": ("Rocket", [41, 42, 43]),
}


def write_shapenet_folder(root: Path, per_split=(12, 6, 6), seed: int = 0, categories=None) -> Path:
    """A tiny ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` folder built from procedural shapes.

    All 16 synset folders are created (most stay empty) as in the real archive.
    """
    folder = root / SHAPENET_FOLDER
    (folder / "train_test_split").mkdir(parents=True)
    for synset in ShapeNet.category_ids.values():
        (folder / synset).mkdir()
    names = categories or list(_TO_SHAPENET)
    for split, count in zip(("train", "val", "test"), per_split):
        entries = []
        shapes = make_synthetic_partseg(count * 2, seed=seed, split=split, points=(200, 300))
        shapes = [s for s in shapes if SYNTHETIC_INFO.category_names[int(s.category)] in names][:count]
        for i, shape in enumerate(shapes):
            name = SYNTHETIC_INFO.category_names[int(shape.category)]
            target_name, labels = _TO_SHAPENET[name]
            synset = ShapeNet.category_ids[target_name]
            first = SYNTHETIC_INFO.seg_classes[int(shape.category)][0]
            y = torch.tensor(labels)[shape.y - first]
            rows = torch.cat([shape.pos, shape.x, y.unsqueeze(1).float()], dim=1)
            shape_id = f"{split}{i:04d}"
            lines = "\n".join(" ".join(f"{v:.6f}" for v in row[:6].tolist()) + f" {int(row[6])}" for row in rows)
            (folder / synset / f"{shape_id}.txt").write_text(lines + "\n")
            entries.append(f"shape_data/{synset}/{shape_id}")
        (folder / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return folder


def _tree_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def shapenet_folder(tmp_path_factory) -> Path:
    return write_shapenet_folder(tmp_path_factory.mktemp("shapenet"))


def test_load_shapenetpart_reads_pyg_layout_without_writing_to_the_data(shapenet_folder, tmp_path):
    before = _tree_snapshot(shapenet_folder.parent)
    train, names, info = load_shapenetpart(shapenet_folder.parent, "train", cache_dir=tmp_path / "cache")
    assert len(train) == 12 and len(names) == 12
    assert _tree_snapshot(shapenet_folder.parent) == before  # nothing written next to the user's data
    assert list((tmp_path / "cache").glob("shapenetpart-*/processed/*_train.pt"))
    assert info.category_names == tuple(ShapeNet.category_ids)  # all 16 synset folders exist
    sample = train[0]
    assert sample.pos.shape[1] == 3 and sample.x.shape[1] == 3
    category = int(sample.category)
    assert set(sample.y.tolist()) <= set(info.seg_classes[category])
    assert names[0].startswith(str(shapenet_folder)) and names[0].endswith(".txt")
    # The archive folder itself is accepted as root, and the processed cache is reused.
    processed = next((tmp_path / "cache").glob("shapenetpart-*/processed/*_train.pt"))
    mtime = processed.stat().st_mtime_ns
    again, _, _ = load_shapenetpart(shapenet_folder, "train", cache_dir=tmp_path / "cache")
    assert len(again) == 12 and processed.stat().st_mtime_ns == mtime
    test, _, _ = load_shapenetpart(shapenet_folder, "test", cache_dir=tmp_path / "cache")
    assert len(test) == 6


def test_category_subset_and_missing_synset_folders(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(4, 2, 2), categories=["Mug", "Table"])
    for synset in ShapeNet.category_ids.values():  # keep only the folders that hold shapes
        if not any((folder / synset).iterdir()):
            (folder / synset).rmdir()
    train, _, info = load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    assert info.category_names == ("Mug", "Table")
    assert info.seg_classes == ((36, 37), (47, 48, 49))
    assert {int(d.category) for d in train} == {0, 1}
    only_mugs, _, info = load_shapenetpart(folder, "val", categories=["Mug"], cache_dir=tmp_path / "cache")
    assert info.category_names == ("Mug",) and len(only_mugs) == 1


def _corrupt(folder: Path, edit) -> Path:
    """Apply ``edit(lines) -> lines`` to the first training shape; return its path."""
    entry = json.loads((folder / "train_test_split" / "shuffled_train_file_list.json").read_text())[0]
    path = folder / (entry.split("/", 1)[1] + ".txt")
    path.write_text("".join(edit(path.read_text().splitlines(keepends=True))))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda lines: [], "empty"),
        (lambda lines: ["nan " + lines[0].split(" ", 1)[1]] + lines[1:], "NaN"),
        (lambda lines: [lines[0].rsplit(" ", 1)[0] + " 35\n"] + lines[1:], r"part labels \[35\]"),
        (lambda lines: [" ".join(l.split()[:3] + l.split()[-1:]) + "\n" for l in lines], "7"),
        (lambda lines: [lines[0].rsplit(" ", 1)[0] + f" {lines[0].split()[-1]}.7\n"] + lines[1:],
         r"non-integer part label \d+\.7 in 0-based row 0"),
        (lambda lines: lines[:1], r"has 1 point\(s\)"),
        (lambda lines: [" ".join(["0.5"] * 3 + l.split()[3:]) + "\n" for l in lines], r"all at \[0.5, 0.5, 0.5\]"),
    ],
    ids=["empty-cloud", "nan", "label-out-of-range", "missing-columns", "fractional-label", "one-point",
         "coincident-points"],
)
def test_bad_shape_files_name_the_file(tmp_path, edit, message):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    path = _corrupt(folder, edit)
    with pytest.raises(ValueError, match=message) as info:
        load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)


def test_processed_cache_notices_an_edited_shape_file(tmp_path):
    """The cache is keyed on every input file's size and mtime, not on their number."""
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    cache = tmp_path / "cache"
    first, _, _ = load_shapenetpart(folder, "train", cache_dir=cache)
    assert torch.isfinite(first[0].pos).all()
    path = _corrupt(folder, lambda lines: ["nan".rjust(len(lines[0].split()[0])) + " " + lines[0].split(" ", 1)[1]]
                    + lines[1:])  # same size: only the mtime tells
    with pytest.raises(ValueError, match="NaN") as info:
        load_shapenetpart(folder, "train", cache_dir=cache)
    assert str(path) in str(info.value)
    # a valid edit is picked up too, and an unchanged folder is not processed again
    _corrupt(folder, lambda lines: lines[1:101])
    again, _, _ = load_shapenetpart(folder, "train", cache_dir=cache)
    assert again[0].pos.shape[0] == 100
    processed = next(cache.glob("shapenetpart-*/processed/*_train.pt"))
    mtime = processed.stat().st_mtime_ns
    load_shapenetpart(folder, "val", cache_dir=cache)
    assert processed.stat().st_mtime_ns == mtime


def test_categories_without_shapes_are_named_with_those_that_exist(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(4, 2, 2), categories=["Mug", "Table"])
    with pytest.raises(ValueError, match=r"no shapes of \['Chair'\].*categories with shapes there: \['Mug', 'Table'\]"):
        load_shapenetpart(folder, "train", categories=["Chair"], cache_dir=tmp_path / "cache")
    (folder / "03001627").rmdir()  # no Chair folder at all
    with pytest.raises(ValueError, match=r"no shapes of \['Chair'\]"):
        load_shapenetpart(folder, "train", categories=["Chair", "Mug"], cache_dir=tmp_path / "cache")
    # shapes on disk, but a split lists none of them
    split_file = folder / "train_test_split" / "shuffled_test_file_list.json"
    split_file.write_text(json.dumps([e for e in json.loads(split_file.read_text()) if "03797390" not in e]))
    with pytest.raises(ValueError, match=r"shuffled_test_file_list.json' lists no shapes of the categories \['Mug'\]"):
        load_shapenetpart(folder, "train", categories=["Mug"], cache_dir=tmp_path / "cache")


def test_coincident_points_never_become_nan():
    samples = make_synthetic_partseg(2, seed=0, points=(64, 64))
    samples[0].pos[:] = torch.tensor([0.3, -0.2, 0.7])
    normalised = NormalizeScale()(Data(pos=samples[0].pos.clone()))
    assert torch.equal(normalised.pos, torch.zeros(64, 3))  # at the origin, finite (PyG's gives NaN)
    other = Data(pos=samples[1].pos.clone())  # any other cloud: exactly PyG's result
    assert torch.equal(NormalizeScale()(other.clone()).pos, T.NormalizeScale()(other.clone()).pos)
    dataset = PointCloudDataset(samples, transform=build_point_transform(32, False), names=["flat.txt", "ok.txt"])
    with pytest.raises(ValueError, match=r"flat.txt has 64 point\(s\), all at"):
        dataset[0]
    assert torch.isfinite(dataset[1].pos).all()


def test_missing_split_file_and_shape_file(tmp_path):
    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    (folder / "train_test_split" / "shuffled_val_file_list.json").unlink()
    with pytest.raises(FileNotFoundError, match="shuffled_val_file_list.json"):
        load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    folder = write_shapenet_folder(tmp_path / "data2", per_split=(3, 1, 1))
    entry = json.loads((folder / "train_test_split" / "shuffled_test_file_list.json").read_text())[0]
    missing = folder / (entry.split("/", 1)[1] + ".txt")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="listed in a split file") as info:
        load_shapenetpart(folder, "train", cache_dir=tmp_path / "cache")
    assert str(missing) in str(info.value)
    with pytest.raises(FileNotFoundError, match="train_test_split"):
        load_shapenetpart(tmp_path, "train", cache_dir=tmp_path / "cache")


def test_cloud_smaller_than_group_count_names_the_sample(shapenet_folder, tmp_path):
    train, names, _ = load_shapenetpart(shapenet_folder, "train", cache_dir=tmp_path / "cache")
    dataset = PointCloudDataset(train, transform=build_point_transform(512, True), names=names, min_points=1000)
    with pytest.raises(ValueError, match="fewer than the 1000 the model needs") as info:
        dataset[0]
    assert names[0] in str(info.value)


def test_dataset_checks_nan_and_label_range_of_in_memory_samples():
    samples = make_synthetic_partseg(2, seed=0, points=(64, 64))
    samples[0].pos[3, 1] = float("nan")
    samples[1].y[0] = 99
    dataset = PointCloudDataset(samples, names=["a.txt", "b.txt"], num_classes=SYNTHETIC_INFO.num_classes)
    with pytest.raises(ValueError, match="a.txt has NaN"):
        dataset[0]
    with pytest.raises(ValueError, match=r"b.txt has part labels in \[\d+, 99\]"):
        dataset[1]


def test_synthetic_set_is_deterministic_and_well_formed():
    info = SYNTHETIC_INFO
    assert info.num_categories >= 4 and all(len(parts) >= 2 for parts in info.seg_classes)
    a = make_synthetic_partseg(12, seed=3, points=(100, 160))
    b = make_synthetic_partseg(14, seed=3, points=(100, 160))[:12]  # a shape does not depend on the count
    c = make_synthetic_partseg(12, seed=4, points=(100, 160))
    for x, y in zip(a, b):
        assert torch.equal(x.pos, y.pos) and torch.equal(x.y, y.y)
    assert not torch.equal(a[0].pos, c[0].pos)
    sizes = set()
    for shape in a:
        category = int(shape.category)
        assert set(shape.y.tolist()) == set(info.seg_classes[category])  # every part present
        assert 100 <= shape.pos.shape[0] <= 160 and torch.isfinite(shape.pos).all()
        torch.testing.assert_close(shape.x.norm(dim=1), torch.ones(len(shape.x)), atol=1e-4, rtol=0)
        sizes.add(shape.pos.shape[0])
    assert len(sizes) > 1
    val = make_synthetic_partseg(6, seed=3, split="val", points=(100, 160))
    assert not torch.equal(val[0].pos[:50], a[0].pos[:50])


def test_collate_pads_variable_clouds_and_eval_sampling_is_fixed():
    samples = make_synthetic_partseg(3, seed=0, points=(50, 90))
    dataset = PointCloudDataset(samples, transform=build_point_transform(None, False), include_normals=True)
    batch = collate_point_clouds([dataset[i] for i in range(3)])
    sizes = [s.pos.shape[0] for s in samples]
    assert batch["pos"].shape == (3, max(sizes), 3) and batch["features"].shape == (3, max(sizes), 3)
    assert batch["point_mask"].sum(1).tolist() == sizes
    assert bool((batch["labels"][~batch["point_mask"]] == IGNORE_LABEL).all())
    assert batch["category"].tolist() == [0, 1, 2]
    # Fixed-seed evaluation sampling: same subsample every time, and the source stays untouched.
    fixed = PointCloudDataset(samples, transform=build_point_transform(32, False), fixed_seed=0)
    torch.manual_seed(1)
    first = fixed[0].pos
    torch.manual_seed(2)
    assert torch.equal(first, fixed[0].pos) and first.shape == (32, 3)
    assert samples[0].pos.shape[0] == sizes[0] and samples[0].x is not None
    assert "features" not in collate_point_clouds([fixed[0], fixed[1]])
