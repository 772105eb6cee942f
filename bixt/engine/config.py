"""Typed schemas of the engine's two config nodes, ``cfg.trainer`` and ``cfg.optim``.

Both are registered in Hydra's ConfigStore on import of :mod:`bixt.engine`:

* group ``trainer``, name ``default`` -> :class:`TrainerConfig` (select with ``- trainer: default``
  in a task's defaults list; a task's own ``bixt/configs/<task>/trainer/x.yaml`` may extend it with
  ``defaults: [default, _self_]``);
* group ``optim``, name ``default`` -> :class:`OptimConfig` (tasks usually keep their own
  ``bixt/configs/<task>/optim/*.yaml``; the engine validates them against this schema anyway).

The engine merges whatever the task composed onto these schemas (:func:`trainer_config`,
:func:`optim_config`), so a misspelt key fails early with the list of valid keys instead of
being silently ignored, and an impossible value (``trainer.epochs=0``, a negative batch size...)
fails with the key's name (:func:`check_trainer`, :func:`check_optim`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError


@dataclass
class TrainerConfig:
    """How to train; task-agnostic. Per-process values unless stated otherwise."""

    seed: int = 0  #: global seed; rank r uses seed + r for its training-time randomness
    epochs: int = 10
    batch_size: int = 64  #: per process; global batch = batch_size * world_size * accumulate
    eval_batch_size: Optional[int] = None  #: per process; None = 2 * batch_size
    num_workers: int = 2  #: DataLoader workers per process (0 = load in the main process)
    pin_memory: Optional[bool] = None  #: None = pin when training on CUDA
    device: str = "auto"  #: auto (CUDA if present, else CPU) | cpu | cuda | cuda:N
    threads: Optional[int] = None  #: CPU threads for torch (None = torch's default, one per core)
    #: keep freed activation memory in the process heap (glibc): no page faults on every step; see bixt.runtime
    tune_allocator: bool = True
    #: auto (bf16 on CUDA and on CPUs with native bf16 GEMMs, AVX-512 BF16 or AMX; else fp32) | bf16 | fp16 | fp32
    amp: str = "auto"
    compile: bool = False  #: torch.compile the model
    compile_mode: Optional[str] = None  #: torch.compile mode (None, reduce-overhead, max-autotune)
    accumulate: int = 1  #: micro-batches per optimizer step
    clip_grad: Optional[float] = None  #: None = no clipping
    clip_mode: str = "norm"  #: norm | value | agc (timm's dispatch_clip_grad)
    ema: bool = False  #: keep an EMA of the weights (timm ModelEmaV3), evaluated next to the model
    ema_decay: float = 0.9998
    ema_warmup: bool = False
    sync_bn: bool = False  #: convert BatchNorm to SyncBatchNorm under DDP
    find_unused_parameters: bool = False  #: DDP option, for models with unused branches
    deterministic: bool = False  #: deterministic algorithms (exact reproducibility, slower on GPU)
    run_dir: Optional[str] = None  #: None = Hydra's output dir (or ./runs/<time> outside Hydra)
    #: false | true (run_dir/last.pth) | auto (if it exists) | PATH (file or run dir); changed epochs, batch
    #: size or optim values apply (schedule rebuilt, logged), another optim.name is refused (bixt.engine.resume)
    resume: Any = False
    checkpoint: Optional[str] = None  #: initial weights (official or ours); ignored when resuming
    #: false: load what matches (reported; a checkpoint matching no tensor is still an error)
    checkpoint_strict: bool = True
    #: evaluate `checkpoint`, or with `resume` that run's checkpoint, or the last.pth of the run in `run_dir`
    #: (else the model as given), and exit; never writes into a training run (results in run_dir/eval/<time>)
    eval_only: bool = False
    ckpt_every_steps: int = 0  #: also write `last` every N optimizer steps (0 = at epoch end only)
    save_best: bool = True  #: keep `best.pth` by the adapter's main metric
    eval_every: int = 1  #: evaluate every N epochs (and always after the last one)
    test_with: str = "best"  #: weights for the final test sets: best | last
    log_every: int = 50  #: optimizer steps between log lines when no progress bar is shown (0 = off)
    progress: Optional[bool] = None  #: progress bar; None = only on rank 0 and a terminal
    max_steps: Optional[int] = None  #: stop (cleanly: checkpoint + eval) after this many optimizer steps
    min_updates: int = 500  #: warn when the run makes fewer optimizer steps than this (0 = never)
    #: evaluate on the CPU through bixt.accel.optimize (an inference copy with packed weights)
    accel: bool = True


@dataclass
class OptimConfig:
    """Optimizer (timm ``create_optimizer_v2``) and LR schedule (timm ``create_scheduler_v2``)."""

    name: str = "adamw"  #: any timm optimizer name: adamw, sgd, lamb, lambc, lion, ...
    lr: float = 1e-3  #: peak learning rate at a global batch of `lr_base_batch`
    lr_base_batch: Optional[int] = None  #: None = use `lr` as given, whatever the global batch
    lr_scale: str = "sqrt"  #: sqrt | linear: how `lr` scales with global batch / lr_base_batch
    weight_decay: float = 0.05
    momentum: float = 0.9  #: SGD-style momentum
    betas: Optional[list[float]] = None  #: None = the optimizer's default
    eps: Optional[float] = None  #: None = the optimizer's default
    layer_decay: Optional[float] = None  #: layer-wise lr decay (timm)
    filter_bias_and_bn: bool = True  #: no weight decay on biases and 1-d (norm) parameters
    kwargs: dict[str, Any] = field(default_factory=dict)  #: extra optimizer arguments
    sched: str = "cosine"  #: timm scheduler name: cosine, step, multistep, poly, constant, none, ...
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    warmup_prefix: bool = False  #: warm-up before (True) or inside (False) the schedule's epochs
    cooldown_epochs: int = 0
    decay_epochs: Optional[float] = None  #: step / wsd schedules
    decay_rate: float = 0.1
    decay_milestones: list[int] = field(default_factory=lambda: [90, 180, 270])
    sched_on_epochs: bool = False  #: update the lr once per epoch (timm style) instead of per step


#: The Hydra settings every task shares (``- task_hydra`` in its defaults list): runs in
#: ``runs/<task>/<time>`` (``<task>`` = the entry point's module name), sweeps in
#: ``runs/<task>/multirun/<time>/<n>``, no chdir, one help layout (a task adds its header and footer).
TASK_HYDRA = {
    "hydra": {
        "run": {"dir": "runs/${hydra.job.name}/${now:%Y-%m-%d_%H-%M-%S}"},
        "sweep": {"dir": "runs/${hydra.job.name}/multirun/${now:%Y-%m-%d_%H-%M-%S}", "subdir": "${hydra.job.num}"},
        "job": {"chdir": False},
        "help": {
            "app_name": "bixt.tasks.${hydra.job.name}",
            "template": "${hydra.help.header}\n\n== Config groups (choose one with group=option) ==\n"
                        "$APP_CONFIG_GROUPS\n${hydra.help.footer}\n\n== Composed configuration ==\n$CONFIG",
        },
    }
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="trainer", name="default", node=TrainerConfig)
    cs.store(group="optim", name="default", node=OptimConfig)
    cs.store(name="task_hydra", node=TASK_HYDRA)


def _typed(schema: type, node: Any, key: str):
    base = OmegaConf.structured(schema)
    if isinstance(node, DictConfig):
        # resolve in place first: interpolations may point anywhere in the task's full config
        node = OmegaConf.to_container(node, resolve=True)
    try:
        merged = OmegaConf.merge(base, node if node is not None else {})
    except (ConfigKeyError, ValidationError) as err:
        valid = ", ".join(f.name for f in fields(schema))
        reason = str(err.msg if hasattr(err, "msg") else err).splitlines()[0]
        name = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        hint = f"; valid keys of `{key}`: {valid}" if isinstance(err, ConfigKeyError) else ""
        raise ValueError(f"invalid `{name}`: {reason}{hint}") from None
    return OmegaConf.to_object(merged)


def _require(problems: list[str], key: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        problems.append(f"{key}={value!r} (expected {expected})")


def _raise_if(problems: list[str], node: str) -> None:
    if problems:
        raise ValueError(f"impossible `{node}` setting(s): " + "; ".join(problems))


def check_trainer(t: TrainerConfig) -> None:
    """Values the types allow but training cannot use fail here, naming the key, instead of as a
    bare assertion or a DataLoader error deep inside torch (or, worse, being silently replaced)."""
    p: list[str] = []
    _require(p, "trainer.epochs", t.epochs, t.epochs >= 1 or t.eval_only, ">= 1")
    _require(p, "trainer.batch_size", t.batch_size, t.batch_size >= 1, ">= 1")
    _require(p, "trainer.eval_batch_size", t.eval_batch_size, t.eval_batch_size is None or t.eval_batch_size >= 1,
             ">= 1, or null for 2 * trainer.batch_size")
    _require(p, "trainer.num_workers", t.num_workers, t.num_workers >= 0, ">= 0 (0 = load in the main process)")
    _require(p, "trainer.threads", t.threads, t.threads is None or t.threads >= 1, ">= 1, or null for torch's default")
    _require(p, "trainer.accumulate", t.accumulate, t.accumulate >= 1, ">= 1")
    _require(p, "trainer.clip_grad", t.clip_grad, t.clip_grad is None or t.clip_grad > 0,
             "> 0, or null for no clipping")
    _require(p, "trainer.clip_mode", t.clip_mode, t.clip_mode in ("norm", "value", "agc"), "norm, value or agc")
    _require(p, "trainer.ema_decay", t.ema_decay, 0.0 <= t.ema_decay <= 1.0, "in [0, 1]")
    _require(p, "trainer.ckpt_every_steps", t.ckpt_every_steps, t.ckpt_every_steps >= 0, ">= 0 (0 = at epoch end only)")
    _require(p, "trainer.eval_every", t.eval_every, t.eval_every >= 1, ">= 1")
    _require(p, "trainer.log_every", t.log_every, t.log_every >= 0, ">= 0 (0 = off)")
    _require(p, "trainer.test_with", t.test_with, t.test_with in ("best", "last"), "best or last")
    _require(p, "trainer.device", t.device, re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None,
             "auto, cpu, cuda, cuda:N or mps")
    _require(p, "trainer.max_steps", t.max_steps, t.max_steps is None or t.max_steps >= 1, ">= 1, or null")
    _raise_if(p, "trainer")


def check_optim(o: OptimConfig) -> None:
    p: list[str] = []
    _require(p, "optim.lr", o.lr, math.isfinite(o.lr) and o.lr >= 0, "a finite value >= 0")
    _require(p, "optim.lr_base_batch", o.lr_base_batch, o.lr_base_batch is None or o.lr_base_batch >= 1,
             ">= 1, or null to use optim.lr as given")
    _require(p, "optim.lr_scale", o.lr_scale, o.lr_scale in ("sqrt", "linear"), "sqrt or linear")
    _require(p, "optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0")
    for key in ("warmup_epochs", "warmup_lr", "min_lr", "cooldown_epochs"):
        value = getattr(o, key)
        _require(p, f"optim.{key}", value, value >= 0, ">= 0")
    _raise_if(p, "optim")


def trainer_config(cfg: DictConfig) -> TrainerConfig:
    """``cfg.trainer`` resolved and validated as a :class:`TrainerConfig`."""
    tcfg = _typed(TrainerConfig, cfg.get("trainer"), "trainer")
    check_trainer(tcfg)
    return tcfg


def optim_config(cfg: DictConfig) -> OptimConfig:
    """``cfg.optim`` resolved and validated as an :class:`OptimConfig`."""
    ocfg = _typed(OptimConfig, cfg.get("optim"), "optim")
    check_optim(ocfg)
    return ocfg
