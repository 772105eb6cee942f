"""Issue 21: every cross-attention variant reached by one plain override (``model.encoder.cross_attention=``)
in the image and point classification tasks; dense heads refuse ``iterative`` in one line at start."""
from __future__ import annotations

import importlib
import json

import pytest
from hydra import compose, initialize_config_dir

from bixt.core.blocks import CrossBlock
from bixt.tasks import kit
from task_runner import REPO

COMMON = ["trainer.epochs=1", "trainer.log_every=0", "trainer.progress=false", "trainer.threads=1",
          "trainer.min_updates=0", "model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
          "model.encoder.num_latents=8"]
TINY = {
    "imagenet": ["data.train_size=32", "data.val_size=16", "trainer.batch_size=16"],
    "modelnet40_cls": ["model.tokenizer.hidden=16", "model.tokenizer.num_groups=8", "model.tokenizer.group_size=8",
                       "data.train_size=16", "data.test_size=8", "data.num_points=32", "trainer.batch_size=8"],
    "ade20k_semseg": ["data.train_size=4", "data.val_size=2", "trainer.batch_size=2", "model.encoder.depth=3"],
    "shapenet_partseg": ["data.train_size=8", "data.val_size=4", "data.points_per_shape=[96,128]",
                         "data.num_points=64", "trainer.batch_size=4"],
}


def compose_task(task: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / task), version_base=None):
        return compose(config_name="config", overrides=COMMON + TINY[task] + overrides)


@pytest.mark.parametrize("task", ["imagenet", "modelnet40_cls"])
def test_each_variant_runs_its_updates_by_a_plain_override(task, tmp_path, monkeypatch, caplog):
    built = []

    def spy(model_cfg, **runtime):
        built.append(real(model_cfg, **runtime))
        return built[-1]

    real = kit.build_model
    monkeypatch.setattr(kit, "build_model", spy)
    train = importlib.import_module(f"bixt.tasks.{task}").train
    keys = {}
    for variant in ("bidirectional", "sequential", "iterative"):
        run_dir = tmp_path / variant
        with caplog.at_level("INFO", logger="bixt.engine"):
            metrics = train(compose_task(task, [f"model.encoder.cross_attention={variant}",
                                                f"trainer.run_dir={run_dir}"]))
        assert metrics["step"] == 2 and metrics["train/loss"] == metrics["train/loss"]  # ran its updates, finite
        blocks = [m for m in built[-1].modules() if isinstance(m, CrossBlock)]
        assert len(blocks) == 2 and {b.cross_attention for b in blocks} == {variant}
        saved = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert saved["step"] == 2
        keys[variant] = set(built[-1].state_dict())
    # each variant's own parameters: a token-side attention for sequential, no token side for iterative
    assert any(".attn_tokens." in k for k in keys["sequential"]) and not any(".attn_tokens." in k for k in keys["bidirectional"])
    assert not any("mlp_tokens" in k for k in keys["iterative"]) and any("mlp_tokens" in k for k in keys["bidirectional"])
    # the run header counts the forward FLOPs of one sample (issue 21 item 2)
    assert "MFLOPs per sample forward" in caplog.text


@pytest.mark.parametrize("task, model", [("ade20k_semseg", "BiXTSegmenter"), ("shapenet_partseg", "PointSegmenter")])
def test_iterative_with_a_dense_head_stops_at_start_in_one_line(task, model, tmp_path):
    module = importlib.import_module(f"bixt.tasks.{task}")
    cfg = compose_task(task, ["model.encoder.cross_attention=iterative", f"trainer.run_dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as info:
        kit.main(cfg, module.train, "val/miou")
    message = str(info.value)
    assert message == (f"error: model: {model} reads refined tokens, but cross_attention='iterative' (Perceiver) "
                       "never updates the tokens: use cross_attention='bidirectional' or 'sequential'")
    assert not (tmp_path / "run").exists()
