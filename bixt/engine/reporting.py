"""Metrics files, console summaries and the progress bar (all silent on non-zero ranks)."""
from __future__ import annotations

import csv
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from tqdm import tqdm

log = logging.getLogger("bixt.engine")

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"


class MetricsWriter:
    """Appends one record per line to ``metrics.jsonl`` and keeps ``metrics.csv`` in step.

    The CSV is rewritten from the JSONL each time, so new columns (e.g. test metrics at the end)
    simply extend the header; both survive resume (records after the resume point are dropped
    first, so a resumed run's files equal an uninterrupted run's).
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True):
        self.dir = Path(run_dir)
        self.enabled = enabled

    @property
    def jsonl(self) -> Path:
        return self.dir / METRICS_JSONL

    def records(self) -> list[dict[str, Any]]:
        """The records so far. A torn *last* line (the process was killed while appending it) is
        dropped with a warning; a bad line anywhere else is an error naming the file and line."""
        if not self.jsonl.is_file():
            return []
        lines = self.jsonl.read_text(errors="replace").splitlines()
        numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
        out = []
        for k, (lineno, line) in enumerate(numbered):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                if k == len(numbered) - 1:
                    log.warning("%s: dropping its last line %d, a torn record (%s): %.80r",
                                self.jsonl, lineno, err, line)
                    break
                raise ValueError(f"{self.jsonl}, line {lineno}: not a JSON record ({err}): {line[:80]!r}. "
                                 "Delete or repair that line (each line is one epoch's metrics)") from None
        return out

    def truncate_after(self, epoch: int) -> None:
        """Drop records of epochs later than ``epoch`` (they belong to a run being redone)."""
        if not self.enabled:
            return
        # records without an epoch (final test / eval rows) belong to the run being redone too
        kept = [r for r in self.records() if "epoch" in r and r["epoch"] <= epoch]
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self._write_csv(kept)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv(self.records())

    def _drop_torn_tail(self) -> None:
        """Cut an unterminated last line (a kill mid-append) so the next record starts a line of its own."""
        if not self.jsonl.is_file():
            return
        data = self.jsonl.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line %.80r", self.jsonl, data[keep:])
            with open(self.jsonl, "wb") as f:
                f.write(data[:keep])

    def _write_csv(self, records: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for r in records:
            columns += [k for k in r if k not in columns]
        with open(self.dir / METRICS_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for k, v in metrics.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}" if (v == 0 or 1e-3 <= abs(v) < 1e5 or math.isnan(v)) else f"{k} {v:.3e}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)


def show_progress(setting: Optional[bool], is_main: bool) -> bool:
    """Progress bar only on rank 0, and (unless forced) only when stderr is a terminal."""
    if not is_main:
        return False
    if setting is None:
        return sys.stderr.isatty()
    return bool(setting)


def progress_bar(iterable: Iterable, total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled,
                dynamic_ncols=True, leave=False, file=sys.stderr)


def checkpoint_position(epochs_done: int, step_in_epoch: int) -> str:
    """Where a checkpoint stands, numbered as the logs and ``metrics.jsonl`` number epochs (from 1):
    a checkpoint holds ``epoch`` = epochs completed and ``step_in_epoch`` = updates into the next."""
    if step_in_epoch:
        return f"epoch {epochs_done + 1}, after {step_in_epoch} of its updates"
    return f"end of epoch {epochs_done}"


class LossMeter:
    """The training loss of one epoch, summed weighted by samples, and of the window since the last
    progress report. The sums stay on the device: reading one back is a host sync, done only when
    reporting. An epoch's sums go into mid-epoch checkpoints, so a resumed epoch reports what the
    uninterrupted one does."""

    def __init__(self, device: torch.device, resumed: Optional[dict[str, float]] = None):
        resumed = resumed or {}
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.epoch_loss = torch.tensor(resumed.get("loss", 0.0), dtype=self.dtype, device=device)
        self.epoch_samples = int(resumed.get("samples", 0))
        self.window_loss = torch.zeros((), dtype=self.dtype, device=device)
        self.window_samples = 0
        self.samples_seen = 0  #: by this process in this epoch of this run (throughput)
        self.started = self.window_started = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        weighted = loss.detach().to(self.dtype) * samples
        self.epoch_loss += weighted
        self.window_loss += weighted
        self.epoch_samples += samples
        self.window_samples += samples
        self.samples_seen += samples

    def window_average(self) -> float:
        return self.window_loss.item() / max(self.window_samples, 1)

    def window_rate(self) -> float:
        """Samples per second of this process in the window."""
        return self.window_samples / max(time.perf_counter() - self.window_started, 1e-9)

    def reset_window(self) -> None:
        self.window_loss.zero_()
        self.window_samples, self.window_started = 0, time.perf_counter()

    def sums(self) -> dict[str, float]:
        """The epoch's sums as a mid-epoch checkpoint stores them."""
        return {"loss": self.epoch_loss.item(), "samples": self.epoch_samples}
