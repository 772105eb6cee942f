"""Training checkpoints: atomic writes, resume resolution, loading initial weights.

A checkpoint is a ``dict`` that ``torch.load(..., weights_only=True)`` can read (so timm's
``pretrained_cfg_overlay=dict(file=PATH)`` and ``bixt.checkpoint.load_checkpoint`` accept it):

=================  ==========================================================================
``state_dict``      model weights (unwrapped: no ``module.``/``_orig_mod.`` prefixes)
``state_dict_ema``  EMA weights (only when ``trainer.ema``; timm prefers these when present)
``optimizer``       optimizer state; ``scheduler``: timm scheduler state; ``scaler``: GradScaler
``epoch``           epochs completed; ``step_in_epoch``: optimizer steps done in epoch ``epoch``
``global_step``     optimizer steps done in total
``rng``             list (one per rank) of global RNG states
``config``          the fully resolved config (plain containers)
``best``            best value of the main metric so far; ``history``: metrics per epoch
=================  ==========================================================================
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bixt.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

LAST = "last.pth"
BEST = "best.pth"


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``:
    a reader (or a crash) never sees a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; checkpoints get the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the path and the likely cause
        raise RuntimeError(f"cannot read checkpoint {path}: {err}\n"
                           "(a truncated file? checkpoints written by the engine are atomic)") from err
    missing = [k for k in ("state_dict", "optimizer", "epoch", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(f"{path} is not a training checkpoint written by bixt.engine (missing {missing}); "
                         "to start from its weights use trainer.checkpoint=PATH instead of trainer.resume")
    return ckpt


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


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Initial weights from an official or bixt checkpoint (zip, wrapped, ``module.``-prefixed...):
    :func:`bixt.checkpoint.load_checkpoint` is the one home for that logic."""
    load_checkpoint(model, str(path), strict=strict)
    log.info("loaded weights from %s", path)
