"""The run directory: which one a run writes to, the guard that keeps one run from overwriting
another, and the lock that keeps two processes out of one directory at a time.

* A new training run into a directory that already holds a run (``config.yaml``, ``last.pth``,
  ``best.pth`` or ``metrics.jsonl``) is **refused** before anything is read or written, naming
  the two ways on: ``resume=true`` to continue it, or another ``trainer.run_dir``. Refusing rather
  than suffixing keeps ``trainer.run_dir`` meaning the directory the run is in (scripts read
  results from the path they passed). Only the default outside Hydra (``runs/<time>``, a name
  nobody chose) gets a ``-2``, ``-3``... suffix when taken.
* An evaluation (``trainer.eval_only``) never writes into a training run: with the directory
  holding one, its results go to ``<dir>/eval/<time>/`` (suffixed if two start in one second).
  Without ``trainer.checkpoint`` or ``trainer.resume`` it evaluates that run's ``last.pth`` (what
  ``resume=true`` names), logged, instead of the model's random initial weights.
* ``<dir>/.bixt.lock`` holds the PID of the process writing there, under an exclusive ``flock``
  (released by the kernel when the process dies): a second run stops with a message naming that
  PID; a lock file left by a dead process is taken over with a warning.
* A directory that cannot be written (read-only file system, permissions) stops the run at start
  with one line naming it and the fix, not an ``OSError`` traceback from the first write.

The errors are :class:`RunDirError` (a :class:`~bixt.data.errors.DataError`), so every task's
entry point prints them as one line.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from bixt.data.errors import DataError
from bixt.engine.reporting import METRICS_JSONL

try:
    import fcntl
except ImportError:  # Windows: the lock file is written but does not exclude
    fcntl = None

log = logging.getLogger("bixt.engine")

LOCK = ".bixt.lock"
#: the checkpoints a run directory holds
LAST, BEST = "last.pth", "best.pth"
#: the files whose presence means a directory holds a run
RUN_FILES = ("config.yaml", METRICS_JSONL, LAST, BEST)
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


class RunDirError(DataError, RuntimeError):
    """A run directory that cannot be used as asked; the message names it and the fix."""


def run_files(directory: Path) -> list[str]:
    """The files of a run that ``directory`` holds (empty: it holds none)."""
    return [name for name in RUN_FILES if (directory / name).exists()]


def _stamp() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def _hydra_output_dir() -> Optional[Path]:
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return None


def base_dir(tcfg: Any, resume_path: Optional[Path]) -> Path:
    """``trainer.run_dir``, else the resumed checkpoint's directory, else Hydra's output directory,
    else a new ``runs/<time>`` (outside Hydra)."""
    if tcfg.run_dir:
        return Path(tcfg.run_dir)
    if resume_path is not None:
        return resume_path.parent
    hydra = _hydra_output_dir()
    if hydra is not None:
        return hydra
    return _unused(Path("runs") / _stamp())


def _unused(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... the first that holds no run."""
    candidate, n = path, 1
    while run_files(candidate) or (candidate / LOCK).exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def refuse_overwrite(directory: Path, resuming: bool) -> None:
    """A new run must not replace the files of the run already in ``directory``."""
    if resuming:
        return
    taken = run_files(directory)
    if taken:
        raise RunDirError(f"{directory} already holds a run ({', '.join(taken)}) and this run would overwrite it: "
                          f"continue that run with resume=true (trainer.resume), or start this one in another "
                          f"trainer.run_dir")


def run_checkpoint_to_evaluate(directory: Path) -> Optional[Path]:
    """What ``trainer.eval_only`` evaluates when no weights are named: the ``last.pth`` of the run
    in ``directory`` (the file ``resume=true`` names); ``None`` when the directory holds no run."""
    taken = run_files(directory)
    if not taken:
        return None
    last = directory / LAST
    if not last.is_file():
        raise RunDirError(f"trainer.eval_only in {directory}, which holds a run ({', '.join(taken)}) but no {LAST} "
                          "to evaluate: name the weights with trainer.checkpoint=PATH")
    return last


def announce_run_checkpoint(directory: Path) -> None:
    """Say, once per run, that ``eval_only`` evaluates the run in ``directory`` (resolving the start is repeated)."""
    log.info("trainer.eval_only without trainer.checkpoint or trainer.resume in %s, which holds a run: evaluating "
             "its %s (as resume=true does; trainer.checkpoint=PATH evaluates other weights)", directory, LAST)


def _unwritable(directory: Path, err: OSError, eval_only: bool) -> RunDirError:
    why = err.strerror or str(err)
    if eval_only:
        return RunDirError(f"cannot write this evaluation's results into {directory} ({why}): make it writable, or "
                           f"give another trainer.run_dir (with trainer.checkpoint=PATH naming the weights)")
    return RunDirError(f"cannot write to the run directory {directory} ({why}): a run writes its checkpoints and "
                       f"metrics there. Make it writable, or copy the run elsewhere and continue it there "
                       f"(resume=true trainer.run_dir=COPY)")


class RunDirLock:
    """An exclusive claim on a directory for the life of one run (see the module docstring)."""

    def __init__(self, directory: Path, eval_only: bool = False):
        self.directory, self.eval_only = directory, eval_only
        self.path = directory / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            while self._fd is None:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
                if self._lock_or_close(fd):
                    self._fd = fd
        except OSError as err:
            if err.errno in _UNWRITABLE:
                raise self._unwritable(err) from None
            raise
        previous = os.read(self._fd, 200).decode(errors="replace").split()
        if previous:
            log.warning("%s was left by process %s%s, which is gone (killed?): taking the run directory over",
                        self.path, previous[0], f" on {previous[1]}" if len(previous) > 1 else "")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)

    def _unwritable(self, err: OSError) -> RunDirError:
        return _unwritable(self.directory, err, self.eval_only)

    def _lock_or_close(self, fd: int) -> bool:
        """Lock ``fd``; ``False`` (closed) when the file was replaced meanwhile (retry on the new one)."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                pid = holder[0] if holder else "?"
                host = f" on {holder[1]}" if len(holder) > 1 else ""
                raise RunDirError(f"{self.directory} is in use by another run (process {pid}{host}, lock file "
                                  f"{self.path}): wait for it to end, or use another trainer.run_dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:  # the holder released it (unlinking the file) between open and flock
            same = False
        if not same:
            os.close(fd)
        return same

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # unlinked while still locked: a waiting opener retries (inode check)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_eval_dir(base: Path) -> RunDirLock:
    """A locked directory for an evaluation: ``base`` itself, or ``<base>/eval/<time>`` (suffixed
    when taken) when ``base`` holds a run, whose files are then left alone."""
    taken = run_files(base)
    if not taken:
        lock = RunDirLock(base, eval_only=True)
        lock.acquire()
        return lock
    stamp, n = _stamp(), 1
    while True:
        out = base / "eval" / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir(parents=True)
            break
        except FileExistsError:
            n += 1
        except OSError as err:
            if err.errno in _UNWRITABLE:
                raise _unwritable(base, err, eval_only=True) from None
            raise
    log.info("%s holds a run (%s): this evaluation writes to %s instead", base, ", ".join(taken), out)
    lock = RunDirLock(out, eval_only=True)
    lock.acquire()
    return lock
