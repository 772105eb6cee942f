"""Load a trained model for inference: a run directory (rebuilt from its ``config.yaml`` through
:func:`bixt.tasks.kit.build_model`, its weights and class names from ``best.pth`` / ``last.pth``), a folder
in timm's hub format (:mod:`bixt.export`), or a registered timm name with a checkpoint file.

    from bixt.trained import load_model
    loaded = load_model("runs/imagenet/2026-01-01_00-00-00")   # .model, .task, .classes, .input_cfg

:mod:`bixt.predict` feeds files to what this returns; :mod:`bixt.viz` and :mod:`bixt.export` read
models through it too.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import OmegaConf
from torch import nn

__all__ = ["Loaded", "PredictError", "load_model", "image_input_config", "runtime_arguments", "partseg_info"]

#: the model node's ``_target_`` -> the task kind it serves
TASKS = {
    "bixt.models.factory.image_classifier": "image",
    "bixt.models.segmentation.BiXTSegmenter": "segmentation",
    "bixt.models.point.PointClassifier": "points",
    "bixt.models.point.PointSegmenter": "partseg",
    "bixt.models.text.SequenceClassifier": "listops",
    "bixt.models.retrieval.DualEncoderRetriever": "retrieval",
}
#: what each task kind reads (bad-input messages name it)
MODALITY = {"image": "images", "segmentation": "images", "points": "point clouds", "partseg": "point clouds",
            "listops": "ListOps text (one expression per line)", "retrieval": "AAN .tsv document pairs"}
WEIGHTS = ("best.pth", "last.pth")
IMAGE_INPUT_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


class PredictError(ValueError):
    """Bad model or input: one line naming it and the fix."""


@dataclass
class Loaded:
    """A model ready for inference and what it takes to feed it."""
    model: nn.Module
    task: str
    classes: Optional[list[str]]
    source: str
    cfg: dict = field(default_factory=dict)          # the run's resolved config ({} for timm folders / names)
    input_cfg: dict = field(default_factory=dict)    # images: the evaluation transform (timm data config keys)
    device: torch.device = torch.device("cpu")

    @property
    def modality(self) -> str:
        return MODALITY[self.task]


# ----------------------------------------------------------------------------- loading
def _resolve_device(device: Optional[str]) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _ready(model: nn.Module, device: torch.device, fast: bool) -> nn.Module:
    model = model.eval().to(device)
    if fast and device.type == "cpu":
        from bixt import accel
        return accel.optimize(model)
    return model


def _run_weights(run: Path) -> Path:
    for name in WEIGHTS:
        if (run / name).is_file():
            return run / name
    raise PredictError(f"run directory {run} has no weights ({' or '.join(WEIGHTS)}): train it to the end of an "
                       "epoch first, or give a checkpoint file with --checkpoint")


def classifier_outputs(state: dict) -> Optional[int]:
    """Outputs of a saved model's classifier: the last bias of its ``head`` (in module order), as
    every model here ends its head in the classifying layer."""
    biases = [v for k, v in state.items() if k.startswith("head.") and k.endswith(".bias")]
    return int(biases[-1].shape[0]) if biases else None


def runtime_arguments(task: str, cfg: dict, state: dict, classes: Optional[Sequence[str]]) -> dict:
    """What a task's entry point hands ``kit.build_model`` from its data, recovered from the saved
    config and weights (so that no data has to be read to rebuild a model)."""
    data = cfg.get("data") or {}
    in_features = 3 if data.get("normals") else 0
    n = len(classes) if classes else None
    n = n or classifier_outputs(state)
    if task in ("image", "segmentation"):
        return {"num_classes": n}
    if task == "points":
        return {"tokenizer": {"in_features": in_features}, "head": {"num_classes": n}}
    if task == "partseg":
        info = partseg_info(cfg)
        return {"tokenizer": {"in_features": in_features},
                "head": {"num_classes": info.num_classes, "num_categories": info.num_categories,
                         "point_features": 3 + in_features}}
    if task == "listops":
        from bixt.data.listops import vocabulary
        return {"encoder": {"vocab_size": vocabulary(bool(data.get("keep_parens", False))).vocab_size},
                "head": {"num_classes": n}}
    return {}


def partseg_info(cfg: dict):
    """The categories and part labels of a part-segmentation run's data (fixed by its format)."""
    data = cfg.get("data") or {}
    if str(data.get("_target_", "")).endswith("synthetic_partseg_data"):
        from bixt.data.partseg_shapes import SYNTHETIC_INFO
        return SYNTHETIC_INFO
    from bixt.data.shapenetpart import SHAPENET_INFO
    return SHAPENET_INFO.subset(data["categories"]) if data.get("categories") else SHAPENET_INFO


def image_input_config(cfg: dict) -> dict:
    """A run's image evaluation transform as timm data-config keys (what ``create_transform`` reads)."""
    data = cfg.get("data") or {}
    size = int(data.get("img_size") or (cfg.get("model") or {}).get("img_size") or 224)
    aug = data.get("aug") or {}
    mean = tuple(data.get("mean") or (0.485, 0.456, 0.406))
    std = tuple(data.get("std") or (0.229, 0.224, 0.225))
    # generated sets (embedded shapes, scenes) are drawn at their size: no crop
    return {"input_size": (3, size, size), "interpolation": aug.get("interpolation", "bicubic"),
            "crop_pct": float(aug.get("crop_pct", 1.0)), "crop_mode": "center", "mean": mean, "std": std}


def _load_run(run: Path, checkpoint: Optional[str]) -> tuple[nn.Module, str, Optional[list[str]], dict]:
    from bixt.tasks import kit
    from bixt.weights import load_weights, read_checkpoint
    config = run / "config.yaml"
    if not config.is_file():
        raise PredictError(f"{run} has no config.yaml: give a run directory written by a bixt task, a timm folder "
                           "(config.json + model.safetensors) or a registered model name with --checkpoint")
    cfg = OmegaConf.to_container(OmegaConf.load(config), resolve=True)
    target = (cfg.get("model") or {}).get("_target_")
    if target not in TASKS:
        raise PredictError(f"{config}: model._target_={target!r} is not a model bixt.predict knows ({sorted(TASKS)})")
    task = TASKS[target]
    path = Path(checkpoint) if checkpoint else _run_weights(run)
    ckpt = read_checkpoint(path)
    classes = [str(c) for c in ckpt["classes"]] if ckpt.get("classes") else None
    if task == "listops" and classes is None:
        classes = [str(i) for i in range(10)]
    state = ckpt.get("state_dict", ckpt)
    outputs = classifier_outputs(state)
    if classes is not None and outputs is not None and task != "partseg" and outputs != len(classes):
        raise PredictError(f"{path}: {len(classes)} class names for a model with {outputs} outputs: the class-name "
                           "list does not belong to these weights")
    model_cfg = dict(cfg["model"])
    for key in ("pretrained", "checkpoint", "finetune_from"):  # the trained weights follow; nothing else is read
        if key in model_cfg:
            model_cfg[key] = None
    model = kit.build_model(OmegaConf.create(model_cfg), **runtime_arguments(task, cfg, state, classes))
    load_weights(model, ckpt, strict=True, name=str(path))
    return model, task, classes, cfg


def _load_timm(spec: str, checkpoint: Optional[str]) -> tuple[nn.Module, Optional[list[str]], dict]:
    import timm
    import bixt  # noqa: F401  (registers the BiXT models)
    from timm.data import resolve_data_config
    if spec.startswith("local-dir:") or Path(spec).is_dir():
        folder = spec.split(":", 1)[1] if spec.startswith("local-dir:") else spec
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        config = json.loads((Path(folder) / "config.json").read_text())
        names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
        classes = [str(names[str(i)] if isinstance(names, dict) else names[i]) for i in range(len(names))] \
            if names else None
    else:
        if spec not in timm.list_models():
            raise PredictError(f"MODEL {spec!r} is neither a run directory, a timm folder nor a registered model name; "
                               f"BiXT names: {', '.join(timm.list_models('bixt*')[:8])}, ...")
        overlay = dict(file=str(checkpoint)) if checkpoint else None
        model = timm.create_model(spec, pretrained=bool(checkpoint), pretrained_cfg_overlay=overlay)
        classes = None
        if model.num_classes == 1000:
            from timm.data import ImageNetInfo
            info = ImageNetInfo()
            classes = [info.index_to_description(i).split(",")[0] for i in range(1000)]
    data_cfg = resolve_data_config({}, model=model)
    return model, classes, {k: data_cfg[k] for k in IMAGE_INPUT_KEYS if k in data_cfg}


def load_model(spec: str | os.PathLike, *, checkpoint: Optional[str] = None, device: Optional[str] = "cpu",
               fast: bool = True) -> Loaded:
    """A run directory, a timm hub folder or a registered name (+ ``checkpoint``), ready for inference."""
    spec = str(spec)
    target = torch.device(_resolve_device(device))
    if Path(spec).is_dir() and (Path(spec) / "config.yaml").is_file():
        model, task, classes, cfg = _load_run(Path(spec), checkpoint)
        input_cfg = image_input_config(cfg) if task in ("image", "segmentation") else {}
    elif Path(spec).is_dir() and not (Path(spec) / "config.json").is_file():
        raise PredictError(f"{spec} is a folder with neither config.yaml (a run) nor config.json (a timm export)")
    else:
        model, classes, input_cfg = _load_timm(spec, checkpoint)
        task, cfg = "image", {}
    if classes is not None and task in ("image", "points", "listops"):
        outputs = _num_outputs(model)
        if outputs is not None and outputs != len(classes):
            raise PredictError(f"{spec}: {len(classes)} class names for a model with {outputs} outputs: the class-name "
                               "list does not belong to these weights")
    return Loaded(_ready(model, target, fast), task, classes, spec, cfg, input_cfg, target)


def _num_outputs(model: nn.Module) -> Optional[int]:
    """Outputs of the model's classifier (the last linear layer of its ``head``), if it has one."""
    linears = [m for m in getattr(model, "head", nn.Identity()).modules() if isinstance(m, nn.Linear)]
    return int(linears[-1].out_features) if linears else None
