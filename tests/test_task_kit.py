"""The task kit: one data contract, config checks before anything is built, one smoothing key,
run directories under runs/<task>/, misspelt group options refused (issues 23 and 25)."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import bixt.engine  # noqa: F401  (registers trainer/default and task_hydra in Hydra's ConfigStore)
from bixt.constraints import ConfigValueError
from bixt.data.builder import build_data
from bixt.data.task_data import TaskData
from bixt.tasks import kit

REPO = Path(__file__).resolve().parents[1]
TASKS = ("imagenet", "modelnet40_cls", "shapenet_partseg", "lra_listops", "lra_retrieval", "ade20k_semseg", "clevr_vqa")


def _compose(task: str, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / task), version_base=None):
        return compose("config", overrides=list(overrides))


def _refused(task: str, overrides: list[str], match: str) -> None:
    """The task's own train() refuses the config in one line naming the key, before building anything."""
    train = importlib.import_module(f"bixt.tasks.{task}").train
    with pytest.raises(ValueError, match=match) as info:
        train(_compose(task, *overrides, "trainer.run_dir=/nonexistent/never-written"))
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- issue 25: config values
@pytest.mark.parametrize("task, overrides, match", [
    ("modelnet40_cls", ["data.normals=no"], r"^data\.normals='no' is not valid: expected true or false$"),
    ("shapenet_partseg", ["data.normals=no"], r"data\.normals='no' .*true or false"),
    ("lra_listops", ["data.keep_parens=no"], r"data\.keep_parens='no' .*true or false"),
    ("ade20k_semseg", ["data.photometric=maybe"], r"data\.photometric='maybe' .*true or false"),
    ("ade20k_semseg", ["data=ade20k", "data.root=/x", "data.num_classes=abc"], r"data\.num_classes='abc' .*an integer"),
    ("lra_listops", ["optim.lr=fast"], r"optim.*lr.*fast"),
    ("imagenet", ["data.train_size=-3"], r"data\.train_size=-3 is not valid: expected >= 0"),
    ("ade20k_semseg", ["data.scale=[0,0]"], r"data\.scale\[0\]=0 is not valid: expected >= 1"),
    ("modelnet40_cls", ["data.augment.scale=[2,1]"], r"data\.augment\.scale=\[2, 1\] .*ascending"),
    ("modelnet40_cls", ["model.tokenizer.num_groups=0"], r"model\.tokenizer\.num_groups=0 .*>= 1"),
    ("lra_listops", ["trainer.device=tpu"], r"trainer\.device='tpu' \(expected auto, cpu, cuda, cuda:N or mps\)"),
    ("lra_listops", ["loss.label_smoothing=-1"], r"loss\.label_smoothing=-1 .*>= 0"),
    ("lra_listops", ["+data.sede=1"], r"unknown key data\.sede; valid keys of data: name, seed, train_size"),
    ("modelnet40_cls", ["++model.encoder.depht=2"], r"unknown key model\.encoder\.depht; valid keys of "
                                                    r"model\.encoder: dim, depth, num_latents"),
])
def test_bad_config_values_are_refused_naming_the_key(task, overrides, match):
    _refused(task, overrides, match)


@pytest.mark.parametrize("task, old", [("lra_listops", "+loss.smoothing=0.1"), ("modelnet40_cls", "+loss.smoothing=-1"),
                                       ("shapenet_partseg", "+label_smoothing=0.1")])
def test_old_smoothing_keys_name_the_new_one(task, old):
    _refused(task, [old], r"is no longer a key: use loss\.label_smoothing")
    with pytest.raises(ConfigValueError, match="use loss.label_smoothing"):
        kit.check_overrides(task, [old.lstrip("+")])


def test_every_task_has_one_smoothing_key():
    for task in TASKS:
        cfg = _compose(task)
        assert cfg.loss.label_smoothing == 0.0 and "smoothing" not in cfg.loss and "label_smoothing" not in cfg


@pytest.mark.parametrize("task, arg, valid", [("ade20k_semseg", "experiment=ade20k_semfnp", "ade20k_linear, ade20k_semfpn"),
                                              ("modelnet40_cls", "experiment=modelnet4O", "modelnet40"),
                                              ("lra_listops", "experiment=listop", "listops"),
                                              ("imagenet", "model=bixt_tiyn", "bixt_ti_l64_p16")])
def test_a_misspelt_group_option_is_refused_with_the_choices(task, arg, valid):
    with pytest.raises(ConfigValueError, match=f"{arg} is not an option of {task}; valid .* options: .*{valid}"):
        kit.check_overrides(task, [arg])
    with pytest.raises(Exception, match="Could not find"):  # no `optional` experiment: Hydra refuses it too
        _compose(task, arg)


def test_a_misspelt_experiment_on_the_command_line_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bixt.tasks.lra_listops", "experiment=listop"], cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and not (tmp_path / "runs").exists()
    assert proc.stderr.strip() == "error: experiment=listop is not an option of lra_listops; valid experiment options: listops"


# ----------------------------------------------------------------------------- issue 23: run dirs, data, models
@pytest.mark.parametrize("task", ["shapenet_partseg", "lra_retrieval"])
def test_every_task_runs_in_runs_task(task, tmp_path):
    """shapenet_partseg and lra_retrieval had no hydra block and wrote to outputs/."""
    proc = subprocess.run([sys.executable, "-m", f"bixt.tasks.{task}", "--cfg", "hydra", "--resolve"], cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"dir: runs/{task}/20" in proc.stdout and f"dir: runs/{task}/multirun/20" in proc.stdout
    assert "chdir: false" in proc.stdout and "outputs/" not in proc.stdout


def test_every_task_composes_the_shared_hydra_node():
    for task in TASKS:
        text = (REPO / "bixt" / "configs" / task / "config.yaml").read_text()
        assert "- task_hydra" in text and "run:\n    dir:" not in text and "optional experiment" not in text


def test_every_model_node_is_one_target_with_an_encoder_sub_node():
    for task in TASKS:
        for path in sorted((REPO / "bixt" / "configs" / task / "model").glob("*.yaml")):
            cfg = _compose(task, f"model={path.stem}")
            assert "_target_" in cfg.model and "encoder" in cfg.model, path


def test_builders_return_task_data():
    data = build_data(_compose("lra_listops", "data.train_size=8", "data.val_size=4", "data.test_size=0").data)
    assert isinstance(data, TaskData) and data.num_classes == 10 and data.tests == {}
    assert data.metadata["vocab_size"] == 18 and data.collate_fn is not None
    data = build_data(_compose("modelnet40_cls", "data.train_size=4", "data.test_size=2", "data.num_points=64").data,
                      eval_only=True)
    assert data.train is None and len(data.val) == 2 and data.num_classes == 10 and data.metadata["in_features"] == 0


def test_min_points_is_one_rule_for_both_point_tasks():
    for task in ("modelnet40_cls", "shapenet_partseg"):
        cfg = _compose(task, "model.tokenizer.num_groups=48", "model.tokenizer.group_size=8")
        assert kit.min_points(cfg.model) == 48
        with pytest.raises(ValueError, match=r"data.num_points=32 is smaller than the 48 points"):
            kit.prepare(_compose(task, "model.tokenizer.num_groups=48", "data.num_points=32"),
                        min_points=kit.min_points(cfg.model))


def test_an_encoder_argument_is_one_override_in_every_task():
    models = {"imagenet": {"num_classes": 3}, "ade20k_semseg": {"num_classes": 3},
              "modelnet40_cls": {"head": {"num_classes": 3}},
              "shapenet_partseg": {"head": {"num_classes": 4, "num_categories": 2, "point_features": 6},
                                   "tokenizer": {"in_features": 3}},
              "lra_listops": {"encoder": {"vocab_size": 18}, "head": {"num_classes": 10}}, "lra_retrieval": {}}
    for task, runtime in models.items():
        cfg = _compose(task, "++model.encoder.depth=2", "++model.encoder.attn_impl=math")
        model = kit.build_model(cfg.model, **runtime)
        encoders = [m for m in model.modules() if type(m).__name__ == "BiXTEncoder"]
        # the segmenter keeps only the layers that refine its tokens (a one-sided last layer is pruned)
        assert len(encoders) == 1 and len(encoders[0].blocks) == (1 if task == "ade20k_semseg" else 2), task


def test_retrieval_evaluator_accumulates_on_the_device():
    from bixt.metrics.retrieval import RetrievalEvaluator

    ev = RetrievalEvaluator()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    ev.update(logits, {"label": torch.tensor([0, 1, 1])})
    assert all(isinstance(v, torch.Tensor) for v in ev.sums.values())  # no Python numbers: no host sync
    ev.update(logits[:1], {"label": torch.tensor([0])})
    metrics = ev.compute(ev.state())
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    expected = torch.nn.functional.cross_entropy(torch.cat([logits, logits[:1]]), torch.tensor([0, 1, 1, 0]))
    assert metrics["loss"] == pytest.approx(float(expected))


def test_a_value_the_engine_schema_cannot_take_is_one_line_before_hydra():
    for override, expected in (("optim.lr=fast", "optim.lr='fast' is not valid: expected a value of type float"),
                               ("trainer.epochs=many", "trainer.epochs='many' is not valid: expected a value of type int")):
        with pytest.raises(ConfigValueError, match=re.escape(expected)):
            kit.check_overrides("imagenet", [override])
    kit.check_overrides("imagenet", ["optim.lr=1e-3", "trainer.epochs=3", "trainer.compile=false", "trainer.foo=1"])
