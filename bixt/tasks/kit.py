"""The steps every task's entry point shares, in one place.

A task is a data builder (``configs/<task>/data/*.yaml`` ``_target_``, returning a
:class:`~bixt.data.task_data.TaskData`), a model config (one ``_target_`` per model node), an
adapter and a thin entry point::

    def train(cfg):
        data, start = kit.prepare(cfg)               # checks, seed, the start checkpoint (read once), data
        model = kit.build_model(cfg.model, head={"num_classes": data.num_classes})
        return kit.run(cfg, model, ClassificationAdapter(...), data, start=start)

    @hydra.main(version_base=None, config_path="../configs/<task>", config_name="config")
    def main(cfg):
        return kit.main(cfg, train, "val/top1")

    if __name__ == "__main__":
        kit.cli(main, "<task>")

:func:`prepare` refuses unset required values (``???``) and every misspelt or ill-typed key of the
``_target_`` nodes (:mod:`bixt.constraints`), the engine's nodes and the ``loss`` node before
anything is built; then seeds, reads the checkpoint the run starts from once (its class list binds
the labels of a run it continues or evaluates), builds the data and checks that its classes are the
checkpoint's; the engine reuses that read (``kit.run(..., start=start)``). :func:`cli` refuses a misspelt
config group option (``experiment=listop``) or a renamed key in one line before Hydra composes.
"""
from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Optional, Sequence

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (InterpolationResolutionError, InterpolationToMissingValueError, MissingMandatoryValue,
                              ValidationError)
from torch import nn

from bixt.constraints import ConfigValueError, Range, check_keys, check_node
from bixt.data.builder import build_data
from bixt.data.errors import data_errors_exit
from bixt.data.task_data import TaskData
from bixt.engine import (OptimConfig, StartCheckpoint, TrainerConfig, optim_config, seed_everything, start_checkpoint,
                         trainer_config)
from bixt.engine import run as engine_run
from bixt.weights import LoadReport, load_weights, read_checkpoint

log = logging.getLogger("bixt.tasks")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("model", "data", "optim", "experiment")

#: keys of earlier versions -> where the value lives now
RENAMED = {
    "label_smoothing": "loss.label_smoothing",
    "loss.smoothing": "loss.label_smoothing",
    "data.num_workers": "trainer.num_workers",
    "data.mixup": "mixup",
    "data.eval_mode": "eval.mode",
    "data.eval_crop": "eval.crop",
    "data.eval_stride": "eval.stride",
    "model.kwargs": "model.encoder (BiXTEncoder arguments) or model.<timm argument>",
    "model.name": "model.model_name",
    "model.document_encoder": "model.encoder",
}


def loss_settings(*, name: Literal["ce", "bce"] = "ce",
                  label_smoothing: Annotated[float, Range(min=0.0, max=1.0, open_max=True)] = 0.0,
                  bce_target_thresh: Optional[Annotated[float, Range(min=0.0, max=1.0)]] = None) -> dict[str, Any]:
    """The ``loss`` node every task shares: ``ce`` or ``bce`` (classification), label smoothing."""
    return {"name": name, "label_smoothing": label_smoothing, "bce_target_thresh": bce_target_thresh}


# ----------------------------------------------------------------------------- command line
def cli(main: Callable[[], Any], task: str, argv: Optional[Sequence[str]] = None) -> Any:
    """Run a task's Hydra ``main`` after refusing, in one line, a group option that does not exist
    (Hydra would list it over many lines; an unknown experiment used to be ignored) or a renamed key."""
    try:
        check_overrides(task, sys.argv[1:] if argv is None else argv)
    except ConfigValueError as err:
        raise SystemExit(f"error: {err}") from None
    return main()


def check_overrides(task: str, overrides: Sequence[str]) -> None:
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.lstrip("+~").split("=", 1)
        refuse_renamed(key)
        check_typed_override(key, value)
        if key in GROUPS and value not in ("null", ""):
            choices = sorted(p.stem for p in (CONFIGS / task / key).glob("*.yaml"))
            if value not in choices:
                raise ConfigValueError(f"{key}={value} is not an option of {task}; valid {key} options: "
                                       + ", ".join(choices))


def check_typed_override(key: str, value: str) -> None:
    """A value of the engine's typed nodes (``trainer.*``, ``optim.*``) that its field cannot take:
    one line naming the key and the type, before Hydra's multi-line merge error."""
    node, _, field = key.partition(".")
    schema = {"trainer": TrainerConfig, "optim": OptimConfig}.get(node)
    if schema is None or not field or "." in field or field not in schema.__dataclass_fields__:
        return  # unknown keys are named with the valid ones once the config is composed
    try:
        OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist([f"{field}={value}"]))
    except ValidationError:
        kind = schema.__dataclass_fields__[field].type
        raise ConfigValueError(f"{key}={value!r} is not valid: expected a value of type {kind}") from None


def refuse_renamed(key: str) -> None:
    for old, new in RENAMED.items():
        if key == old or key.startswith(old + "."):
            raise ConfigValueError(f"{key} is no longer a key: use {new}")


# ----------------------------------------------------------------------------- checks before building
def _required(name: str) -> Any:
    raise ConfigValueError(f"{name} is required here; give it on the command line, e.g. {name}=...")


# ``key: ${bixt.required:key}`` marks a value an experiment requires where the task's config already
# has a default for it (an experiment's ``???`` cannot replace a value when the configs are merged)
OmegaConf.register_new_resolver("bixt.required", _required, replace=True)


def check_required(cfg: DictConfig) -> None:
    """Fail early, and readably, when a mandatory value (``???``) is unset. The data node's are
    left to its builder, whose message names the file or folder to give."""
    try:
        for key in cfg:
            if key != "data":
                try:
                    cfg[key]
                except InterpolationResolutionError as err:
                    if isinstance(err.__cause__, ConfigValueError):
                        raise err.__cause__ from None
                    raise
                if OmegaConf.is_missing(cfg, key):
                    raise MissingMandatoryValue(f"Missing mandatory value: {key}")
                if OmegaConf.is_config(cfg[key]):
                    OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as err:
        reason = str(err).splitlines()[0]
        key = getattr(err, "full_key", "") or "the value"
        raise ConfigValueError(f"a required config value is not set ({reason}); give it on the command line, "
                               f"e.g. {key}=...") from None


def _walk_keys(node: Any, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys += [full, *_walk_keys(value, full + ".")]
    return keys


def validate(cfg: DictConfig, nodes: Optional[Mapping[str, Callable]] = None) -> None:
    """Every key and value of the composed config that something reads: the engine's typed nodes,
    the ``_target_`` nodes (data, model) against their targets' signatures, ``loss`` and the task's
    own plain ``nodes`` (name -> the function whose keyword arguments they are)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in _walk_keys(plain):
        refuse_renamed(key)
    try:  # the engine's typed nodes: unknown keys, types, impossible values
        trainer_config(cfg)
        optim_config(cfg)
    except ValueError as err:
        raise ConfigValueError(str(err)) from None
    resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                for k in cfg if k not in ("trainer", "optim") and not OmegaConf.is_missing(cfg, k)}
    for key, node in resolved.items():
        if isinstance(node, dict) and "_target_" in node:
            check_node(node, key)
    for key, fn in {"loss": loss_settings, **(nodes or {})}.items():
        check_keys(resolved.get(key) or {}, fn, key)


# ----------------------------------------------------------------------------- the shared steps
def check_classes(stored: Optional[Sequence[str]], classes: Sequence[str]) -> None:
    """The data must label its samples as the checkpoint's model was trained."""
    if stored is None or not classes or list(stored) == list(classes):
        return

    def shown(names: Sequence[str]) -> str:
        return f"{list(names[:10])}{' ...' if len(names) > 10 else ''} ({len(names)})"

    raise ValueError(f"the checkpoint was trained on the classes {shown(stored)}, the data has {shown(classes)}: "
                     "labels would not match; use the data the checkpoint was trained on")


def min_points(model_cfg: DictConfig) -> int:
    """Points a raw cloud needs for the configured point tokeniser (its group count and size)."""
    tokenizer = model_cfg.get("tokenizer") or {}
    return max(int(tokenizer.get("num_groups", 1) or 1), int(tokenizer.get("group_size", 1) or 1))


def prepare(cfg: DictConfig, *, nodes: Optional[Mapping[str, Callable]] = None,
            class_names_to_builder: bool = False, **runtime: Any) -> tuple[TaskData, Optional[StartCheckpoint]]:
    """Checks, seed, the start checkpoint, the data: ``(data, start)``, ``start`` to be handed to
    :func:`run`. ``runtime`` goes to the data builder (with ``eval_only``); ``class_names_to_builder``
    hands it the class list of the checkpoint a run continues or evaluates, so that labels follow
    the model's classes rather than whichever class folders are present."""
    check_required(cfg)
    validate(cfg, nodes)
    eval_only = bool(cfg.trainer.eval_only)
    seed_everything(cfg.trainer.seed)
    start = start_checkpoint(cfg)
    stored = start.classes if start is not None and start.binds_labels else None
    if class_names_to_builder:
        runtime["class_names"] = stored
    data = build_data(cfg.data, eval_only=eval_only, **runtime)
    check_classes(stored, data.class_names)
    if eval_only:
        data.train = None
    return data, start


def build_model(model_cfg: DictConfig, **runtime: Any) -> nn.Module:
    """The model the ``model`` node's ``_target_`` names, its sub-nodes instantiated recursively;
    ``runtime`` adds what comes from the data (nested dicts reach sub-nodes: ``head={"num_classes": 10}``).
    A constructor's refusal of its arguments (a ``ValueError``, e.g. a dense head on an encoder whose
    tokens are never refined) is one line naming the node, not Hydra's wrapped traceback."""
    try:
        return instantiate(model_cfg, **runtime, _convert_="all")
    except InstantiationException as err:
        if not isinstance(err.__cause__, ValueError):
            raise
        node = re.search(r"full_key: (\S+)", str(err))
        raise ConfigValueError(f"{node.group(1) if node else 'model'}: {err.__cause__}") from None


# ----------------------------------------------------------------------------- fine-tuning
#: where a backbone lives in each task's model (the first attribute present), else the model itself
BACKBONE_ATTRS = ("backbone", "document_encoder", "encoder")


def finetune_target(model: nn.Module) -> nn.Module:
    """The part of a task model that a pre-training checkpoint's ``backbone.*`` fills: a segmenter's
    ``backbone``, a text model's sequence encoder, else the model (image / point classifiers,
    whose ``encoder`` is the BiXTEncoder itself and whose tokeniser belongs to the backbone)."""
    from bixt.core import BiXTEncoder

    for attr in BACKBONE_ATTRS:
        part = getattr(model, attr, None)
        if isinstance(part, nn.Module) and not isinstance(part, BiXTEncoder):
            return part
    return model


def _finetune_drop(state: Mapping[str, Any], target: nn.Module) -> dict[str, list[str]]:
    """What a fine-tune discards: a pre-training decoder and mask token (when the file is not a
    whole-model checkpoint), a task head or token table of another size, and for a dense image
    backbone what the segmenter's own rule drops (layers after the last token map)."""
    from bixt.models.segmentation import dense_backbone_drop

    expected = target.state_dict()
    dropped: dict[str, list[str]] = {}
    for key, value in state.items():
        if key.startswith(("decoder.", "mask_token")):
            dropped.setdefault("pre-training decoder and mask token", []).append(key)
        elif key.startswith("head.") and (key not in expected or expected[key].shape != value.shape):
            dropped.setdefault("task head of another size", []).append(key)
        elif key.endswith(_TABLES) and (
                key not in expected or expected[key].shape != value.shape):
            dropped.setdefault("token table of another vocabulary (starts from init)", []).append(key)
    if getattr(target, "feature_info", None) is not None and getattr(target, "num_classes", 1) == 0:
        rest = {k: v for k, v in state.items() if not any(k in keys for keys in dropped.values())}
        for why, keys in dense_backbone_drop(rest, target).items():
            dropped.setdefault(why, []).extend(keys)
    return dropped


def finetune(cfg: DictConfig, model: nn.Module) -> Optional[LoadReport]:
    """Load ``cfg.finetune_from`` (a pre-training run's checkpoint, a classifier, an official file)
    into the model's backbone (:func:`finetune_target`), logging what was loaded and dropped; a
    file of another architecture or modality is one line naming what differs. Skipped when the
    run only evaluates; a resumed run's own checkpoint replaces the weights afterwards."""
    path = cfg.get("finetune_from")
    if not path or cfg.trainer.get("eval_only"):
        return None
    if cfg.trainer.get("checkpoint"):
        raise ConfigValueError(f"finetune_from={path} and trainer.checkpoint={cfg.trainer.checkpoint} both give "
                               "starting weights; keep one (finetune_from: the backbone; checkpoint: the exact model)")
    target = finetune_target(model)
    try:
        raw = read_checkpoint(path)
    except (RuntimeError, ValueError, FileNotFoundError) as err:
        raise ConfigValueError(f"finetune_from={path}: {' '.join(str(err).split())}") from None
    made_for = (raw.get("pretraining") or {}).get("modality")
    wanted = modality(target)
    if made_for and wanted and made_for != wanted:
        raise ConfigValueError(f"finetune_from={path} is a pre-training checkpoint for {made_for}, this task's "
                               f"model reads {wanted}: pre-train with python -m bixt.tasks.pretrain modality={wanted}")
    kind = f" (a pre-training checkpoint for {made_for})" if made_for else ""
    try:
        report = load_weights(target, raw, strict=False, within="backbone", drop=_finetune_drop, name=str(path),
                              what="backbone")
    except (RuntimeError, ValueError) as err:
        raise ConfigValueError(f"finetune_from={path}{kind}: {' '.join(str(err).split())}") from None
    missing = [k for k in report.missing if not k.endswith(_TABLES)]
    if missing or report.unexpected:
        lists = "; ".join(f"{title} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
                          for title, keys in (("backbone tensors not in the file:", missing),
                                              ("file tensors without a place:", report.unexpected)) if keys)
        raise ConfigValueError(f"finetune_from={path}{kind} does not fit this task's backbone: {lists}; "
                               "pre-train (or train) with this task's model architecture (model.encoder.*, patch "
                               "size, tokeniser)")
    report.log_to(log, "finetune_from: ")
    return report


_TABLES = ("byte_embed.weight", "token_embed.weight")


def modality(model: nn.Module) -> Optional[str]:
    """What a backbone reads, by its tokeniser: images, points or bytes (None: unknown)."""
    if hasattr(model, "patch_embed"):
        return "images"
    if hasattr(model, "tokenizer"):
        return "points"
    if hasattr(model, "embed"):
        return "bytes"
    return None


def run(cfg: DictConfig, model: nn.Module, adapter: Any, data: TaskData, *,
        start: Optional[StartCheckpoint] = None) -> dict[str, float]:
    """:func:`bixt.engine.run` after :func:`finetune` (``finetune_from=PATH``)."""
    finetune(cfg, model)
    return engine_run(cfg, model, adapter, data, start=start)


def smoothing(cfg: DictConfig) -> float:
    return float((cfg.get("loss") or {}).get("label_smoothing", 0.0))


def log_tables(metrics: Mapping[str, float], main_key: str, title: str, table: Callable[[dict, str], str]) -> None:
    """``table(split_metrics, prefix)`` logged for every split with a full evaluation (``val``,
    ``val_ema``, ``test_<name>``; not ``best``)."""
    for prefix in sorted(k[: -len(main_key) - 1] for k in metrics if k.endswith("/" + main_key)
                         and not k.startswith("best")):
        split = {k[len(prefix) + 1:]: v for k, v in metrics.items() if k.startswith(prefix + "/")}
        log.info("%s (%s):\n%s", title, prefix, table(split, prefix))


def main(cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]], metric: str) -> float:
    """A task's Hydra main: a bad input file or config value is one line naming it, no traceback."""
    with data_errors_exit():
        try:
            metrics = train(cfg)
        except ConfigValueError as err:
            raise SystemExit(f"error: {err}") from None
    return metrics.get(metric, float("nan"))


__all__ = ["TaskData", "build_model", "check_classes", "check_required", "cli", "finetune", "finetune_target",
           "log_tables", "main", "min_points", "prepare", "run", "smoothing", "validate"]
