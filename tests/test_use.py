"""Using trained models: ``bixt.predict``, ``bixt.viz attention``, ``bixt.export`` (issue 22).

Each test module run trains tiny runs in-process (a second or two each) in a tmp dir."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from bixt import accel
from bixt.data.builder import build_data
from bixt.engine.trainer import use_line
from bixt.predict import PredictError, load_model, main as predict_main, predict
from bixt.tasks import kit
from bixt.viz import attention_maps, write_attention
from bixt.weights import load_weights
from task_runner import run_task_module
from use_runs import train_run, write_image_folder


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, one_thread):
    root = write_image_folder(tmp_path_factory.mktemp("images"))
    run = train_run("imagenet", tmp_path_factory.mktemp("runs") / "img", "data=folder", f"data.root={root}",
                    "data.img_size=32", "model.patch_size=8", "trainer.num_workers=0")
    return run, root


@pytest.fixture(scope="module")
def point_clouds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clouds")
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(size=(120, 3)), rng.normal(size=(120, 3))], 1)
    (folder / "Chair").mkdir()
    np.savetxt(folder / "Chair" / "one.txt", np.c_[rows, np.zeros(120)], fmt="%.4f")  # ShapeNetPart rows
    np.savetxt(folder / "solid.txt", rows, fmt="%.4f", delimiter=",")  # ModelNet rows
    np.save(folder / "xyz.npy", rows[:, :3].astype(np.float32))
    return folder


def _reference_logits(run, root):
    """The run's own evaluation of its validation images: its data builder's transform, the model
    rebuilt independently from config.yaml + best.pth, through bixt.accel as the engine evaluates."""
    cfg = OmegaConf.load(run / "config.yaml")
    ckpt = torch.load(run / "best.pth", weights_only=True)
    data = build_data(cfg.data, eval_only=True, class_names=ckpt["classes"])
    model = kit.build_model(cfg.model, num_classes=data.num_classes)
    load_weights(model, ckpt)
    batch = torch.stack([data.val[i][0] for i in range(len(data.val))])
    files = [s[0] for s in data.val.samples]
    with torch.no_grad():
        return files, accel.optimize(model.eval())(batch), data.val.classes


def test_predict_gives_the_run_evaluation_logits_and_class_names(image_run):
    run, root = image_run
    files, logits, classes = _reference_logits(run, root)
    loaded = load_model(run)
    assert loaded.task == "image" and loaded.classes == classes == ["circle", "square", "triangle"]
    rows, skipped = predict(loaded, [str(root / "val")], top_k=2)
    assert not skipped and [r["file"] for r in rows] == [str(f) for f in files]
    probs = logits.softmax(-1)
    top = probs.topk(2, dim=-1)
    assert [r["labels"] for r in rows] == [[classes[i] for i in row] for row in top.indices.tolist()]
    torch.testing.assert_close(torch.tensor([r["probs"] for r in rows]), top.values, rtol=0, atol=0)
    # its accuracy is the run's own val/top1 (one epoch: the best is the last)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    truth = [Path(f).parent.name for f in files]
    accuracy = 100 * np.mean([r["labels"][0] == t for r, t in zip(rows, truth)])
    assert accuracy == pytest.approx(metrics[-1]["val/top1"])


def test_predict_command_writes_jsonl_and_csv_and_counts_what_it_skips(image_run, tmp_path, capsys):
    run, root = image_run
    (tmp_path / "notes.txt").write_text("not an image")
    Image.open(next((root / "val" / "circle").iterdir())).save(tmp_path / "a.png")
    predict_main([str(run), str(tmp_path / "*.png"), str(tmp_path / "notes.txt"), "--out", str(tmp_path / "p.jsonl"),
                  "--top-k", "3"])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["file"].endswith("a.png") and len(rows[0]["labels"]) == 3
    assert sum(rows[0]["probs"]) == pytest.approx(1.0, abs=1e-5)
    assert "1 file(s) skipped" in capsys.readouterr().err
    predict_main([str(run), str(tmp_path / "a.png"), "--out", str(tmp_path / "p.csv")])
    assert (tmp_path / "p.csv").read_text().splitlines()[0].startswith("file,labels,probs")
    with pytest.raises(SystemExit, match="notes.txt: not an image.*--strict"):
        predict_main([str(run), str(tmp_path), "--strict"])


def test_bad_models_and_inputs_are_one_line_errors(image_run, tmp_path, point_clouds):
    run, _ = image_run
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(PredictError, match=r"empty_run has no weights \(best.pth or last.pth\)"):
        load_model(empty)
    with pytest.raises(PredictError, match="none of the 3 input.* is images"):
        predict(load_model(run), [str(point_clouds)])
    ckpt = torch.load(run / "best.pth", weights_only=True)
    ckpt["classes"] = ["a", "b"]
    torch.save(ckpt, tmp_path / "two.pth")
    with pytest.raises(PredictError, match="2 class names for a model with 3 outputs"):
        load_model(run, checkpoint=str(tmp_path / "two.pth"))


def test_export_timm_folder_rebuilds_the_same_model_and_predicts(image_run, tmp_path):
    import timm
    from timm.data import resolve_data_config
    from bixt.export import export_timm
    run, root = image_run
    out = export_timm(run, tmp_path / "timm")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == ["circle", "square", "triangle"]
    ours = load_model(run, fast=False).model
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max() <= 1e-6
    data_cfg = resolve_data_config({}, model=theirs)
    assert data_cfg["input_size"] == (3, 32, 32) and data_cfg["crop_pct"] == 0.875
    assert data_cfg["interpolation"] == "bicubic"
    a, _ = predict(load_model(run), [str(root / "val")])
    b, _ = predict(load_model(out), [str(root / "val")])
    assert [r["labels"] for r in a] == [r["labels"] for r in b]
    torch.testing.assert_close(torch.tensor([r["probs"] for r in a]), torch.tensor([r["probs"] for r in b]))


def test_export_onnx_matches_eager_and_other_runs_are_refused(image_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from bixt.export import export_onnx
    run, _ = image_run
    assert export_onnx(run, tmp_path / "onnx").is_file()  # checked within 1e-4 inside


def test_viz_attention_on_an_image_run(image_run, tmp_path):
    run, root = image_run
    loaded = load_model(run, fast=False)
    image = next((root / "val" / "square").iterdir())
    maps = attention_maps(loaded, image, layers=[0, -1])
    assert maps.layers == [0, 1] and maps.kind == "image" and maps.context["grid"] == (4, 4)
    for to_tokens in maps.latents_to_tokens:  # each latent's attention over the 16 patches sums to one
        assert to_tokens.shape == (8, 16)
        torch.testing.assert_close(to_tokens.sum(-1), torch.ones(8))
    assert maps.tokens_to_latents[0] is not None and maps.tokens_to_latents[1] is None  # one-sided last layer
    torch.testing.assert_close(maps.tokens_to_latents[0].sum(0), torch.ones(16))
    written = write_attention(loaded, [str(image)], tmp_path, k=2)
    assert [p.name for p in written] == [f"{image.stem}_layer0.png", f"{image.stem}_layer1.png"]
    assert Image.open(written[0]).width > Image.open(written[1]).width  # layer 0 has the token->latent panel


def test_use_line_names_the_export_command(tmp_path):
    cfg = OmegaConf.create({"model": {"_target_": "bixt.models.factory.image_classifier"}})
    assert use_line(tmp_path, cfg).endswith(f"python -m bixt.export {tmp_path} --format timm --out {tmp_path / 'timm'}")
    other = OmegaConf.create({"model": {"_target_": "bixt.models.point.PointClassifier"}})
    assert "bixt.export" not in use_line(tmp_path, other) and "bixt.predict" in use_line(tmp_path, other)


def test_segmentation_run_writes_masks_at_each_image_size(tmp_path, one_thread):
    run = train_run("ade20k_semseg", tmp_path / "seg")
    images = tmp_path / "photos"
    images.mkdir()
    for i, size in enumerate([(37, 29), (64, 48)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
            images / f"p{i}.png")
    rows, _ = predict(load_model(run), [str(images)], out_dir=str(tmp_path / "masks"))
    for row, size in zip(rows, [(37, 29), (64, 48)]):
        mask = Image.open(row["mask"])
        assert mask.mode == "P" and mask.size == size and Image.open(row["overlay"]).size == size
        assert sum(row["classes"].values()) == pytest.approx(1.0, abs=1e-3)
    assert len(write_attention(load_model(run, fast=False), [str(images / "p0.png")], tmp_path / "viz")) == 2
    ckpt = torch.load(run / "best.pth", weights_only=True)
    ckpt["classes"] = ckpt["classes"][:-1]
    torch.save(ckpt, tmp_path / "fewer.pth")
    with pytest.raises(PredictError, match="fewer.pth: 9 class names for a model with 10 outputs"):
        load_model(run, checkpoint=str(tmp_path / "fewer.pth"))


def test_point_runs_predict_and_draw_attention(tmp_path, point_clouds, one_thread):
    cls_run = train_run("modelnet40_cls", tmp_path / "cls")
    loaded = load_model(cls_run)
    rows, skipped = predict(loaded, [str(point_clouds / "solid.txt"), str(point_clouds / "xyz.npy")], top_k=3)
    assert len(rows) == 2 and not skipped and all(r["labels"][0] in loaded.classes for r in rows)
    seg_run = train_run("shapenet_partseg", tmp_path / "partseg")
    segmenter = load_model(seg_run)
    rows, skipped = predict(segmenter, [str(point_clouds / "Chair")], out_dir=str(tmp_path / "parts"))
    assert len(rows) == 1 and rows[0]["category"] == "Chair" and len(rows[0]["part_labels"]) == 120
    assert set(rows[0]["part_labels"]) <= {2, 3, 4} and Image.open(rows[0]["picture"]).size == (320, 320)
    with pytest.raises(PredictError, match="solid.txt: the part segmenter needs the object category.*--category"):
        predict(segmenter, [str(point_clouds / "solid.txt")])
    with pytest.raises(PredictError, match="none of the 1 input"):  # xyz only: this model reads normals too
        predict(segmenter, [str(point_clouds / "xyz.npy")], category="chair")
    maps = attention_maps(load_model(seg_run, fast=False), point_clouds / "Chair" / "one.txt")
    torch.testing.assert_close(maps.latents_to_tokens[0].sum(-1), torch.ones(8))
    written = write_attention(load_model(cls_run, fast=False), [str(point_clouds / "xyz.npy")], tmp_path / "viz")
    assert len(written) == 2 and all(Image.open(p).size[0] > 0 for p in written)


def test_listops_run_predicts_lines_and_highlights_text(tmp_path, one_thread):
    run = train_run("lra_listops", tmp_path / "listops")
    text = tmp_path / "exprs.txt"
    text.write_text("[MAX 2 9 [MIN 4 7 ] 0 ]\n\n( [SM 1 2 3 ] )\nhello\n")
    rows, skipped = predict(load_model(run), [str(text)], top_k=3)
    assert [r["line"] for r in rows] == [1, 3] and len(skipped) == 1 and "hello" in skipped[0][1]
    assert all(set(r["labels"]) <= set("0123456789") for r in rows)
    loaded = load_model(run, fast=False)
    maps = attention_maps(loaded, text)
    assert maps.context["tokens"][0] == "[MAX " and maps.latents_to_tokens[0].shape[1] == 9
    torch.testing.assert_close(maps.latents_to_tokens[-1].sum(-1), torch.ones(maps.latents_to_tokens[-1].shape[0]))
    (page,) = write_attention(loaded, [str(text)], tmp_path / "viz")
    assert page.suffix == ".html" and "latent &rarr; token" in page.read_text()


def test_retrieval_run_matches_pairs_and_highlights_bytes(tmp_path, one_thread):
    run = train_run("lra_retrieval", tmp_path / "aan")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("a\tb\tcats sit on mats\tcats sit on hats\nno tab here\n")
    rows, skipped = predict(load_model(run), [str(pairs)])
    assert len(rows) == 1 and rows[0]["labels"][0] in ("match", "no match") and 0 <= rows[0]["match_prob"] <= 1
    assert skipped == [(f"{pairs}:2", "not a document pair (two tab-separated columns)")]
    maps = attention_maps(load_model(run, fast=False), pairs)
    assert "".join(maps.context["tokens"]) == "cats sit on hats"  # the row's last document, byte by byte
    torch.testing.assert_close(maps.latents_to_tokens[0].sum(-1), torch.ones(maps.latents_to_tokens[0].shape[0]))


def test_registered_name_gets_imagenet_names_and_any_size_with_native_size(tmp_path):
    from bixt.models.bixt_image import BiXT
    loaded = load_model("bixt_ti_l64_p16_ft384", fast=False)  # no --checkpoint: timm's init, ImageNet's names
    assert len(loaded.classes) == 1000 and loaded.classes[0] == "tench" and loaded.input_cfg["input_size"][1] == 384
    loaded.model = BiXT(embed_dim=32, depth=1, num_latents=4, num_heads=2, dynamic_img_size=True).eval()  # as small
    for i, size in enumerate([(50, 70), (96, 33)]):
        Image.new("RGB", size, (i * 90, 40, 200)).save(tmp_path / f"{i}.png")
    rows, _ = predict(loaded, [str(tmp_path)], native_size=True)
    assert len(rows) == 2 and all(len(r["labels"]) == 5 for r in rows)
    fixed = load_model("bixt_ti_l32_p16", fast=False)
    with pytest.raises(PredictError, match="--native-size needs a model with resolution-adaptive positions"):
        predict(fixed, [str(tmp_path)], native_size=True)


@pytest.mark.e2e
def test_predict_and_export_commands(image_run, tmp_path):
    run, root = image_run
    out = run_task_module("bixt.predict", [str(run), str(root / "val"), "--out", str(tmp_path / "p.jsonl")], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "12 prediction(s)" in out.stderr and len((tmp_path / "p.jsonl").read_text().splitlines()) == 12
    out = run_task_module("bixt.export", [str(run), "--format", "timm", "--out", str(tmp_path / "t")], tmp_path)
    assert out.returncode == 0 and (tmp_path / "t" / "model.safetensors").is_file(), out.stderr[-2000:]
    out = run_task_module("bixt.viz", ["attention", str(tmp_path / "t"), str(root / "val" / "circle"), "--out",
                                       str(tmp_path / "v"), "--layers", "x"], tmp_path)
    assert out.returncode != 0 and out.stderr.strip().splitlines()[-1].startswith("error: --layers 'x'")
