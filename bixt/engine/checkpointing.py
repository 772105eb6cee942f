"""Training checkpoints: atomic writes, resume resolution, loading initial weights.

A checkpoint is a ``dict`` that ``torch.load(..., weights_only=True)`` can read (so timm's
``pretrained_cfg_overlay=dict(file=PATH)`` and ``bixt.checkpoint.load_checkpoint`` accept it):

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

import argparse
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from bixt.checkpoint import load_weights_into, read_checkpoint

log = logging.getLogger(__name__)

LAST = "last.pth"
BEST = "best.pth"
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
        # official (timm train.py) checkpoints carry argparse.Namespace `args`: let them load, so
        # the error below can say what they are instead of "truncated"
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        if _holds_weights(path):
            raise ValueError(f"{path} holds model weights but is not a training checkpoint written by bixt.engine "
                             "(an official release?): it cannot be resumed. Start from its weights with "
                             f"{FROM_WEIGHTS}") from err
        raise RuntimeError(f"cannot read checkpoint {path}: {err}\n"
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
    ``trainer.run_dir``), or ``trainer.checkpoint``; ``None`` = the model as built."""
    resume = resolve_resume(tcfg.resume, tcfg.run_dir)
    if resume is None and str(tcfg.resume).lower() == "auto":
        raise FileNotFoundError(f"trainer.eval_only with trainer.resume=auto: no checkpoint in trainer.run_dir="
                                f"{tcfg.run_dir}; name the weights with trainer.resume=PATH or trainer.checkpoint=PATH")
    if resume is not None and tcfg.checkpoint and Path(tcfg.checkpoint).resolve() != resume.resolve():
        raise ValueError(f"trainer.eval_only got two checkpoints to evaluate: trainer.resume -> {resume} and "
                         f"trainer.checkpoint={tcfg.checkpoint}; give one of them")
    if resume is not None:
        return resume
    return Path(tcfg.checkpoint) if tcfg.checkpoint else None


def checkpoint_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names a checkpoint was trained with (``ckpt["classes"]``), ``None`` if it has none
    (official weights, older checkpoints)."""
    classes = read_checkpoint(path).get("classes")
    return [str(c) for c in classes] if classes else None


def run_checkpoint_classes(tcfg: Any) -> tuple[Path | None, list[str] | None]:
    """The checkpoint a run evaluates (``eval_only``) or continues (``resume``), and the class names
    stored in it, so that a task labels its data the way the model was trained; ``(None, None)`` for
    a fresh run, ``(path, None)`` for a checkpoint without a class list."""
    path = eval_weights_path(tcfg) if tcfg.eval_only else resolve_resume(tcfg.resume, tcfg.run_dir)
    if path is None:
        return None, None
    return path, checkpoint_classes(path) if tcfg.eval_only else load_training_checkpoint(path).get("classes")


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Initial weights from an official or bixt checkpoint (zip, wrapped, ``module.``-prefixed...):
    :func:`bixt.checkpoint.load_weights_into` is the one home for that logic. Reports how many of
    the model's tensors it set (it refuses to set none)."""
    report = load_weights_into(model, str(path), strict=strict)
    if report.missing or report.unexpected:
        log.warning("loaded %s (trainer.checkpoint_strict=false)", report)
    else:
        log.info("loaded %s", report)
