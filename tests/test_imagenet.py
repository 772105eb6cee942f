"""`python -m bixt.tasks.imagenet`: data sources, configs, checkpoints, resume after a kill, DDP."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from PIL import Image

import bixt  # noqa: F401
from bixt.data.builder import build_data
from bixt.data.image_files import BadImageError, HFImageDataset, ImageFolderDataset
from bixt.data.shapes import ShapesDataset, generate_shapes
from bixt.data.task_data import TaskData
from bixt.tasks.kit import check_required

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bixt" / "configs" / "imagenet"
# a tiny BiXT and a tiny slice of the embedded data: each run takes seconds
TINY = ["model.encoder.depth=2", "model.encoder.dim=32", "model.encoder.num_heads=2",
        "model.encoder.num_latents=8", "data.train_size=128", "data.val_size=64", "trainer.batch_size=16",
        "trainer.progress=false", "trainer.log_every=0"]


def task(*overrides: str, cwd: Path, module: list[str] | None = None, check: bool = True,
         timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = (module or [sys.executable, "-m"]) + ["bixt.tasks.imagenet", *overrides,
                                               f"hydra.run.dir={cwd / 'hydra'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers the trainer/optim schemas in Hydra's ConfigStore)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


# ----------------------------------------------------------------------------- embedded data
def test_embedded_shapes_are_deterministic_balanced_and_not_linearly_separable():
    images, labels = generate_shapes(3500, img_size=32, seed=3)
    assert images.dtype == torch.uint8 and images.shape == (3500, 3, 32, 32)
    again, _ = generate_shapes(3500, img_size=32, seed=3)
    assert torch.equal(images, again)
    assert not torch.equal(images[:200], generate_shapes(200, img_size=32, seed=4)[0])
    assert torch.bincount(labels).tolist() == [350] * 10
    # ridge regression on (2x2-pooled) pixels stays far from what the small BiXT reaches (> 90 %):
    # the classes are shapes under random pose, colour and clutter, not colours or positions
    x = torch.nn.functional.avg_pool2d(images.float() / 255, 2).flatten(1)
    x = torch.cat([x, torch.ones(len(x), 1)], 1)
    targets = torch.nn.functional.one_hot(labels[:3000], 10).float()
    w = torch.linalg.solve(x[:3000].T @ x[:3000] + 10 * torch.eye(x.shape[1]), x[:3000].T @ targets)
    assert ((x[3000:] @ w).argmax(1) == labels[3000:]).float().mean() < 0.45
    ds = ShapesDataset(20, img_size=32, seed=3, train=True)
    img, label = ds[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= label < 10


# ----------------------------------------------------------------------------- files on disk
def make_image_folder(root: Path, classes=("ant", "bee", "cat"), per_class: int = 6, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 2):
                pixels = (rng.random((size, size, 3)) * 80 + 60 * c).astype(np.uint8)
                ext = "JPEG" if i % 2 else "png"
                Image.fromarray(pixels).save(folder / f"{name}_{i}.{ext}")
    return root


def test_image_folder_reports_bad_files_by_path(tmp_path):
    root = make_image_folder(tmp_path)
    bad = root / "train" / "bee" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    failing = ImageFolderDataset(root / "train", on_bad_image="fail")
    index = [str(p) for p, _ in failing.samples].index(str(bad))
    with pytest.raises(BadImageError, match="broken.JPEG.*on_bad_image=skip"):
        failing[index]
    skipping = ImageFolderDataset(root / "train", on_bad_image="skip")
    img, label = skipping[index]
    assert img.size == (40, 40) and skipping.skipped == 1
    assert skipping.classes == ["ant", "bee", "cat"]


def test_hf_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def split(n):
        return {"image": [Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)) for _ in range(n)],
                "label": [i % 3 for i in range(n)]}

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(split(6), features=features),
                               "validation": datasets.Dataset.from_dict(split(3), features=features)})
    dd.save_to_disk(str(tmp_path / "hf"))
    cfg = compose("data=hf", f"data.path={tmp_path / 'hf'}", "data.img_size=32").data
    data = build_data(cfg)
    train, val, num_classes = data.train, data.val, data.num_classes
    assert num_classes == 3 and len(train) == 6 and len(val) == 3
    img, label = val[1]
    assert img.shape == (3, 32, 32) and label == 1
    broken = HFImageDataset(datasets.Dataset.from_dict({"image": [{"bytes": b"junk", "path": None}], "label": [0]},
                                                       features=features), name="mini")
    with pytest.raises(BadImageError, match=r"mini\[0\]"):
        broken[0]


# ----------------------------------------------------------------------------- configs
def test_official_recipe_and_ft384_presets_compose():
    from bixt.engine import optim_config, trainer_config
    from bixt.engine.optim import scaled_lr

    cfg = compose("experiment=bixt_ti_l64_p16_in1k", "data.root=/data/imagenet")
    ocfg, tcfg = optim_config(cfg), trainer_config(cfg)
    assert cfg.model.model_name == "bixt_ti_l64_p16" and cfg.data.img_size == 224
    assert cfg.data._target_ == "bixt.data.images.folder_image_data"
    assert (ocfg.name, ocfg.eps, ocfg.weight_decay, ocfg.min_lr, ocfg.warmup_lr) == ("lambc", 1e-8, 0.05, 1e-5, 1e-6)
    assert ocfg.sched == "cosine" and ocfg.sched_on_epochs and ocfg.warmup_epochs == 5 and tcfg.epochs == 800
    assert scaled_lr(ocfg, 1024) == pytest.approx(2.5e-3) and scaled_lr(ocfg, 4096) == pytest.approx(5e-3)
    assert cfg.loss.name == "bce" and cfg.mixup.mixup_alpha == 0.8 and cfg.mixup.cutmix_alpha == 1.0
    assert cfg.data.aug.auto_augment == "3a" and cfg.data.aug.color_jitter == 0.3 and cfg.data.aug.re_prob == 0
    assert tcfg.clip_grad is None

    ft = compose("experiment=bixt_ti_l64_p16_ft384", "data.root=/data/imagenet", "finetune_from=/w/best.pth")
    assert ft.model.model_name == "bixt_ti_l64_p16_ft384" and ft.data.img_size == 384 and ft.model.drop_path_rate == 0.05
    # the 224 px weights come through the one finetune_from mechanism of the kit (kit.finetune)
    assert ft.finetune_from == "/w/best.pth" and trainer_config(ft).checkpoint is None and trainer_config(ft).epochs == 30
    assert optim_config(ft).lr == 2.5e-5 and optim_config(ft).warmup_epochs == 0
    with pytest.raises(ValueError, match="finetune_from"):
        check_required(compose("experiment=bixt_ti_l64_p16_ft384", "data.root=/data/imagenet"))


@pytest.mark.e2e
def test_help_lists_groups_and_overrides(tmp_path):
    out = task("--help", cwd=tmp_path).stdout
    for expected in ("model:", "data: embedded, folder, hf", "optim:", "trainer: default",
                     "experiment: bixt_ti_l64_p16_ft384, bixt_ti_l64_p16_in1k", "eval_only=true", "torchrun"):
        assert expected in out


# ----------------------------------------------------------------------------- end to end
@pytest.mark.e2e
def test_train_then_evaluate_and_load_with_timm(tmp_path):
    run_dir = tmp_path / "run"
    task(*TINY, "trainer.epochs=2", f"trainer.run_dir={run_dir}", cwd=tmp_path)
    assert {"config.yaml", "metrics.jsonl", "metrics.csv", "last.pth", "best.pth"} <= {p.name for p in run_dir.iterdir()}
    final = records(run_dir)[-1]
    assert final["epoch"] == 2 and {"val/top1", "val/top5", "train/loss", "lr"} <= set(final)
    assert OmegaConf.load(run_dir / "config.yaml").model.encoder.depth == 2

    # eval_only with model.checkpoint reproduces the last epoch's validation numbers
    ckpt = run_dir / "last.pth"
    out = task(*TINY, "eval_only=true", f"model.checkpoint={ckpt}", f"trainer.run_dir={tmp_path / 'eval'}", cwd=tmp_path)
    evaluated = records(tmp_path / "eval")[-1]
    assert evaluated["val/top1"] == pytest.approx(final["val/top1"]) and "val/top1" in out.stdout + out.stderr

    # timm reads the checkpoint through pretrained_cfg_overlay(file=...)
    model = timm.create_model("bixt_ti_l64_p16", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)),
                              num_classes=10, img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                              num_latents=8)
    saved = weights(ckpt)
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    assert set(saved) <= set(model.state_dict())


def test_eval_only_of_an_official_training_checkpoint(tmp_path):
    """The reduced official model (golden reference), wrapped like a published training checkpoint
    (``module.`` prefixes, argparse args, zip), evaluated through the engine: logits as published."""
    import argparse
    import zipfile

    from torch.utils.data import TensorDataset

    from bixt.engine import run
    from bixt.tasks.classification import ClassificationAdapter

    golden = torch.load(REPO / "tests" / "data" / "bixt_ti_l64_p16.pt", weights_only=True)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in golden["state_dict"].items()}, "epoch": 799,
               "args": argparse.Namespace(model=golden["name"])}
    torch.save(wrapped, tmp_path / "model_best.pth.tar")
    with zipfile.ZipFile(tmp_path / "official.zip", "w") as archive:
        archive.write(tmp_path / "model_best.pth.tar", "model_best.pth.tar")

    labels = golden["logits"].argmax(-1)
    cfg = OmegaConf.create({"trainer": {"eval_only": True, "checkpoint": str(tmp_path / "official.zip"),
                                        "run_dir": str(tmp_path / "eval"), "num_workers": 0, "batch_size": 2,
                                        "progress": False}, "optim": {}})
    model = timm.create_model(golden["name"], **golden["kwargs"])
    metrics = run(cfg, model, ClassificationAdapter(10), TaskData(None, TensorDataset(golden["input"], labels)))
    assert metrics["val/top1"] == 100.0
    expected = torch.nn.functional.cross_entropy(golden["logits"].double(), labels).item()
    assert metrics["val/loss"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.e2e
def test_folder_data_runs_and_bad_images_are_named(tmp_path):
    root = make_image_folder(tmp_path / "imagenet")
    bad = root / "train" / "cat" / "zz_truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # the plain command (224 px, the default tiny BiXT), one epoch
    folder = ["data=folder", f"data.root={root}", "trainer.epochs=1"]
    ok = task(*folder, "data.on_bad_image=skip", f"trainer.run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert "zz_truncated.png" in ok.stdout + ok.stderr
    final = records(tmp_path / "run")[-1]
    assert final["epoch"] == 1 and 0 <= final["val/top1"] <= 100 and "val/top5" not in final  # 3 classes

    failed = task(*folder, "trainer.num_workers=1", "data.img_size=32", f"trainer.run_dir={tmp_path / 'fail'}",
                  cwd=tmp_path, check=False)
    assert failed.returncode != 0
    assert "zz_truncated.png" in failed.stderr and "on_bad_image=skip" in failed.stderr
    assert "Traceback" not in failed.stderr


@pytest.mark.e2e
def test_killed_run_resumes_to_identical_weights(tmp_path):
    """SIGKILL a run at an arbitrary point (after a periodic checkpoint), resume it: the final weights
    equal those of an uninterrupted run, whatever the moment of the kill."""
    common = [*TINY, "data.train_size=256", "trainer.batch_size=8", "trainer.epochs=3",
              "trainer.ckpt_every_steps=1", "trainer.deterministic=true", "model.drop_path_rate=0.1"]
    task(*common, f"trainer.run_dir={tmp_path / 'straight'}", cwd=tmp_path)

    killed_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bixt.tasks.imagenet", *common, f"trainer.run_dir={killed_dir}",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            last = killed_dir / "last.pth"
            if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 40:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(killed_dir / "last.pth", weights_only=True)
    assert killed_at["global_step"] < 3 * 32, "the run finished before it could be killed"

    task(*common, "resume=true", f"trainer.run_dir={killed_dir}", cwd=tmp_path)
    a, b = weights(tmp_path / "straight" / "last.pth"), weights(killed_dir / "last.pth")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill + resume"
    assert [r["val/top1"] for r in records(tmp_path / "straight")] == [r["val/top1"] for r in records(killed_dir)]


@pytest.mark.e2e
def test_two_process_ddp_step_equals_single_process(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) with 8 per process == one process with 16: same weights."""
    common = [*TINY, "optim=sgd", "optim.lr=0.05", "trainer.max_steps=1", "trainer.deterministic=true",
              "trainer.device=cpu"]
    task(*common, "trainer.batch_size=16", f"trainer.run_dir={tmp_path / 'single'}", cwd=tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    task(*common, "trainer.batch_size=8", f"trainer.run_dir={tmp_path / 'ddp'}", cwd=tmp_path, module=torchrun)
    single, ddp = (torch.load(tmp_path / d / "last.pth", weights_only=True) for d in ("single", "ddp"))
    assert single["global_step"] == ddp["global_step"] == 1 and ddp["world_size"] == 2
    assert single["state_dict"]["head.weight"].abs().sum() > 0  # the step did something (the head starts at 0)
    for name, tensor in single["state_dict"].items():
        torch.testing.assert_close(ddp["state_dict"][name], tensor, rtol=0, atol=1e-6)
    assert len(ddp["rng"]) == 2 and not torch.equal(ddp["rng"][0]["torch"], ddp["rng"][1]["torch"])


def test_eval_only_class_order_from_folder_names_matches_the_training_reader(tmp_path):
    from bixt.data.image_files import ImageFolderDataset
    from bixt.data.images import folder_class_to_idx

    for name in ("n10", "n2", "b", "A", "n1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_bytes(b"")  # listed, never read
    expected = ImageFolderDataset(tmp_path, None).class_to_idx
    assert folder_class_to_idx(tmp_path) == expected
    assert list(expected) != sorted(expected)  # natural order, not plain string order


# ----------------------------------------------------------------------------- classes travel in checkpoints
def folder_overrides(root: Path) -> list[str]:
    return ["model.encoder.depth=2", "model.encoder.dim=32", "model.encoder.num_heads=2",
            "model.encoder.num_latents=8", "trainer.batch_size=6", "trainer.progress=false", "trainer.log_every=0",
            "data=folder", f"data.root={root}", "data.img_size=32", "trainer.num_workers=0"]


def spy_on_run(monkeypatch, call_through: bool = True) -> dict:
    """Replace the task's engine call with one that records the data sets it is given."""
    import bixt.tasks.imagenet as imagenet_task

    seen: dict = {}
    real = imagenet_task.kit.run

    def spy(cfg, model, adapter, data, start=None):
        seen.update(train=data.train, val=data.val, adapter=adapter, start=start)
        return real(cfg, model, adapter, data, start=start) if call_through else {}

    monkeypatch.setattr(imagenet_task.kit, "run", spy)
    return seen


def test_checkpoints_carry_the_classes_and_evaluation_labels_by_them(tmp_path, monkeypatch):
    """Folder data: the training classes go into every checkpoint; evaluating it on a val folder that
    lacks a class (and has no train/) labels the others by the checkpoint's list, not by the folders
    present (which would shift every label after the missing one)."""
    from bixt.tasks.imagenet import train

    root = make_image_folder(tmp_path / "imagenet")
    run_dir = tmp_path / "run"
    train(compose(*folder_overrides(root), "trainer.epochs=1", f"trainer.run_dir={run_dir}"))
    for name in ("last.pth", "best.pth"):
        assert torch.load(run_dir / name, weights_only=True)["classes"] == ["ant", "bee", "cat"]

    partial = tmp_path / "partial"
    for name in ("bee", "cat"):  # no train/, no val/ant
        (partial / "val").mkdir(parents=True, exist_ok=True)
        os.symlink(root / "val" / name, partial / "val" / name)
    seen = spy_on_run(monkeypatch)
    metrics = train(compose(*folder_overrides(partial), "eval_only=true",
                                     f"model.checkpoint={run_dir / 'last.pth'}", f"trainer.run_dir={tmp_path / 'eval'}"))
    assert seen["val"].classes == ["ant", "bee", "cat"]
    assert sorted({label for _, label in seen["val"].samples}) == [1, 2]
    assert 0 <= metrics["val/top1"] <= 100


def test_eval_only_of_a_run_through_the_task_leaves_the_run_alone(tmp_path):
    """`eval_only=true resume=true trainer.run_dir=RUN`: the run's weights (not random ones), and no
    write into RUN's config.yaml or metrics."""
    from bixt.tasks.imagenet import train

    run_dir = tmp_path / "run"
    tiny = [*TINY, "data.train_size=64", "data.val_size=32"]
    train(compose(*tiny, "trainer.epochs=1", f"trainer.run_dir={run_dir}"))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    trained = records(run_dir)[-1]
    metrics = train(compose(*tiny, "eval_only=true", "resume=true", f"trainer.run_dir={run_dir}"))
    assert metrics["val/top1"] == trained["val/top1"]
    assert metrics["val/loss"] == pytest.approx(trained["val/loss"], rel=1e-6)  # random weights would differ
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before
    assert len(list((run_dir / "eval").glob("*/metrics.jsonl"))) == 1


def test_eval_only_of_weights_without_classes_and_no_train_folder_says_what_to_do(tmp_path, monkeypatch, caplog):
    from bixt.tasks.imagenet import train

    root = make_image_folder(tmp_path / "imagenet")
    shutil.rmtree(root / "train")
    torch.save({"state_dict": {"head.weight": torch.zeros(3, 32)}}, tmp_path / "official.pth")  # no class list
    spy_on_run(monkeypatch, call_through=False)
    with caplog.at_level("WARNING", logger="bixt.data"):
        train(compose(*folder_overrides(root), "eval_only=true",
                      f"model.checkpoint={tmp_path / 'official.pth'}"))
    assert "without a class list" in caplog.text and "empty folders suffice" in caplog.text
    assert caplog.text.count("labels follow the class folders") == 1  # once per run, not from task and data both
