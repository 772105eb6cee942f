"""Data paths that used to look as if they worked: every one now gives the right data or an error
that names the file / key / value (image folders, HF image datasets, AAN TSVs, data defaults)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from bixt.data.aan import AANFormatError, load_aan
from bixt.data.builder import build_data
from bixt.data.image_files import BadImageError
from bixt.data.shapes import SHAPE_CLASSES

CONFIGS = Path(__file__).resolve().parents[1] / "bixt" / "configs" / "imagenet"


def data_cfg(name: str, **overrides):
    # a data option's file also sets the loader's workers (trainer.num_workers): its data node is the builder's
    return OmegaConf.merge(OmegaConf.load(CONFIGS / "data" / f"{name}.yaml").data, overrides)


def build_image_datasets(cfg, img_size: int, **runtime):
    """The task's data call on a ``data`` node, at ``img_size`` px."""
    data = build_data(OmegaConf.merge(cfg, {"img_size": img_size}), **runtime)
    return data.train, data.val, data.num_classes


def make_folder(root: Path, layout: dict[str, str], per_class: int = 2) -> Path:
    """``layout``: split -> class letters, e.g. ``{"train": "abc", "val": "bc"}``; tiny PNGs."""
    for split, classes in layout.items():
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(folder / f"{c}{i}.png")
    return root


def labels_of(dataset) -> dict[str, int]:
    """Class folder name -> label of the samples in a folder dataset."""
    return {Path(path).parent.name: label for path, label in dataset.samples}


# ----------------------------------------------------------------------------- class lists
def test_class_names_fix_eval_labels_when_val_lacks_a_class(tmp_path):
    root = make_folder(tmp_path, {"val": "bc"})  # no train/, and no val/a
    _, val, num_classes = build_image_datasets(data_cfg("folder", root=str(root)), 8, eval_only=True,
                                               class_names=["a", "b", "c"])
    assert labels_of(val) == {"b": 1, "c": 2} and num_classes == 3 and val.classes == ["a", "b", "c"]
    # the list's order wins over the sorted folder names
    _, val, _ = build_image_datasets(data_cfg("folder", root=str(root)), 8, eval_only=True, class_names=["c", "b"])
    assert labels_of(val) == {"b": 1, "c": 0}
    # a folder the list does not know is an error naming the folder and the list
    (root / "val" / "d").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "d" / "x.png")
    with pytest.raises(ValueError, match=r"class folder\(s\) \['d'\].*\['a', 'b', 'c'\]"):
        build_image_datasets(data_cfg("folder", root=str(root)), 8, eval_only=True, class_names=["a", "b", "c"])


def test_class_names_when_training_and_data_num_classes_must_agree(tmp_path):
    root = make_folder(tmp_path, {"train": "ab", "val": "ab"})
    train, val, n = build_image_datasets(data_cfg("folder", root=str(root)), 8, class_names=["x", "b", "a"])
    assert labels_of(train) == {"a": 2, "b": 1} == labels_of(val) and n == 3
    assert train.classes == val.classes == ["x", "b", "a"]
    with pytest.raises(ValueError, match=r"data.num_classes=2 but class_names give 3"):
        build_image_datasets(data_cfg("folder", root=str(root), num_classes=2), 8, class_names=["x", "b", "a"])
    with pytest.raises(ValueError, match="distinct"):
        build_image_datasets(data_cfg("folder", root=str(root)), 8, class_names=["a", "a"])


def test_every_source_names_its_classes(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, val, _ = build_image_datasets(data_cfg("embedded", train_size=4, val_size=4, num_classes=3), 8)
    assert train.classes == val.classes == list(SHAPE_CLASSES[:3])
    build_image_datasets(data_cfg("embedded", val_size=4, num_classes=3), 8, eval_only=True,
                         class_names=list(SHAPE_CLASSES[:3]))
    with pytest.raises(ValueError, match="do not match the embedded set's classes"):
        build_image_datasets(data_cfg("embedded", val_size=4, num_classes=3), 8, eval_only=True,
                             class_names=["cat", "dog", "cow"])

    root = make_folder(tmp_path / "folder", {"train": "ab", "val": "ab"})
    train, val, _ = build_image_datasets(data_cfg("folder", root=str(root)), 8)
    assert train.classes == val.classes == ["a", "b"]

    image = Image.new("RGB", (8, 8))
    named = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog"])})
    split = {"image": [image] * 2, "label": [0, 1]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(split, features=named) for s in ("train", "validation")}
                         ).save_to_disk(str(tmp_path / "named"))
    train, val, n = build_image_datasets(data_cfg("hf", path=str(tmp_path / "named")), 8)
    assert train.classes == val.classes == ["cat", "dog"] and n == 2
    # a checkpoint's class list re-indexes the data set's labels by name
    _, val, n = build_image_datasets(data_cfg("hf", path=str(tmp_path / "named")), 8, eval_only=True,
                                     class_names=["dog", "bird", "cat"])
    assert val.labels == [2, 0] and val.classes == ["dog", "bird", "cat"] and n == 3
    with pytest.raises(ValueError, match=r"classes \['cat'\] of column 'label' are not in class_names"):
        build_image_datasets(data_cfg("hf", path=str(tmp_path / "named")), 8, class_names=["dog"])

    plain = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.DatasetDict({s: datasets.Dataset.from_dict(split, features=plain) for s in ("train", "validation")}
                         ).save_to_disk(str(tmp_path / "plain"))
    _, val, n = build_image_datasets(data_cfg("hf", path=str(tmp_path / "plain")), 8)
    assert val.classes == ["class_0", "class_1"] and n == 2


# ----------------------------------------------------------------------------- folder walk and checks
def test_symlink_loop_under_a_class_folder_is_listed_once(tmp_path):
    root = make_folder(tmp_path, {"train": "ab", "val": "ab"}, per_class=9)
    os.symlink(root / "train" / "a", root / "train" / "a" / "again")  # train/a/again -> train/a
    (root / "train" / "b" / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "b" / "sub" / "deep.png")  # nested images still count
    (root / "train" / "b" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / "b" / ".ipynb_checkpoints" / "copy.png")
    train, _, _ = build_image_datasets(data_cfg("folder", root=str(root)), 8)
    assert len(train) == 19 and labels_of(train) == {"a": 0, "b": 1, "sub": 1}
    assert len({os.path.realpath(p) for p, _ in train.samples}) == 19


def test_data_num_classes_disagreeing_with_the_folders_names_key_value_and_count(tmp_path):
    root = make_folder(tmp_path, {"train": "abc", "val": "abc"})
    with pytest.raises(ValueError, match=r"data.num_classes=2 but the class folders of .*train give 3 classes "
                                         r"\['a', 'b', 'c'\]; set data.num_classes=3"):
        build_image_datasets(data_cfg("folder", root=str(root), num_classes=2), 8)
    assert build_image_datasets(data_cfg("folder", root=str(root), num_classes=3), 8)[2] == 3
    # evaluation without train/ cannot tell which class a smaller val/ lacks: an error, not shifted labels
    (root / "train").rename(root / "elsewhere")
    with pytest.raises(ValueError, match=r"data.num_classes=4 but the class folders of .*val give 3"):
        build_image_datasets(data_cfg("folder", root=str(root), num_classes=4), 8, eval_only=True)


def test_empty_train_class_folder_is_reported_as_empty(tmp_path):
    root = make_folder(tmp_path, {"train": "ac", "val": "abc"})
    (root / "train" / "b").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) \['.*train/b'\] are empty"):
        build_image_datasets(data_cfg("folder", root=str(root)), 8)
    # an empty class folder in val is fine: that class has no samples there
    for f in (root / "val" / "b").iterdir():
        f.unlink()
    (root / "train" / "b" / "b0.png").write_bytes((root / "train" / "a" / "a0.png").read_bytes())
    _, val, _ = build_image_datasets(data_cfg("folder", root=str(root)), 8)
    assert labels_of(val) == {"a": 0, "c": 2}


def test_bad_val_image_is_found_when_the_data_is_built(tmp_path, caplog):
    root = make_folder(tmp_path, {"train": "ab", "val": "ab"})
    bad = root / "val" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(BadImageError, match=r"1 unreadable image\(s\) in the validation set .*broken.png.*"
                                            r"data.on_bad_image=skip"):
        build_image_datasets(data_cfg("folder", root=str(root)), 8)
    with caplog.at_level(logging.WARNING, logger="bixt.data.images"):
        _, val, _ = build_image_datasets(data_cfg("folder", root=str(root), on_bad_image="skip"), 8)
    assert len(val) == 4 and str(bad) not in [p for p, _ in val.samples] and val.skipped == 1
    assert str(bad) in caplog.text
    _, val, _ = build_image_datasets(data_cfg("folder", root=str(root), verify_val=False), 8)
    assert len(val) == 5  # the check can be turned off (found when read, as before)


def test_bad_image_read_in_a_dataloader_worker_keeps_its_clean_message(tmp_path):
    from torch.utils.data import DataLoader, Subset

    from bixt.data.image_files import ImageFolderDataset

    root = make_folder(tmp_path, {"train": "ab"}, per_class=1)
    bad = root / "train" / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    dataset = ImageFolderDataset(root / "train")
    index = [p for p, _ in dataset.samples].index(str(bad))
    with pytest.raises(BadImageError) as in_process:
        dataset[index]
    loader = DataLoader(Subset(dataset, [index]), batch_size=None, num_workers=1)
    with pytest.raises(BadImageError) as from_worker:
        next(iter(loader))
    # torch rebuilds the worker's error from its traceback text; the message is the original one
    assert "DataLoader worker" in str(from_worker.value) and "Traceback" in str(from_worker.value)
    assert from_worker.value.message == in_process.value.message == str(in_process.value)
    assert "broken.png" in from_worker.value.message and "on_bad_image=skip" in from_worker.value.message


# ----------------------------------------------------------------------------- HF image datasets
def test_hf_without_path_says_it_must_be_set():
    pytest.importorskip("datasets")
    with pytest.raises(ValueError, match=r"data=hf needs data.path=DIR"):
        build_image_datasets(data_cfg("hf"), 8)


def test_hf_non_integer_labels_are_rejected_naming_the_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")})
    split = {"image": [Image.new("RGB", (8, 8))] * 3, "label": [0.0, 1.7, 1.0]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(split, features=features) for s in ("train", "validation")}
                         ).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"hf:train column 'label': label 1.7 in row 1 is not a whole number"):
        build_image_datasets(data_cfg("hf", path=str(tmp_path / "hf")), 8)


def test_hf_label_beyond_num_classes_and_undecodable_bytes_are_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    from io import BytesIO

    png = BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Value("int64")})
    good = {"image": [{"bytes": png.getvalue(), "path": None}] * 3, "label": [0, 1, 2]}
    bad = {"image": [{"bytes": png.getvalue(), "path": None}, {"bytes": b"junk", "path": None}], "label": [0, 1]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(good, features=features),
                          "validation": datasets.Dataset.from_dict(bad, features=features)}
                         ).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"hf:train: label 2 \(row 2\) is out of range for data.num_classes=2"):
        build_image_datasets(data_cfg("hf", path=str(tmp_path / "hf"), num_classes=2), 8)
    with pytest.raises(BadImageError, match=r"hf:validation\[1\]") as info:
        build_image_datasets(data_cfg("hf", path=str(tmp_path / "hf")), 8)
    assert "BytesIO" not in str(info.value)


# ----------------------------------------------------------------------------- defaults
def test_folder_defaults_suit_small_data_and_the_in1k_recipe_keeps_imagenet_augmentation():
    from hydra import compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers the trainer/optim schemas)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        folder = compose(config_name="config", overrides=["data=folder", "data.root=/x"]).data.aug
        in1k = compose(config_name="config", overrides=["experiment=bixt_ti_l64_p16_in1k", "data.root=/x"]).data.aug
    # a small folder: a mild crop and no colour jitter (ImageNet's 8 % crops starve a few thousand images)
    assert folder.scale[0] >= 0.5 and not folder.color_jitter and not folder.auto_augment
    assert in1k.scale == [0.08, 1.0] and list(in1k.ratio) == pytest.approx([3 / 4, 4 / 3])
    assert (in1k.hflip, in1k.color_jitter, in1k.auto_augment, in1k.crop_pct) == (0.5, 0.3, "3a", 0.875)


# ----------------------------------------------------------------------------- AAN TSVs
ROW = "1\tP1\tP2\tb'first document'\tb'second document'\n"


def write_aan(root: Path, rows: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, text in rows.items():
        (root / f"new_aan_pairs.{split}.tsv").write_text(text)
    return root


def test_empty_aan_split_names_its_file_and_split(tmp_path):
    pytest.importorskip("datasets")
    root = write_aan(tmp_path / "aan", {"train": ROW, "eval": "\n", "test": ROW})
    with pytest.raises(AANFormatError, match=r"new_aan_pairs.eval.tsv \(the 'eval' split\) holds no pairs"):
        load_aan(root, max_len=16, cache_dir=tmp_path / "cache")


def test_aan_cache_rereads_an_edit_that_keeps_the_file_size(tmp_path):
    pytest.importorskip("datasets")
    root = write_aan(tmp_path / "aan", {"train": ROW, "eval": ROW, "test": ROW})
    assert load_aan(root, max_len=16, cache_dir=tmp_path / "cache")["eval"]["label"] == [1]
    path = root / "new_aan_pairs.eval.tsv"
    before = path.stat()
    path.write_text("0" + ROW[1:])  # same size, same documents, other label
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))  # even 1 ns apart
    assert load_aan(root, max_len=16, cache_dir=tmp_path / "cache")["eval"]["label"] == [0]
