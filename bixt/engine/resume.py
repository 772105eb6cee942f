"""Resuming a run whose settings changed since its checkpoint: what carries over, what is rebuilt,
what is refused.

A checkpoint holds a *position* (epoch, update within the epoch) and *states* (weights, optimizer
moments, RNG states, partial epoch sums). The lr schedule is not restored: it is rebuilt from this
run's config and placed at the checkpoint's position, measured in epochs. So a resume continues
the run that was asked for:

* ``trainer.epochs``: the schedule spans the new length (a finished 3-epoch run resumed with
  ``trainer.epochs=5`` trains epochs 4-5 as a fresh 5-epoch run would);
* ``trainer.batch_size``, ``trainer.accumulate``, the number of processes: the epoch is cut into
  the new number of updates and the lr is rescaled to the new global batch (``optim.lr_base_batch``).
  From a mid-epoch checkpoint this works when the samples already used in that epoch are a whole
  number of new global batches (same training set); otherwise it is refused;
* ``optim.lr`` and every other ``optim.*`` value of the same optimizer (schedule, warm-up,
  weight decay, betas...): applied; the optimizer's moments carry over.

Refused with a message naming the setting: another optimizer (``optim.name``: its state does not
fit; start a new run from the weights instead) and another grouping of the parameters
(``optim.layer_decay``, ``optim.filter_bias_and_bn``, a changed model). Every applied change is
logged in one summary line.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import OmegaConf

from bixt.engine.checkpointing import FROM_WEIGHTS
from bixt.engine.config import OptimConfig, optim_config

log = logging.getLogger("bixt.engine")


@dataclass(frozen=True)
class Layout:
    """How a run cuts an epoch into optimizer updates (stored in every checkpoint as ``layout``)."""

    train_size: int
    world_size: int
    batch_size: int  #: per process, as trained (a data set smaller than a batch trains with a smaller one)
    accumulate: int
    epochs: int
    lr: float  #: peak lr after scaling to the global batch
    optimizer: str

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.train_size / self.world_size) // self.batch_size

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulate)

    @property
    def samples_per_update(self) -> int:
        """Samples of all processes in one (full) update: the global batch."""
        return self.batch_size * self.world_size * self.accumulate

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ResumePlan:
    epoch: int  #: epochs completed
    step_in_epoch: int  #: updates done in epoch ``epoch``, in the *new* layout
    epoch_sums: Optional[dict[str, float]]  #: this rank's partial sums of that epoch
    changes: list[str]


def effective_batch(train_size: int, world_size: int, batch_size: int) -> int:
    """The per-process batch actually used: a training set smaller than one batch trains with one smaller batch."""
    return min(batch_size, math.ceil(train_size / world_size))


def saved_layout(ckpt: dict[str, Any], current: Layout) -> Layout:
    """The checkpoint's layout; for checkpoints older than ``layout``, rebuilt from its config."""
    if isinstance(ckpt.get("layout"), dict):
        known = {f.name for f in fields(Layout)}
        return Layout(**{k: v for k, v in ckpt["layout"].items() if k in known})
    trainer = (ckpt.get("config") or {}).get("trainer") or {}
    world = int(ckpt.get("world_size") or 1)
    batch = effective_batch(current.train_size, world, int(trainer.get("batch_size", current.batch_size)))
    return Layout(train_size=current.train_size, world_size=world, batch_size=batch,
                  accumulate=int(trainer.get("accumulate", 1)), epochs=int(trainer.get("epochs", current.epochs)),
                  lr=float("nan"), optimizer=str(_saved_optim(ckpt).get("name", current.optimizer)))


def _saved_optim(ckpt: dict[str, Any]) -> dict[str, Any]:
    raw = (ckpt.get("config") or {}).get("optim") or {}
    try:  # with the schema's defaults, so that an unset key compares equal to its default
        return asdict(optim_config(OmegaConf.create({"optim": raw})))
    except Exception:  # noqa: BLE001 - a config from another version: compare what is there
        return dict(raw)


def plan_resume(ckpt: dict[str, Any], path: Path, new: Layout, ocfg: OptimConfig, rank: int) -> ResumePlan:
    """Where to continue in the new layout, what changed; raises ``ValueError`` naming the setting
    when the checkpoint cannot continue as this run."""
    old = saved_layout(ckpt, new)
    old_optim = _saved_optim(ckpt)
    if old.optimizer != new.optimizer:
        raise ValueError(
            f"cannot resume {path} with optim.name={new.optimizer!r}: it was trained with "
            f"optim.name={old.optimizer!r}, whose state does not carry over to another optimizer. Resume with "
            f"optim.name={old.optimizer}, or start a new run from its weights with {FROM_WEIGHTS}")
    epoch, step = int(ckpt["epoch"]), int(ckpt["step_in_epoch"])
    new_step = _map_position(path, epoch, step, old, new)
    changes = _describe_changes(old, new, old_optim, asdict(ocfg))
    sums = _epoch_sums(ckpt, old, new, rank) if step else None
    if changes:
        total = new.epochs * new.updates_per_epoch
        position = epoch * new.updates_per_epoch + new_step
        log.info("resuming %s with changed settings: %s. The lr schedule is rebuilt for %d epochs x %d updates "
                 "(global batch %d, peak lr %.4g) and continues in epoch %d after %d of its updates "
                 "(position %d of %d)",
                 path, "; ".join(changes), new.epochs, new.updates_per_epoch, new.samples_per_update, new.lr,
                 epoch + 1, new_step, position, total)
    return ResumePlan(epoch, new_step, sums, changes)


def _map_position(path: Path, epoch: int, step: int, old: Layout, new: Layout) -> int:
    """The update within epoch ``epoch`` where the new layout continues."""
    same_cut = (old.train_size, old.world_size, old.batch_size, old.accumulate) == \
        (new.train_size, new.world_size, new.batch_size, new.accumulate)
    if step == 0 or same_cut:
        return step
    # Mid-epoch: the processes together used the first `used` samples of the epoch's permutation
    # (it depends on the seed and epoch only); the new layout can start right after them if that
    # is a whole number of its updates.
    used = step * old.samples_per_update
    where = (f"cannot resume the mid-epoch checkpoint {path} (epoch {epoch + 1}, update {step} of "
             f"{old.updates_per_epoch}, {used} samples used)")
    if old.train_size != new.train_size:
        raise ValueError(f"{where}: the training set has {new.train_size} samples, the checkpoint's had "
                         f"{old.train_size}. Resume with the same data, or from an epoch-end checkpoint")
    new_step, rest = divmod(used, new.samples_per_update)
    if rest or used > new.train_size or new_step >= new.updates_per_epoch:
        raise ValueError(
            f"{where} with trainer.batch_size={new.batch_size} x trainer.accumulate={new.accumulate} x "
            f"{new.world_size} process(es) = {new.samples_per_update} samples per update: {used} is not a whole "
            f"number of those. Resume with trainer.batch_size={old.batch_size} trainer.accumulate={old.accumulate} "
            f"on {old.world_size} process(es) (at least until the epoch ends), or a layout that divides {used}")
    return new_step


def _epoch_sums(ckpt: dict[str, Any], old: Layout, new: Layout, rank: int) -> Optional[dict[str, float]]:
    sums = ckpt.get("epoch_sums") or []
    if len(sums) != old.world_size:
        return None
    if old.world_size == new.world_size:
        return sums[rank]
    # another number of processes: the epoch's loss is a sum over ranks, so rank 0 carries it all
    if rank != 0:
        return {"loss": 0.0, "samples": 0}
    return {"loss": sum(float(s.get("loss", 0.0)) for s in sums),
            "samples": sum(int(s.get("samples", 0)) for s in sums)}


def _describe_changes(old: Layout, new: Layout, old_optim: dict[str, Any], new_optim: dict[str, Any]) -> list[str]:
    changes = []
    for key, label in (("epochs", "trainer.epochs"), ("batch_size", "trainer.batch_size (per process)"),
                       ("accumulate", "trainer.accumulate"), ("world_size", "processes"),
                       ("train_size", "training samples")):
        a, b = getattr(old, key), getattr(new, key)
        if a != b:
            changes.append(f"{label} {a} -> {b}")
    for key in sorted(set(old_optim) | set(new_optim)):
        a, b = old_optim.get(key), new_optim.get(key)
        if a != b and key != "name":
            changes.append(f"optim.{key} {a} -> {b}")
    if not math.isnan(old.lr) and not math.isclose(old.lr, new.lr, rel_tol=1e-12):
        changes.append(f"peak lr {old.lr:.4g} -> {new.lr:.4g}")
    return changes


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any], path: Path,
                         changes: list[str]) -> None:
    """Restore the optimizer's moments, keeping this run's hyperparameters (lr, weight decay,
    betas...): torch's ``load_state_dict`` would bring back the checkpoint's."""
    groups, saved = optimizer.param_groups, state.get("param_groups", [])
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in saved]:
        named = [c for c in changes if c.startswith(("optim.layer_decay", "optim.filter_bias_and_bn"))]
        why = "; ".join(named) if named else "the model's parameters differ from the checkpoint's"
        raise ValueError(
            f"cannot resume {path}: its optimizer state groups the parameters as "
            f"{[len(g['params']) for g in saved]}, this run as {[len(g['params']) for g in groups]} ({why}). "
            f"Resume with the checkpoint's optim.layer_decay / optim.filter_bias_and_bn and model, or start "
            f"a new run from its weights with {FROM_WEIGHTS}")
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    optimizer.load_state_dict(state)
    for group, hyper in zip(optimizer.param_groups, fresh):
        group.update(hyper)
