"""``python -m bixt.tasks.ade20k_semseg``: trains and evaluates through data=ade20k on a tiny
ADEChallengeData2016 folder of real files (linear and Semantic FPN heads), eval_only on the
checkpoint, sliding-window inference, the stride check, the one-line data errors and --help."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from bixt.data.ade20k import ADE20KDataError
from bixt.tasks.ade20k_semseg import check_sizes, train
from bixt.tasks.kit import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_ade20k_data import snapshot, write_ade_folder  # noqa: E402
from task_runner import REPO, run_task_module

CONFIG_DIR = str(REPO / "bixt" / "configs" / "ade20k_semseg")

TINY_MODEL = [
    "model.encoder.dim=32", "model.encoder.depth=3", "model.encoder.num_heads=2",
    "model.encoder.num_latents=8", "model.backbone_kwargs.patch_size=8", "model.backbone_kwargs.stride=8",
    "model.fpn_dim=16", "model.head_dim=16",
]
TINY_ADE = ["data=ade20k", "data.num_classes=4", "data.crop_size=32", "data.scale=[64,32]",
            "data.ratio_range=[0.75,1.25]",
            "data.test_scale=[56,40]", "trainer.epochs=2", "trainer.batch_size=2", "trainer.eval_batch_size=2",
            "trainer.log_every=0", "trainer.threads=1"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return write_ade_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def linear_run(ade, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("linear")
    before = snapshot(ade)
    metrics = train(_compose(TINY_MODEL + TINY_ADE + [f"data.root={ade}", "model.head=linear",
                                                      f"trainer.run_dir={run_dir}"]))
    assert snapshot(ade) == before  # the data folder is never written
    return run_dir, metrics


def test_configs_compose():
    cfg = _compose([])
    assert cfg.data._target_.endswith(".scenes_data") and cfg.model.head == "linear" and cfg.trainer.threads == 1
    for head in ("linear", "semfpn"):
        full = _compose([f"experiment=ade20k_{head}", "data.root=/x"])
        assert full.data._target_.endswith(".ade20k_data") and full.model.backbone == "bixt_ti_l64_d13_p16" and full.model.head == head
        assert full.trainer.max_steps == 80000 and full.trainer.batch_size == 16 and full.data.crop_size == 512
        assert full.trainer.epochs * -(-20210 // 16) >= 80000 and full.optim.sched == "poly"
        assert full.eval.mode == "slide" and full.eval.stride == 341
        s8 = _compose([f"experiment=ade20k_{head}", f"model=bixt_ti_d13_p16s8_{head}", "data.root=/x"])
        assert s8.model.backbone == "bixt_ti_l64_d13_p16s8" and s8.optim.lr == 6e-5
    hf = _compose(["data=ade20k_hf", "data.path=/x"])
    assert hf.data.label_column == "annotation" and hf.data.crop_size == 512 and hf.data.train_split == "train"


def test_linear_head_trains_and_writes_a_run_dir(linear_run):
    run_dir, metrics = linear_run
    for name in ("config.yaml", "metrics.jsonl", "metrics.csv", "last.pth", "best.pth"):
        assert (run_dir / name).is_file(), name
    expected = {"val/miou", "val/mean_acc", "val/pixel_acc", "val/iou/class_0", "val/acc/class_3", "train/loss"}
    assert expected <= set(metrics)
    assert 0.0 <= metrics["val/miou"] <= 1.0 and np.isfinite(metrics["train/loss"])
    losses = [json.loads(line)["train/loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # it learns: without the optimizer step the loss stays (1.410 -> 1.407) and the mIoU at ~0.05
    assert len(losses) == 2 and losses[1] < 0.98 * losses[0], losses
    assert metrics["val/miou"] > 0.2, metrics["val/miou"]  # trained: ~0.46
    ckpt = torch.load(run_dir / "last.pth", weights_only=True)
    assert ckpt["classes"] == ["class_0", "class_1", "class_2", "class_3"]


def test_eval_only_whole_and_slide_on_the_checkpoint(ade, linear_run, monkeypatch):
    from bixt.tasks import segmentation as adapter_module

    calls = []  # (mode, images, the window sizes the model saw)

    def spy(model, images, **kwargs):
        windows = []
        hook = model.register_forward_pre_hook(lambda module, args: windows.append(tuple(args[0].shape[-2:])))
        try:
            return real(model, images, **kwargs)
        finally:
            hook.remove()
            calls.append((kwargs.get("mode"), images.shape[0], windows))

    real = adapter_module.segment
    monkeypatch.setattr(adapter_module, "segment", spy)
    run_dir, trained = linear_run
    common = TINY_MODEL + TINY_ADE + [f"data.root={ade}", "model.head=linear", "eval_only=true", "resume=true",
                                      f"trainer.run_dir={run_dir}"]
    whole = train(_compose(common))
    assert whole["val/miou"] == pytest.approx(trained["val/miou"], abs=1e-6)  # the last epoch's weights again
    assert calls and all(mode == "whole" and len(windows) == 1 for mode, _, windows in calls)
    calls.clear()
    slide = train(_compose(common + ["eval.mode=slide", "eval.crop=24", "eval.stride=16"]))
    assert 0.0 <= slide["val/miou"] <= 1.0 and "val/iou/class_2" in slide
    # the slide branch ran: 24x24 windows, several per image (the images are larger than one window)
    assert calls and all(mode == "slide" for mode, _, _ in calls)
    assert all(len(windows) > 1 and set(windows) == {(24, 24)} for _, _, windows in calls)
    # another class list than the checkpoint's is refused
    with pytest.raises(ValueError, match="the checkpoint was trained on the classes"):
        train(_compose(common + ["data.num_classes=5"]))


def test_semfpn_head_runs_from_a_pretrained_backbone(ade, linear_run, tmp_path, caplog):
    pretrained = linear_run[0] / "last.pth"  # a segmenter checkpoint: its backbone.* tensors are taken
    with caplog.at_level("INFO"):
        metrics = train(_compose(TINY_MODEL + TINY_ADE + [f"data.root={ade}", "model.head=semfpn", "trainer.epochs=1",
                                                          "trainer.max_steps=2", f"model.pretrained={pretrained}",
                                                          f"trainer.run_dir={tmp_path}"]))
    assert metrics["step"] == 2 and 0.0 <= metrics["val/miou"] <= 1.0
    assert (tmp_path / "best.pth").is_file()
    assert "pretrained backbone: loaded" in caplog.text


def test_real_size_models_build_with_their_strides():
    for name, stride in (("bixt_ti_d13_p16_linear", 16), ("bixt_ti_d13_p16s8_semfpn", 8)):
        cfg = _compose([f"model={name}"])
        model = build_model(cfg.model, num_classes=150)
        assert model.stride == stride and model.num_classes == 150
        assert check_sizes(_compose(["experiment=ade20k_linear", "data.root=/x"]), stride) == ((512, 512), (341, 341))


def test_crop_not_divisible_by_the_stride_is_named(ade, tmp_path):
    with pytest.raises(ValueError, match=r"data.crop_size=30 is not divisible by the model's stride 8; expected a "
                                         r"multiple of 8 \(e.g. 24 or 32\)"):
        train(_compose(TINY_MODEL + TINY_ADE + [f"data.root={ade}", "data.crop_size=30",
                                                f"trainer.run_dir={tmp_path}"]))


def test_bad_label_from_a_worker_is_one_clean_line(tmp_path):
    base = write_ade_folder(tmp_path / "data", train_sizes=[(40, 56)] * 2, val_sizes=[(40, 56)])
    path = base / "annotations" / "training" / "ADE_train_00000002.png"
    raw = np.asarray(Image.open(path)).copy()
    raw[0, :4] = 9
    Image.fromarray(raw, mode="L").save(path)
    with pytest.raises(ADE20KDataError) as info:
        train(_compose(TINY_MODEL + TINY_ADE + [f"data.root={base}", "trainer.num_workers=1",
                                                f"trainer.run_dir={tmp_path / 'run'}"]))
    line = info.value.message  # the task prints it as is: the clean text, also from a worker
    assert "\n" not in line and line.startswith(str(path)) and "label value 9 in 4 pixel(s)" in line
    assert "expected 0 = other (ignored), 1..4 for data.num_classes=4" in line


def _run_module(args: list[str], cwd: Path):
    return run_task_module("bixt.tasks.ade20k_semseg", args, cwd)


@pytest.mark.e2e
def test_help_and_a_bad_folder_on_the_command_line(tmp_path):
    result = _run_module(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for text in ("data: ade20k, ade20k_hf, scenes", "experiment: ade20k_linear, ade20k_semfpn", "data.root=DIR",
                 "eval_only=true", "model.pretrained=PATH"):
        assert text in result.stdout, text
    base = write_ade_folder(tmp_path / "data", train_sizes=[(40, 56)] * 2, val_sizes=[(40, 56)])
    (base / "annotations" / "validation" / "ADE_val_00000001.png").unlink()
    bad = _run_module(TINY_MODEL + TINY_ADE + [f"data.root={base}", f"trainer.run_dir={tmp_path / 'run'}"], tmp_path)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "error: 1 image(s)" in bad.stderr and "ADE_val_00000001.jpg" in bad.stderr
