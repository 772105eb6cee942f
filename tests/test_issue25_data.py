"""Issue 25, data readers: shared caches never run code, EXIF orientation, ADE20K checks at start,
ListOps targets, ModelNet40 split files, image-folder links."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bixt.data.errors import DataError


class _Planted:
    """Unpickling this creates ``marker``: the proof that a cache file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path) -> None:
    torch.save({"points": _Planted(marker)}, path)


# ------------------------------------------------------------------ caches never run code
def test_a_planted_pickle_in_the_shapenetpart_cache_is_refused_and_never_run(tmp_path):
    from bixt.data.shapenetpart import load_shapenetpart
    from test_shapenet_data import write_shapenet_folder

    folder = write_shapenet_folder(tmp_path / "data", per_split=(3, 1, 1))
    cache = tmp_path / "cache"
    load_shapenetpart(folder, "train", cache_dir=cache)
    processed = next(cache.glob("shapenetpart-*/processed"))
    marker = tmp_path / "ran"
    for name in ("pre_transform.pt", "pre_filter.pt"):  # PyG unpickles these unsafely
        _plant(processed / name, marker)
    load_shapenetpart(folder, "train", cache_dir=cache)
    assert not marker.exists()
    train_file = next(processed.glob("*_train.pt"))
    _plant(train_file, marker)
    with pytest.raises(DataError) as info:
        load_shapenetpart(folder, "train", cache_dir=cache)
    assert not marker.exists()
    message = info.value.message
    assert str(train_file) in message and "delete the cache folder" in message and str(processed.parent) in message


def test_modelnet_and_text_caches_load_tensors_only(tmp_path, monkeypatch):
    from bixt.data.listops import load_listops
    from bixt.data.modelnet import ModelNetDataError, load_modelnet40
    from test_listops import write_folder
    from test_modelnet import write_modelnet_folder

    folder = write_modelnet_folder(tmp_path / "mn")
    cache = tmp_path / "cache"
    load_modelnet40(folder, "train", num_points=16, cache_dir=cache)
    (cached,) = cache.rglob("train-*.pt")
    marker = tmp_path / "ran"
    _plant(cached, marker)
    with pytest.raises(ModelNetDataError) as info:
        load_modelnet40(folder, "train", num_points=16, cache_dir=cache)
    assert not marker.exists() and str(cached) in info.value.message and "delete" in info.value.message

    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    root = write_folder(tmp_path / "lo")
    load_listops(root, cache_dir=tmp_path / "text")
    load_listops(root, cache_dir=tmp_path / "text")  # from the cache
    assert all(w is True for w in loads)
    for path in (tmp_path / "text").rglob("*"):  # every cache file a pickle that runs code
        if path.is_file():
            _plant(path, marker)
    try:
        load_listops(root, cache_dir=tmp_path / "text")
    except Exception:  # noqa: BLE001 - refusing is fine, running the pickle is not
        pass
    assert not marker.exists()


# ------------------------------------------------------------------ ModelNet40 split files
def test_modelnet_reads_a_bom_and_names_a_non_utf8_byte(tmp_path):
    from bixt.data.modelnet import ModelNetDataError, load_modelnet40
    from test_modelnet import CLASSES, write_modelnet_folder

    folder = write_modelnet_folder(tmp_path / "mn")
    names = folder / "modelnet40_shape_names.txt"
    names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes())  # a BOM, as Notepad writes
    _, labels, classes, _ = load_modelnet40(folder, "train", num_points=16, cache_dir=tmp_path / "cache")
    assert classes == list(CLASSES) and labels[0] == 0  # airplane_0001 is an airplane
    split = folder / "modelnet40_test.txt"
    split.write_bytes(split.read_bytes().replace(b"vase_0004", b"vase_0004\xe9"))  # Latin-1 é
    lineno = split.read_bytes().split(b"\n").index(b"vase_0004\xe9") + 1
    with pytest.raises(ModelNetDataError) as info:
        load_modelnet40(folder, "test", num_points=16, cache_dir=tmp_path / "cache")
    assert f"{split}:{lineno}:" in info.value.message and "UTF-8" in info.value.message


def test_modelnet_warns_of_repeats_and_overlap_and_refuses_a_one_point_shape(tmp_path, caplog):
    from bixt.data.modelnet import ModelNetDataError, load_modelnet40
    from test_modelnet import write_modelnet_folder

    folder = write_modelnet_folder(tmp_path / "mn")
    kw = dict(num_points=16, cache_dir=tmp_path / "cache")
    train, test = folder / "modelnet40_train.txt", folder / "modelnet40_test.txt"
    train.write_text(train.read_text() + "vase_0001\n")
    test.write_text(test.read_text() + "airplane_0002\n")
    with caplog.at_level(logging.WARNING, logger="bixt.data.modelnet"):
        pts, *_ = load_modelnet40(folder, "train", **kw)
        load_modelnet40(folder, "test", **kw)
    assert pts.shape[0] == 9  # the repeat is read once
    assert "lists 1 shape(s) more than once, e.g. 'vase_0001' (lines 7, 10)" in caplog.text
    assert "1 shape(s) are listed in both" in caplog.text and "airplane_0002" in caplog.text
    one_point = folder / "vase" / "vase_0002.txt"
    one_point.write_text("0.1,0.2,0.3,0,0,1\n")
    with pytest.raises(ModelNetDataError) as info:
        load_modelnet40(folder, "train", **kw)
    assert str(one_point) in info.value.message and "1 point(s)" in info.value.message


# ------------------------------------------------------------------ ListOps targets and options
@pytest.mark.parametrize("target", ["nan", "inf", "-inf"])
def test_listops_nan_or_inf_target_names_file_and_line(tmp_path, target):
    from bixt.data.listops import ListOpsFormatError, load_listops
    from test_listops import write_folder

    root = write_folder(tmp_path / "lo", copies=1)
    path = root / "basic_val.tsv"
    path.write_text(path.read_text().replace("\t3\n", f"\t{target}\n"))
    with pytest.raises(ListOpsFormatError) as info:
        load_listops(root, cache_dir=tmp_path / "cache")
    assert info.value.message == (f"{path}:3: target must be an integer 0-9 (the expression's value), "
                                  f"got {target!r}")


def test_listops_unknown_on_too_long_names_the_key_before_reading(tmp_path):
    from bixt.data.listops import ListOpsFormatError, load_embedded, load_listops
    from test_listops import write_folder

    root = write_folder(tmp_path / "lo", copies=1)
    for load in (lambda: load_listops(root, on_too_long="cut", cache_dir=tmp_path / "cache"),
                 lambda: load_embedded({"train": 2}, on_too_long="cut", min_length=2, max_length=20)):
        with pytest.raises(ListOpsFormatError) as info:
            load()
        assert info.value.message == "data.on_too_long='cut' is not an option; choose one of truncate, fail"


def test_listops_targets_that_disagree_with_the_expression_are_counted(tmp_path, caplog):
    from bixt.data.listops import load_listops
    from test_listops import write_folder

    root = write_folder(tmp_path / "lo", copies=2)
    path = root / "basic_train.tsv"
    lines = path.read_text().splitlines()
    for i in (2, 5, 8):  # "[MIN 5 3" is 3, not 4 (1-based file lines 3, 6, 9)
        lines[i] = lines[i].replace("\t9", "\t4").replace("\t3", "\t4").replace("\t6", "\t4")
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="bixt.data.listops"):
        splits = load_listops(root, cache_dir=tmp_path / "cache")
    assert f"{path}: 3 of 8 targets differ from their expression's value" in caplog.text
    assert f"first at {path}:3, {path}:6, {path}:9;" in caplog.text
    assert "basic_val.tsv: " not in caplog.text and len(splits["train"]) == 8


def test_a_slide_step_larger_than_the_window_is_refused_at_start_naming_both_keys():
    from omegaconf import OmegaConf

    from bixt.data.seg_transforms import check_slide_window
    from bixt.tasks.segmentation import check_sizes

    check_slide_window((64, 64), (64, 32))
    check_slide_window(None, (80, 80))  # whole-image evaluation: no window
    cfg = OmegaConf.create({"data": {"crop_size": 64}, "eval": {"mode": "slide", "crop": 64, "stride": 80}})
    with pytest.raises(ValueError, match=r"eval.stride=\[80, 80\] is larger than the sliding window "
                                         r"eval.crop=\[64, 64\]"):
        check_sizes(cfg, 16)  # what the task runs before building the data
    cfg.eval.mode = "whole"
    assert check_sizes(cfg, 16) == ((64, 64), (80, 80))


# ------------------------------------------------------------------ EXIF orientation
def _tagged_jpeg(path: Path, upright: "np.ndarray", orientation: int = 6) -> None:
    """Save ``upright`` (H, W, 3) as a JPEG whose stored pixels are turned, with the EXIF Orientation
    tag that turns them back (6: the viewer turns the stored pixels 90 degrees clockwise)."""
    import numpy as np
    from PIL import Image

    stored = np.rot90(upright, k=1)  # counter-clockwise: the tag's clockwise turn undoes it
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=100, subsampling=0, exif=exif)


def _quadrants(height: int, width: int) -> "np.ndarray":
    import numpy as np

    img = np.zeros((height, width, 3), np.uint8)
    img[: height // 2, : width // 2] = (255, 0, 0)  # top left red, as every viewer shows it
    img[height // 2:, width // 2:] = (0, 0, 255)
    return img


def test_image_folders_and_hf_images_are_read_upright(tmp_path):
    import numpy as np
    from PIL import Image

    from bixt.data.image_files import HFImageDataset, ImageFolderDataset

    upright = _quadrants(32, 48)
    (tmp_path / "f" / "a").mkdir(parents=True)
    _tagged_jpeg(tmp_path / "f" / "a" / "x.jpg", upright)
    assert Image.open(tmp_path / "f" / "a" / "x.jpg").size == (32, 48)  # stored turned
    img, _ = ImageFolderDataset(tmp_path / "f")[0]
    assert img.size == (48, 32) and np.abs(np.asarray(img).astype(int) - upright).mean() < 8

    import datasets

    split = datasets.Dataset.from_dict({"image": [str(tmp_path / "f" / "a" / "x.jpg")], "label": [0]}).cast_column(
        "image", datasets.Image())
    img, _ = HFImageDataset(split)[0]
    assert img.size == (48, 32) and np.abs(np.asarray(img).astype(int) - upright).mean() < 8


def _ade_with_tagged_image(tmp_path: Path, annotation: "np.ndarray", height=32, width=48):
    import numpy as np
    from PIL import Image

    from test_ade20k_data import write_ade_folder

    base = write_ade_folder(tmp_path / "ade", train_sizes=[(32, 32)] * 2, val_sizes=[(32, 32)] * 2)
    _tagged_jpeg(base / "images" / "validation" / "ADE_val_00000001.jpg", _quadrants(height, width))
    Image.fromarray(annotation.astype(np.uint8), mode="L").save(
        base / "annotations" / "validation" / "ADE_val_00000001.png")
    return base


@pytest.mark.parametrize("height, width", [(32, 32), (32, 48)], ids=["square", "non-square"])
def test_ade20k_images_are_upright_and_match_their_annotation(tmp_path, height, width):
    import numpy as np

    from bixt.data.ade20k import _FolderSource, read_ade20k_split

    upright = _quadrants(height, width)
    annotation = 1 + (upright[..., 0] > 128) + 2 * (upright[..., 2] > 128)  # painted on the upright image
    base = _ade_with_tagged_image(tmp_path, annotation, height, width)
    pairs = read_ade20k_split(base, "validation", num_classes=4)
    image, labels, _ = _FolderSource(pairs, 4, True).load(0)
    red = (image[0] > 128) & (image[2] < 128)
    assert labels.shape == (height, width) and bool((labels[red] == 1).float().mean() > 0.9)


def test_ade20k_size_mismatch_from_the_orientation_says_so(tmp_path):
    import numpy as np

    from bixt.data.ade20k import ADE20KDataError, read_ade20k_split

    stored_size = np.ones((48, 32))  # drawn on the stored (turned) pixels, not the upright image
    base = _ade_with_tagged_image(tmp_path, stored_size)
    with pytest.raises(ADE20KDataError) as info:
        read_ade20k_split(base, "validation", num_classes=4)
    assert "ADE_val_00000001.png: annotation is 32x48 (WxH) but its image" in info.value.message
    assert "is 48x32 as shown upright: the image has EXIF Orientation=6" in info.value.message


# ------------------------------------------------------------------ image folders: one file, one label
def test_an_image_linked_into_a_second_class_is_refused_naming_the_link(tmp_path):
    import numpy as np
    from PIL import Image

    from bixt.data.image_files import ImageFolderDataset

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / c / f"{c}{i}.png")
    (tmp_path / "a" / "from_b").symlink_to(tmp_path / "b", target_is_directory=True)
    with pytest.raises(DataError) as info:
        ImageFolderDataset(tmp_path)
    link = tmp_path / "a" / "from_b" / "b0.png"
    assert info.value.message.startswith(f"{link} (class 'a') links to {tmp_path / 'b' / 'b0.png'}, which is also ")
    (tmp_path / "a" / "from_b").unlink()
    (tmp_path / "a" / "again.png").symlink_to(tmp_path / "a" / "a0.png")  # within its class: read once
    assert len(ImageFolderDataset(tmp_path)) == 4


# ------------------------------------------------------------------ ADE20K checks at start
def test_ade20k_validation_without_labelled_pixels_warns_when_built(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from test_ade20k_data import ade_cfg, build_semseg_datasets, write_ade_folder

    base = write_ade_folder(tmp_path / "ade")
    for path in (base / "annotations" / "validation").iterdir():
        Image.fromarray(np.zeros(Image.open(path).size[::-1], np.uint8), mode="L").save(path)  # all "other"
    with caplog.at_level(logging.WARNING, logger="bixt.data.ade20k"):
        build_semseg_datasets(ade_cfg(base))
    assert "the 3 annotations hold no labelled pixel" in caplog.text and "data.reduce_zero_label" in caplog.text


def test_ade20k_mode_1_annotation_is_named_as_such(tmp_path):
    from PIL import Image

    from bixt.data.ade20k import ADE20KDataError, read_ade20k_split
    from test_ade20k_data import write_ade_folder

    base = write_ade_folder(tmp_path / "ade")
    path = base / "annotations" / "validation" / "ADE_val_00000002.png"
    Image.open(path).convert("1").save(path)
    with pytest.raises(ADE20KDataError) as info:
        read_ade20k_split(base, "validation")
    assert "annotation has mode 1 (1-bit black and white" in info.value.message and "RGB" not in info.value.message


def test_ade20k_pairs_names_in_either_unicode_normalisation(tmp_path):
    import unicodedata

    from bixt.data.ade20k import ADE20KDataError, read_ade20k_split
    from test_ade20k_data import write_ade_folder

    base = write_ade_folder(tmp_path / "ade")
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    images, annotations = base / "images" / "validation", base / "annotations" / "validation"
    (images / "ADE_val_00000001.jpg").rename(images / f"{nfc}.jpg")
    (annotations / "ADE_val_00000001.png").rename(annotations / f"{nfd}.png")
    pairs = read_ade20k_split(base, "validation")
    assert (images / f"{nfc}.jpg", annotations / f"{nfd}.png") in pairs
    (images / "ADE_val_00000002.jpg").rename(images / f"{nfd}.jpg")
    with pytest.raises(ADE20KDataError, match="the same name in two Unicode normalisations"):
        read_ade20k_split(base, "validation")
