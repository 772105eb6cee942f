"""ADE20K semantic segmentation data: the ADEChallengeData2016 reader (pairing, reduce-zero-label,
every bad-input message), the local Hugging Face copy, the joint transforms and the embedded scenes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bixt.data.ade20k import ADE20K_CLASSES, ADE20KDataError, class_names_for, read_ade20k_split
from bixt.data.builder import build_data
from bixt.data.scenes import SCENE_CLASSES, make_scenes
from bixt.data.seg_transforms import SegEvalTransform, SegTrainTransform, collate_segmentation, keep_ratio_size

TRAIN_SIZES = [(40, 56)] * 6                     # (height, width)
VAL_SIZES = [(40, 56), (48, 40), (36, 52)]       # validation images differ in size, as in ADE20K


def _label_map(rng: np.random.Generator, height: int, width: int, num_classes: int) -> np.ndarray:
    """Raw ADE values: 0 ("other") on a border strip, classes 1..num_classes in blocks."""
    raw = np.zeros((height, width), dtype=np.uint8)
    for _ in range(4):
        top, left = rng.integers(0, height - 8), rng.integers(0, width - 8)
        raw[top:top + rng.integers(8, 24), left:left + rng.integers(8, 28)] = rng.integers(1, num_classes + 1)
    raw[raw == 0] = 1
    raw[:, :3] = 0
    return raw


def _image_for(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour follows the label (so a tiny model can learn something), plus noise."""
    palette = np.array([[0, 0, 0], [200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.float64)
    img = palette[np.minimum(raw, len(palette) - 1)] + rng.normal(0, 10, size=raw.shape + (3,))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_ade_folder(root: Path, train_sizes=TRAIN_SIZES, val_sizes=VAL_SIZES, num_classes: int = 4,
                     seed: int = 0) -> Path:
    """A tiny ADEChallengeData2016 folder of real JPEG images and single-channel PNG annotations."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for split, sizes, tag in (("training", train_sizes, "train"), ("validation", val_sizes, "val")):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            raw = _label_map(rng, h, w, num_classes)
            name = f"ADE_{tag}_{i + 1:08d}"
            Image.fromarray(_image_for(raw, rng)).save(base / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(raw, mode="L").save(base / "annotations" / split / f"{name}.png")
    return base


def ade_cfg(root: Path, **overrides) -> OmegaConf:
    cfg = dict(_target_="bixt.data.ade20k.ade20k_data", root=str(root) if root is not None else None, num_classes=4,
               class_names=None, reduce_zero_label=True,
               train_split="training", val_split="validation", check_headers=True, crop_size=32, scale=[64, 32],
               ratio_range=[0.75, 1.25], cat_max_ratio=0.75, flip_prob=0.5, photometric=True, test_scale=None)
    cfg.update(overrides)
    return OmegaConf.create(cfg)


def build_semseg_datasets(cfg, eval_only: bool = False):
    data = build_data(cfg, eval_only=eval_only)
    return data.train, data.val, data.class_names


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


# ------------------------------------------------------------------ reader
def test_reader_pairs_by_stem_and_reduces_zero_label(tmp_path):
    base = write_ade_folder(tmp_path / "data")
    before = snapshot(base)
    pairs = read_ade20k_split(tmp_path / "data", "training")  # the parent of ADEChallengeData2016 works too
    assert [p[0].stem for p in pairs] == [p[1].stem for p in pairs] == [f"ADE_train_{i:08d}" for i in range(1, 7)]
    assert read_ade20k_split(base, "validation")[0][0].name == "ADE_val_00000001.jpg"

    train, val, classes = build_semseg_datasets(ade_cfg(base, test_scale=None))
    assert classes == ["class_0", "class_1", "class_2", "class_3"] and len(train) == 6 and len(val) == 3
    for i in range(len(val)):
        sample = val[i]
        raw = np.asarray(Image.open(base / "annotations" / "validation" / f"{sample['name']}.png")).astype(np.int64)
        expected = np.where(raw == 0, 255, raw - 1)
        assert sample["labels"].dtype == torch.long and np.array_equal(sample["labels"].numpy(), expected)
        assert sample["image"].shape == (3,) + VAL_SIZES[i] and sample["image"].dtype == torch.float32
        assert set(np.unique(expected)) <= {0, 1, 2, 3, 255} and 255 in expected
    # normalised with the ImageNet mean/std: a black pixel is -mean/std
    assert float(val[0]["image"].min()) < -1.5
    for i in range(len(train)):  # training samples: crops of the configured size
        s = train[i]
        assert s["image"].shape == (3, 32, 32) and s["labels"].shape == (32, 32)
    assert snapshot(base) == before  # nothing written into the data folder


def test_class_names():
    assert len(ADE20K_CLASSES) == 150 and class_names_for(150)[:3] == ["wall", "building", "sky"]
    assert class_names_for(150)[-1] == "flag" and class_names_for(3) == ["class_0", "class_1", "class_2"]


def test_missing_annotation_and_missing_image_are_named(tmp_path):
    base = write_ade_folder(tmp_path)
    (base / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    (base / "annotations" / "training" / "ADE_train_00000005.png").unlink()
    with pytest.raises(ADE20KDataError, match=r"2 image\(s\) .* without an annotation .*ADE_train_00000002.jpg, "
                                              r"ADE_train_00000005.jpg"):
        read_ade20k_split(base, "training")
    (base / "images" / "validation" / "ADE_val_00000003.jpg").unlink()
    with pytest.raises(ADE20KDataError, match=r"1 annotation\(s\) .* without an image .*ADE_val_00000003.png"):
        read_ade20k_split(base, "validation")
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        read_ade20k_split(tmp_path / "nowhere")


def test_rgb_annotation_is_named_with_its_mode(tmp_path):
    base = write_ade_folder(tmp_path)
    path = base / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(ADE20KDataError, match=r"ADE_val_00000002.png: annotation has mode RGB \(3 channels\); "
                                              r"expected a single-channel"):
        read_ade20k_split(base, "validation")


def test_size_mismatch_names_both_sizes(tmp_path):
    base = write_ade_folder(tmp_path)
    path = base / "annotations" / "training" / "ADE_train_00000003.png"
    Image.open(path).resize((50, 40), Image.NEAREST).save(path)
    with pytest.raises(ADE20KDataError, match=r"ADE_train_00000003.png: annotation is 50x40 \(WxH\) but its image "
                                              r".*ADE_train_00000003.jpg is 56x40"):
        read_ade20k_split(base, "training")


def test_out_of_range_label_names_file_value_count_and_range(tmp_path):
    base = write_ade_folder(tmp_path)
    path = base / "annotations" / "validation" / "ADE_val_00000002.png"
    raw = np.asarray(Image.open(path)).copy()
    raw[:2, :3] = 151   # 6 pixels
    raw[5, 5] = 255     # the ignore value is allowed
    Image.fromarray(raw, mode="L").save(path)
    # the validation annotations are scanned when the data is built (not at the first evaluation)
    with pytest.raises(ADE20KDataError, match=r"ADE_val_00000002.png: label value 151 in 6 pixel\(s\); expected "
                                              r"0 = other \(ignored\), 1..150 for data.num_classes=150, or 255"):
        build_semseg_datasets(ade_cfg(base, num_classes=150))
    # with 4 classes, 5 is already out of range; data.num_classes fixes a folder with another label set
    raw[:2, :3] = 5
    Image.fromarray(raw, mode="L").save(path)
    with pytest.raises(ADE20KDataError, match=r"label value 5 in 6 pixel\(s\); expected 0 = other \(ignored\), 1..4"):
        build_semseg_datasets(ade_cfg(base, num_classes=4))
    _, val5, classes = build_semseg_datasets(ade_cfg(base, num_classes=5))
    assert int(val5[1]["labels"][0, 0]) == 4 and int(val5[1]["labels"][5, 5]) == 255 and len(classes) == 5
    # training annotations (the large split) are checked as each sample is loaded
    raw[:2, :3] = 1
    Image.fromarray(raw, mode="L").save(path)
    train_path = base / "annotations" / "training" / "ADE_train_00000002.png"
    train_raw = np.asarray(Image.open(train_path)).copy()
    train_raw[:2, :3] = 5
    Image.fromarray(train_raw, mode="L").save(train_path)
    train4, _, _ = build_semseg_datasets(ade_cfg(base, num_classes=4))
    train4[0]  # the other samples load
    with pytest.raises(ADE20KDataError, match=r"ADE_train_00000002.png: label value 5 in 6 pixel\(s\)"):
        train4[1]


def test_palette_and_16_bit_annotations_are_single_channel(tmp_path):
    base = write_ade_folder(tmp_path)
    path = base / "annotations" / "validation" / "ADE_val_00000001.png"
    raw = np.asarray(Image.open(path)).copy()
    pal = Image.fromarray(raw, mode="L").convert("P")
    pal.save(path)
    _, val, _ = build_semseg_datasets(ade_cfg(base))
    assert np.array_equal(val[0]["labels"].numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    Image.fromarray(raw.astype(np.uint16)).save(path)  # I;16
    assert np.array_equal(val[0]["labels"].numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))


# ------------------------------------------------------------------ Hugging Face copy
def _hf_dataset(base: Path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    splits = {}
    for split, hf_split in (("training", "train"), ("validation", "validation")):
        images = sorted((base / "images" / split).glob("*.jpg"))
        rows = {"image": [{"bytes": p.read_bytes(), "path": p.name} for p in images],
                "annotation": [{"bytes": (base / "annotations" / split / f"{p.stem}.png").read_bytes(),
                                "path": f"{p.stem}.png"} for p in images]}
        splits[hf_split] = datasets.Dataset.from_dict(rows, features=features)
    return datasets.DatasetDict(splits)


def _hf_cfg(path: Path, **overrides):
    settings = dict(_target_="bixt.data.ade20k.ade20k_hf_data", path=str(path), image_column="image",
                    label_column="annotation", train_split="train", val_split="validation")
    cfg = ade_cfg(None, **{**settings, **overrides})
    del cfg["root"], cfg["check_headers"]
    return cfg


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_copy_gives_the_same_samples(tmp_path, layout):
    base = write_ade_folder(tmp_path / "data")
    ds = _hf_dataset(base)
    path = tmp_path / "hf"
    if layout == "save_to_disk":
        ds.save_to_disk(str(path))
    else:
        (path / "data").mkdir(parents=True)
        for split, part in ds.items():
            part.to_parquet(str(path / "data" / f"{split}-00000-of-00001.parquet"))
    before = snapshot(path)
    _, folder_val, _ = build_semseg_datasets(ade_cfg(base), eval_only=True)
    train, hf_val, classes = build_semseg_datasets(_hf_cfg(path))
    assert len(train) == 6 and len(hf_val) == 3 and classes == ["class_0", "class_1", "class_2", "class_3"]
    for i in range(3):
        a, b = folder_val[i], hf_val[i]
        assert a["name"] == b["name"]
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["image"], b["image"])
    assert train[0]["image"].shape == (3, 32, 32)
    assert snapshot(path) == before
    with pytest.raises(ADE20KDataError, match="no column 'label'"):
        build_semseg_datasets(_hf_cfg(path, label_column="label"))


# ------------------------------------------------------------------ transforms
def _striped(height: int = 40, width: int = 56) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels 0..3 in vertical bands (plus an ignore strip); the image's red channel encodes the label."""
    labels = (torch.arange(width) * 4 // width).expand(height, width).clone()
    labels[:2] = 255
    image = torch.stack([labels.clamp(max=4) * 50, torch.arange(width).expand(height, width) * 4,
                         torch.zeros(height, width, dtype=torch.long)]).to(torch.uint8)
    return image, labels


def test_train_transform_crops_keeps_labels_and_flips_together():
    image, labels = _striped()
    torch.manual_seed(0)
    tf = SegTrainTransform(crop_size=32, scale=(56, 40), ratio_range=(0.5, 2.0), photometric=True)
    for _ in range(20):
        img, lab = tf(image, labels)
        assert img.shape == (3, 32, 32) and lab.shape == (32, 32) and lab.dtype == torch.long
        assert set(lab.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest neighbour: no new values
    # flip: with no rescale, no photometric change and a full-width crop, the flipped pair still agrees
    flip = SegTrainTransform(crop_size=(40, 56), scale=None, ratio_range=None, flip_prob=1.0, photometric=False,
                             mean=(0, 0, 0), std=(1, 1, 1), cat_max_ratio=1.0)
    img, lab = flip(image, labels)
    assert torch.equal(lab, labels.flip(-1))
    assert torch.allclose(img * 255, image.flip(-1).float(), atol=1e-3)
    # padding: a crop larger than the image is padded, labels with 255 (never scored), image with 0
    pad = SegTrainTransform(crop_size=64, scale=None, ratio_range=None, photometric=False)
    img, lab = pad(image, labels)
    assert img.shape == (3, 64, 64) and bool((lab[40:] == 255).all()) and bool((lab[:, 56:] == 255).all())
    assert float(img[:, 40:].abs().max()) == 0.0


def test_cat_max_ratio_is_respected_when_possible():
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:, 48:] = 1                                 # class 0 fills 75 % of the image
    labels[20:30, 10:20] = 2
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    torch.manual_seed(0)
    tf = SegTrainTransform(crop_size=32, scale=None, ratio_range=None, photometric=False, flip_prob=0.0,
                           cat_max_ratio=0.75, crop_tries=10)
    shares = []
    for _ in range(30):
        _, lab = tf(image, labels)
        counts = torch.bincount(lab.flatten(), minlength=3).float()
        shares.append(float(counts.max() / counts.sum()))
    assert sum(s < 0.75 for s in shares) >= 27  # most random crops of this image are >75 % class 0
    # a one-class image cannot pass: the transform still returns a crop
    _, lab = tf(image, torch.zeros(64, 64, dtype=torch.long))
    assert lab.shape == (32, 32)


def test_eval_transform_keeps_the_original_label_size():
    image, labels = _striped(40, 56)
    img, lab = SegEvalTransform(scale=(128, 64))(image, labels)
    assert keep_ratio_size(40, 56, (128, 64)) == (64, 90)
    assert img.shape == (3, 64, 90) and torch.equal(lab, labels)
    assert keep_ratio_size(512, 683, (2048, 512)) == (512, 683) and keep_ratio_size(256, 300, (2048, 512)) == (512, 600)


def test_collate_stacks_equal_sizes_and_lists_others():
    a = {"image": torch.zeros(3, 8, 8), "labels": torch.zeros(8, 8, dtype=torch.long), "name": "a"}
    b = {"image": torch.zeros(3, 8, 12), "labels": torch.zeros(8, 12, dtype=torch.long), "name": "b"}
    same = collate_segmentation([a, a])
    assert same["image"].shape == (2, 3, 8, 8) and same["name"] == ["a", "a"]
    mixed = collate_segmentation([a, b])
    assert isinstance(mixed["image"], list) and mixed["labels"][1].shape == (8, 12)


# ------------------------------------------------------------------ embedded scenes
def test_scenes_are_deterministic_and_varied():
    images, labels = make_scenes(12, seed=0, size=64)
    again, again_labels = make_scenes(12, seed=0, size=64)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.uint8 and labels.shape == (12, 64, 64)
    assert not torch.equal(make_scenes(12, seed=1, size=64)[0], images)
    assert not torch.equal(make_scenes(12, seed=0, split="val", size=64)[0], images)
    assert torch.equal(make_scenes(3, seed=0, size=64)[0], images[:3])  # a scene depends on its index only
    present = set(make_scenes(20, seed=0, size=64)[1].unique().tolist())
    assert len(present) >= 8 and present <= set(range(len(SCENE_CLASSES)))
    # several regions per scene (background cuts + occluding objects)
    assert min(len(labels[i].unique()) for i in range(12)) >= 2


def test_scenes_dataset_from_config():
    cfg = OmegaConf.create(dict(_target_="bixt.data.ade20k.scenes_data", seed=0, train_size=8, val_size=4,
                                img_size=48, num_classes=10, noise=0.04, hue_jitter=0.25, max_objects=4, crop_size=48, scale=[48, 48], ratio_range=[1.0, 1.25],
                                cat_max_ratio=0.75, flip_prob=0.5, photometric=True, test_scale=None))
    train, val, classes = build_semseg_datasets(cfg)
    assert classes == list(SCENE_CLASSES) and len(train) == 8 and len(val) == 4
    assert train[0]["image"].shape == (3, 48, 48) and val[0]["labels"].shape == (48, 48)
    assert build_semseg_datasets(cfg, eval_only=True)[0] is None
