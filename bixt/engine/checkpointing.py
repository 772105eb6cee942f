"""Training checkpoints: atomic writes, resume resolution, the start checkpoint read once.

The engine keeps training state here; reading and loading weights is :mod:`bixt.weights`' job.
A checkpoint is a ``dict`` that ``torch.load(..., weights_only=True)`` can read (so timm's
``pretrained_cfg_overlay=dict(file=PATH)`` and ``bixt.weights.load_weights`` accept it):

=================  ==========================================================================
``state_dict``      model weights (unwrapped: no ``module.``/``_orig_mod.`` prefixes)
``state_dict_ema``  EMA weights (only when ``trainer.ema``; timm prefers these when present)
``optimizer``       optimizer state; ``scheduler``: timm scheduler state (informative: resume
                    rebuilds the schedule from the config, see :mod:`bixt.engine.resume`);
                    ``scaler``: GradScaler
``epoch``           epochs completed; ``step_in_epoch``: optimizer steps done in epoch ``epoch``
``global_step``     optimizer steps done in total
``layout``          how the run cut an epoch into updates and its optimizer (:class:`~bixt.engine.resume.Layout`)
``rng``             list (one per rank) of global RNG states; ``epoch_sums``: partial epoch sums per rank
``config``          the fully resolved config (plain containers)
``best``            best value of the main metric so far
task extras         the adapter's ``checkpoint_extra`` items, e.g. ``classes`` (class names by label)
=================  ==========================================================================

A write interrupted by a kill leaves a ``.last.pth.*.tmp`` file, never a torn ``last.pth``; the
engine removes such files when it (re)starts in the run directory.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from bixt.engine.config import TrainerConfig, trainer_config
from bixt.engine.run_dir import BEST, LAST, announce_run_checkpoint, run_checkpoint_to_evaluate
from bixt.weights import WRAPPER_KEYS, LoadReport, load_weights, read_checkpoint, torch_load

log = logging.getLogger(__name__)

#: what the engine itself writes into a checkpoint (an adapter's checkpoint_extra may not reuse these)
ENGINE_KEYS = frozenset({"state_dict", "state_dict_ema", "optimizer", "scheduler", "scaler", "epoch", "step_in_epoch",
                         "global_step", "epoch_sums", "best", "rng", "world_size", "config", "arch", "layout"})
#: how to start from the weights of a checkpoint that cannot be resumed (named in error messages)
FROM_WEIGHTS = ("trainer.checkpoint=PATH without resume (the ImageNet task: model.checkpoint=PATH, "
                "or finetune_from=PATH)")


def _temp_prefix(name: str) -> str:
    return f".{name}."


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, rename over ``path``, fsync
    the directory: a reader (or a crash, or a full disk) never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints get the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        # measured before the partial file goes: afterwards the disk looks roomy again
        free = _free_bytes(path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(err):
            raise OSError(errno.ENOSPC, f"no space left on device while writing {path} ({_mib(free)} free in "
                          f"{path.parent}); {path.name} is unchanged. Free some space (or point trainer.run_dir "
                          "at another disk) and continue with resume=true") from err
        raise
    _fsync_dir(path.parent)  # the rename itself must survive a power cut


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a small text file (``config.yaml``) by temp file + rename: a full disk must not leave
    the run's copy empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_temp_prefix(path.name)}{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT anywhere in the chain: torch's zip writer reports a failed write as
    ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos``, the OSError as context."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def _free_bytes(directory: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _mib(n: Optional[int]) -> str:
    return "? MiB" if n is None else f"{n / 2**20:.1f} MiB"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; the rename is what matters there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


def remove_stale_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that a kill interrupted (``.last.pth.*.tmp``,
    ``.best.pth.*.tmp``, ``.config.yaml.*.tmp``); only one run writes to a run directory, so none
    is in progress."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = (LAST, BEST, "config.yaml")
    stale = [p for name in names for p in run_dir.glob(f"{_temp_prefix(name)}*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
        log.warning("removed %s, left by a write that was interrupted", p)
    return stale


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        # official (timm train.py) checkpoints carry argparse.Namespace `args`: the safe loader lets
        # them load, so the error below can say what they are instead of "truncated"
        ckpt = torch_load(path)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        if _holds_weights(path):
            raise ValueError(f"{path} holds model weights but is not a training checkpoint written by bixt.engine "
                             "(an official release?): it cannot be resumed. Start from its weights with "
                             f"{FROM_WEIGHTS}") from err
        raise RuntimeError(f"cannot read checkpoint {path}: {err.__cause__ or err}\n"
                           "(a truncated file? checkpoints written by the engine are atomic)") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} holds a {type(ckpt).__name__}, not a training checkpoint written by bixt.engine")
    missing = [k for k in ("state_dict", "optimizer", "epoch", "global_step") if k not in ckpt]
    if missing:
        what = "an official (timm train.py) training checkpoint" if "args" in ckpt else "not a training checkpoint"
        raise ValueError(f"{path} is {what}, not one written by bixt.engine (missing {missing}): it cannot be "
                         f"resumed here. Start from its weights with {FROM_WEIGHTS}")
    return ckpt


def _holds_weights(path: Path) -> bool:
    try:
        read_checkpoint(path)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not readable as weights"
        return False


def resolve_resume(resume: Any, run_dir: str | None) -> Path | None:
    """Map ``trainer.resume`` (false | true | auto | PATH) to a checkpoint file, or ``None``."""
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("", "false", "no")):
        return None
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "yes", "auto")):
        auto = isinstance(resume, str) and resume.lower() == "auto"
        if run_dir is None:
            if auto:
                return None
            raise ValueError("trainer.resume=true needs trainer.run_dir=DIR (the run to continue), "
                             "or give the checkpoint directly: trainer.resume=PATH")
        candidate = Path(run_dir) / LAST
        if candidate.is_file():
            return candidate
        if auto:
            return None
        raise FileNotFoundError(f"trainer.resume=true but {candidate} does not exist; "
                                "use trainer.resume=auto to start fresh when there is nothing to resume")
    path = Path(str(resume))
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume!r}: no checkpoint at {path}")
    return path


def eval_weights_path(tcfg: Any) -> Path | None:
    """The checkpoint ``trainer.eval_only`` evaluates: the run named by ``trainer.resume`` (with
    ``trainer.run_dir``), or ``trainer.checkpoint``, or the ``last.pth`` of a run in ``trainer.run_dir``;
    ``None`` = the model as built."""
    resume = resolve_resume(tcfg.resume, tcfg.run_dir)
    if resume is None and str(tcfg.resume).lower() == "auto":
        raise FileNotFoundError(f"trainer.eval_only with trainer.resume=auto: no checkpoint in trainer.run_dir="
                                f"{tcfg.run_dir}; name the weights with trainer.resume=PATH or trainer.checkpoint=PATH")
    if resume is not None and tcfg.checkpoint and Path(tcfg.checkpoint).resolve() != resume.resolve():
        raise ValueError(f"trainer.eval_only got two checkpoints to evaluate: trainer.resume -> {resume} and "
                         f"trainer.checkpoint={tcfg.checkpoint}; give one of them")
    if resume is not None:
        return resume
    if tcfg.checkpoint:
        return Path(tcfg.checkpoint)
    # a run directory that holds a run: its last.pth, rather than the model's random initial weights
    return run_checkpoint_to_evaluate(Path(tcfg.run_dir)) if tcfg.run_dir else None


#: the kinds of start checkpoint: evaluated (eval_only), continued (resume), weights to start from
EVAL, RESUME, WEIGHTS = "eval", "resume", "weights"


def resolve_start(tcfg: TrainerConfig) -> tuple[Optional[Path], Optional[str]]:
    """Which file a run starts from and how, without reading it: ``(path, kind)`` or ``(None, None)``.
    ``eval_only``: :func:`eval_weights_path`; else ``trainer.resume``; else ``trainer.checkpoint``
    (initial weights, e.g. a fine-tune's; ignored when resuming)."""
    if tcfg.eval_only:
        path = eval_weights_path(tcfg)
        return (path, EVAL) if path is not None else (None, None)
    resume = resolve_resume(tcfg.resume, tcfg.run_dir)
    if resume is not None:
        return resume, RESUME
    return (Path(tcfg.checkpoint), WEIGHTS) if tcfg.checkpoint else (None, None)


@dataclass
class StartCheckpoint:
    """The checkpoint a run starts from, resolved from ``cfg.trainer`` and read once: the task reads
    its metadata (class names, vocabulary: what the adapter stored with ``checkpoint_extra``) and
    hands it to :func:`bixt.engine.run` (``start=``), which loads the weights (and, for a resume,
    the training state) from the same contents and then releases them.

    ``kind``: ``"eval"`` (``trainer.eval_only``), ``"resume"`` (``trainer.resume``) or ``"weights"``
    (``trainer.checkpoint`` without resume: initial weights, e.g. ``finetune_from``).
    """

    path: Path
    kind: str
    contents: Optional[Mapping[str, Any]] = field(repr=False)
    #: everything stored next to the weights that is not the engine's or a wrapper's: ``classes``...
    metadata: dict[str, Any] = field(default_factory=dict)
    #: set once the weights were loaded (:meth:`load_into`)
    report: Optional[LoadReport] = field(default=None, repr=False)

    @property
    def binds_labels(self) -> bool:
        """True when the data must be labelled as this checkpoint was trained (evaluated or resumed);
        a fine-tune's start weights may come from other classes."""
        return self.kind in (EVAL, RESUME)

    @property
    def classes(self) -> Optional[list[str]]:
        """The class names by label the checkpoint was trained with, ``None`` if it stores none."""
        classes = self.metadata.get("classes")
        return [str(c) for c in classes] if classes else None

    def load_into(self, model: nn.Module, *, strict: bool = True, **options: Any) -> LoadReport:
        """Load the weights into ``model`` through :func:`bixt.weights.load_weights` (``options``:
        ``within``, ``drop``, ``use_ema``, ``filter_fn``...) and log the report. A task that needs
        options (a fine-tune from a pre-training run drops its decoder) calls this before
        :func:`bixt.engine.run`, which then loads nothing; otherwise the engine calls it plainly."""
        if self.kind == RESUME:
            raise ValueError(f"{self.path} is resumed: the engine restores its weights with the training state")
        report = load_weights(model, self.take_contents(), strict=strict, name=str(self.path), **options)
        report.log_to(log, "" if report.complete else "non-strict load: ")
        self.report = report
        return report

    def take_contents(self) -> Mapping[str, Any]:
        """The file's contents, handed over once (the engine takes them; the memory goes with it)."""
        if self.contents is None:
            raise RuntimeError(f"the contents of the start checkpoint {self.path} were already used by a run; "
                               "call bixt.engine.start_checkpoint(cfg) again for another run")
        contents, self.contents = self.contents, None
        return contents


def read_start(path: Path, kind: str) -> StartCheckpoint:
    """Read the start checkpoint: a training checkpoint of bixt.engine to resume (validated as such),
    any weight file of :func:`bixt.weights.read_checkpoint` to evaluate or start from."""
    contents = load_training_checkpoint(path) if kind == RESUME else read_checkpoint(path)
    skip = ENGINE_KEYS | set(WRAPPER_KEYS) | {"args", "version"}
    metadata = {k: v for k, v in contents.items() if k not in skip and not _holds_tensors(v)}
    return StartCheckpoint(Path(path), kind, contents, metadata)


def _holds_tensors(value: Any) -> bool:
    """A tensor or a state dict (a plain weights file's top level, a wrapper's weights): not metadata."""
    return isinstance(value, torch.Tensor) or (
        isinstance(value, Mapping) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values()))


def start_checkpoint(cfg: Union[DictConfig, TrainerConfig]) -> Optional[StartCheckpoint]:
    """The checkpoint a run of ``cfg`` (the composed config, or its :class:`TrainerConfig`) starts
    from, read once; ``None`` for a fresh run without ``trainer.checkpoint``. Pass it to
    :func:`bixt.engine.run` as ``start=``, which then reads nothing again."""
    tcfg = cfg if isinstance(cfg, TrainerConfig) else trainer_config(cfg)
    path, kind = resolve_start(tcfg)
    if kind == EVAL and tcfg.run_dir and not tcfg.checkpoint and path == Path(tcfg.run_dir) / LAST:
        announce_run_checkpoint(Path(tcfg.run_dir))
    return read_start(path, kind) if path is not None else None
