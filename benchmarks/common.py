"""Shared measurement helpers for the bixt benchmark scripts (CPU-first).

Import from a benchmark script next to this file (``from common import ...``); the scripts are run
as ``python benchmarks/<script>.py`` so this directory is on ``sys.path``.

- :func:`interleaved_timing` — every configuration once per round, medians per configuration, so
  background load (the machine is shared) hits all configurations alike.
- :func:`measure_peak_memory` — peak resident memory of a forward pass, measured in a fresh worker
  process (see the function for the method).
- :func:`machine_info`, :func:`markdown_table`, :func:`set_threads`.

Running this file directly is the memory worker's entry point (used by :func:`measure_peak_memory`).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from bixt.accel import cpu_kernel_available

__all__ = [
    "TimingResult", "interleaved_timing", "MemorySpec", "measure_peak_memory",
    "machine_info", "markdown_table", "set_threads", "build_model", "cpu_snapshot", "other_load",
    "read_status_kb", "reset_peak_rss", "sequence_benchmark_results",
]


# --- threads & machine ----------------------------------------------------------------------------
def set_threads(threads: Optional[int] = None) -> int:
    """Use ``threads`` intra-op threads (default: every CPU this process may run on)."""
    if not threads:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, int(threads or 1)))
    return torch.get_num_threads()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [w for w in wanted if w in flags]
    except OSError:
        pass
    return []


def isa_label(info: dict[str, Any]) -> str:
    """The instruction sets that decide which kernels run, e.g. ``AVX2 (no native bf16)`` or
    ``AVX512 + amx_bf16 + avx512_bf16``."""
    extras = [f for f in info.get("cpu_flags", []) if f in ("amx_bf16", "avx512_bf16", "avx512_fp16")]
    label = " + ".join([str(info.get("cpu_capability", "unknown")).upper()] + extras)
    return label if info.get("bf16_gemm") else f"{label} (no native bf16 GEMM)"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (stored next to them in every results file)."""
    import timm

    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_gemm": cpu_kernel_available("bf16"),
    }


def cpu_snapshot() -> Optional[tuple[float, float, float]]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its finished
    children, monotonic time); ``None`` where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return busy, own.user + own.system + own.children_user + own.children_system, time.monotonic()


def other_load(start: Optional[tuple], end: Optional[tuple]) -> Optional[float]:
    """How many CPUs other processes kept busy on average between two :func:`cpu_snapshot` calls.

    Unlike the load average, the benchmark's own threads do not count.
    """
    if start is None or end is None or end[2] <= start[2]:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


def build_model(name: str, kwargs: Optional[dict] = None, device: str = "cpu") -> torch.nn.Module:
    """``timm.create_model`` with the bixt models registered; ``device="meta"`` builds shapes only."""
    import timm

    import bixt  # noqa: F401  (registers the BiXT models in timm)

    if device == "meta":
        try:  # skips weight initialisation (seconds for some timm models)
            with torch.device("meta"):
                return timm.create_model(name, **(kwargs or {}))
        except (NotImplementedError, RuntimeError):
            pass  # a constructor read a tensor's value (e.g. .tolist()): build on CPU, then move
    model = timm.create_model(name, **(kwargs or {}))
    return model.to(device) if device != "cpu" else model


# --- timing ---------------------------------------------------------------------------------------
@dataclass
class TimingResult:
    """Seconds per call of one configuration. ``status`` is "ok" or says why it has no (full) result."""

    samples: list[float] = field(default_factory=list)
    status: str = "ok"
    first_call_s: Optional[float] = None  # includes compilation for compiled configurations

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "median_s": self.median, "samples_s": self.samples,
            "min_s": min(self.samples) if self.samples else None,
            "max_s": max(self.samples) if self.samples else None,
            "first_call_s": self.first_call_s,
        }


def _short_error(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def interleaved_timing(
    configs: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    max_call_s: float = float("inf"),
    failure_prefix: Optional[dict[str, str]] = None,
    budget_s: float = float("inf"),
    slow_call_s: float = float("inf"),
    slow_repeats: int = 3,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, TimingResult]:
    """Warm every configuration up, then ``repeats`` rounds that run each configuration once in turn.

    - A configuration whose first call raises gets ``status="<prefix>: <error>"`` (prefix from
      ``failure_prefix``, e.g. "compile failed", else "failed") and is dropped.
    - One whose last warm-up call takes longer than ``max_call_s`` keeps that call as its only
      sample and is marked "too slow"; one slower than ``slow_call_s`` takes part in the first
      ``slow_repeats`` rounds only. (The first call may include compilation.)
    - After the first round, no new round starts once the rounds have used up ``budget_s``.
    """
    results = {name: TimingResult() for name in configs}
    rounds_of: dict[str, int] = {}
    for name, fn in configs.items():
        res = results[name]
        for i in range(max(1, warmup)):
            start = time.perf_counter()
            try:
                fn()
            except Exception as err:  # report, don't crash the whole benchmark
                prefix = (failure_prefix or {}).get(name, "failed")
                res.status = f"{prefix}: {_short_error(err)}"
                log(f"  {name}: {res.status}")
                break
            elapsed = time.perf_counter() - start
            log(f"  warm-up {i + 1} {name}: {elapsed:.2f} s")
            if i == 0:
                res.first_call_s = elapsed
        else:
            # Judged on the last warm-up call: first calls include compilation and one-time set-up.
            if elapsed > max_call_s:
                res.samples = [elapsed]
                res.status = f"too slow ({elapsed:.1f} s/call > {max_call_s:g} s): 1 sample"
                log(f"  {name}: {res.status}")
            else:
                rounds_of[name] = min(repeats, slow_repeats) if elapsed > slow_call_s else repeats
    rounds_start = time.perf_counter()
    for r in range(repeats):
        round_start = time.perf_counter()
        for name, rounds in rounds_of.items():
            if r < rounds and results[name].status == "ok":
                start = time.perf_counter()
                try:
                    configs[name]()
                except Exception as err:  # e.g. a recompilation failing later on
                    results[name].status = f"failed in round {r + 1}: {_short_error(err)}"
                    log(f"  {name}: {results[name].status}")
                    continue
                results[name].samples.append(time.perf_counter() - start)
        now = time.perf_counter()
        log(f"  round {r + 1}/{repeats}: {now - round_start:.1f} s")
        if r + 1 < repeats and (now - rounds_start) + (now - round_start) > budget_s:
            log(f"  stopping after {r + 1} rounds: timing budget of {budget_s:g} s spent")
            break
    return results


# --- peak memory ----------------------------------------------------------------------------------
@dataclass
class MemorySpec:
    """One forward pass whose peak memory to measure: ``timm.create_model(model, **kwargs)`` on a
    (batch, 3, img_size, img_size) input, eval mode, no grad."""

    key: str
    model: str
    kwargs: dict
    img_size: int
    batch: int
    warmup: bool = True  # run the same forward once before measuring (one-time set-up: kernel caches, packed weights)


def read_status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not found in /proc/self/status")


def reset_peak_rss() -> bool:
    try:  # "5" resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_of(forward: Callable[[], Any], *, warmup: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
    """Peak resident memory of one no-grad ``forward()`` over the RSS just before it, in MB (meant
    for a fresh worker process). ``warmup()`` (default: ``forward`` itself) runs first, so one-time
    kernel, thread-pool and allocator set-up stays out of the measurement."""
    with torch.no_grad():
        (warmup or forward)()
        gc.collect()
        exact = reset_peak_rss()
        baseline_kb = read_status_kb("VmRSS")
        start = time.perf_counter()
        out = forward()
        elapsed = time.perf_counter() - start
        peak_kb = read_status_kb("VmHWM")
    del out
    gc.collect()
    return {"status": "ok" if exact else "ok (peak since process start)", "baseline_mb": baseline_kb / 1024,
            "peak_mb": peak_kb / 1024, "peak_extra_mb": max(peak_kb - baseline_kb, 0) / 1024, "forward_s": elapsed}


def sequence_benchmark_parser(doc: str, *, batch_help: str, length: int, length_help: str) -> argparse.ArgumentParser:
    """The command line the sequence benchmarks (bench_lra.py, bench_listops.py) share."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32, help=batch_help)
    parser.add_argument("--length", type=int, default=length, help=length_help)
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--quick", action="store_true", help="batch 4, 2 rounds")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory workers")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "benchmarks" / "results")
    return parser


def _memory_worker() -> None:
    """Worker loop: specs as JSON on stdin, one JSON result line per spec on stdout."""
    specs = [MemorySpec(**s) for s in json.loads(sys.stdin.read())]
    set_threads(int(os.environ.get("BIXT_BENCH_THREADS", "0")) or None)
    # Generic warm-up: thread pool, oneDNN, allocator state are paid before any measurement.
    with torch.no_grad():
        x = torch.randn(4, 3, 32, 32)
        torch.nn.functional.conv2d(x, torch.randn(8, 3, 4, 4), stride=4).flatten(2).transpose(1, 2).softmax(-1)
        q = torch.randn(1, 2, 16, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    for spec in specs:
        model = build_model(spec.model, spec.kwargs).eval()
        images = torch.randn(spec.batch, 3, spec.img_size, spec.img_size)
        result = peak_rss_of(lambda m=model, x=images: m(x), warmup=None if spec.warmup else (lambda: None))
        print(json.dumps({"key": spec.key, "peak_mb_per_image": result["peak_extra_mb"] / spec.batch,
                          "batch": spec.batch, **result}), flush=True)
        del model, images
        gc.collect()


def measure_peak_memory(
    specs: Sequence[MemorySpec], timeout_s: float = 1800.0, threads: Optional[int] = None,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict[str, Any]]:
    """Peak extra resident memory of one no-grad forward pass, per image, for each spec.

    Method: a fresh worker process (no memory cached by earlier benchmarks) with glibc's mmap
    threshold fixed at 64 KiB, so every tensor above that is mapped on allocation and unmapped on
    free and the resident set size follows the live set of tensors (without it, freed memory stays
    resident and later measurements read near zero). Per spec the worker builds the model and input,
    runs the same forward once (warm-up: one-time kernel set-up and weights packed for this batch
    size, ~20 % of the result at 3136 tokens if left in), resets the
    kernel's peak-RSS counter (``/proc/self/clear_refs``), reads the current RSS as the baseline,
    runs the forward again and reports ``(peak RSS - baseline) / batch``: activations and kernel
    workspaces, not weights or the input. A worker killed while measuring a spec (the OOM killer)
    marks that spec "OOM" and a new worker carries on with the rest.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               BIXT_BENCH_THREADS=str(threads or torch.get_num_threads()))
    pending = list(specs)
    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for spec in pending:
                results[spec.key] = {"status": "skipped (memory time budget spent)"}
            break
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--memory-worker"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            out, err = proc.communicate(json.dumps([s.__dict__ for s in pending]), timeout=remaining)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        for line in out.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                results[row.pop("key")] = row
        done = [s for s in pending if s.key in results]
        pending = [s for s in pending if s.key not in results]
        for spec in done:
            log(f"  memory {spec.key}: {results[spec.key]['peak_mb_per_image']:.1f} MB/image")
        if pending and proc.returncode not in (0, None):
            culprit = pending.pop(0)
            if proc.returncode in (-9, 137):
                reason = "OOM (worker killed)" if time.monotonic() < deadline else "too slow (memory time budget)"
            else:
                tail = (err.strip().splitlines() or ["no error output"])[-1]
                reason = f"failed: {tail[:160]}"
            results[culprit.key] = {"status": reason}
            log(f"  memory {culprit.key}: {reason}")
        elif pending:  # clean exit without a result for everything: should not happen
            for spec in pending:
                results[spec.key] = {"status": "failed: worker gave no result"}
            break
    return results


# --- presentation -----------------------------------------------------------------------------------
def mean_std(values: Sequence[float], scale: float = 1.0) -> str:
    """``"mean ± std"`` of a table cell over seeds (std 0 for one value; ``scale`` e.g. 100 for fractions)."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.1f} ± {scale * spread:.1f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if math.isnan(v):
                return "–"
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    rows = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


# --- sequence benchmarks (bench_lra.py, bench_listops.py) ------------------------------------------
def sequence_benchmark_results(
    names: Sequence[str], batch: int, unit: str, params: dict[str, int], flops: dict[str, int],
    timings: dict[str, TimingResult], memory: dict[str, dict[str, Any]], *, flops_ratio: str,
) -> tuple[dict[str, Any], str, dict[str, Optional[float]]]:
    """Per-model results, their markdown table and the ratios of a BiXT vs Transformer benchmark.

    ``unit`` is what a sample is called (``"pair"``, ``"seq"``): it names the result keys
    (``gflops_per_<unit>``, ``<unit>s_per_s``; the memory worker's ``peak_extra_mb_per_<unit>``)
    and the columns. ``flops_ratio`` is ``"bixt_over_transformer"`` or ``"transformer_over_bixt"``.
    """
    if flops_ratio not in ("bixt_over_transformer", "transformer_over_bixt"):
        raise ValueError(f"flops_ratio must be bixt_over_transformer or transformer_over_bixt, got {flops_ratio!r}")
    rate, gflops = f"{unit}s_per_s", f"gflops_per_{unit}"
    results, rows = {}, []
    for name in names:
        t = timings[name]
        per_s = batch / t.median if t.median else None
        mem = memory.get(name, {})
        results[name] = {"params": params[name], gflops: flops[name] / 1e9, rate: per_s,
                         "timing": t.as_dict(), "memory": mem}
        rows.append([name, f"{params[name] / 1e6:.2f} M", flops[name] / 1e9, per_s,
                     mem.get("peak_extra_mb"), mem.get(f"peak_extra_mb_per_{unit}")])
    table = markdown_table(["model", "params", f"GFLOPs/{unit}", f"fwd {unit}s/s", "peak extra MB", f"MB/{unit}"],
                           rows)

    def ratio(a, b):
        return a / b if a and b else None  # None when either side has no result

    bixt, tf = results["bixt"], results["transformer"]
    over = (bixt, tf) if flops_ratio == "bixt_over_transformer" else (tf, bixt)
    summary = {
        "throughput_ratio_bixt_over_transformer": ratio(bixt[rate], tf[rate]),
        "memory_ratio_transformer_over_bixt": ratio(tf["memory"].get("peak_extra_mb"),
                                                    bixt["memory"].get("peak_extra_mb")),
        f"flops_ratio_{flops_ratio}": ratio(over[0][gflops], over[1][gflops]),
    }
    return results, table, summary


if __name__ == "__main__":
    if sys.argv[1:] == ["--memory-worker"]:
        _memory_worker()
    else:
        sys.exit(f"usage: python {sys.argv[0]} --memory-worker   (internal; run benchmarks/perf.py instead)")


def run_memory_worker(script: str, args: list[str], threads: int, timeout_s: float = 1200.0) -> dict[str, Any]:
    """Run ``script --memory-worker ARGS`` in a fresh process (its own peak RSS, small-allocation
    malloc settings so freed memory goes back) and return the last JSON line it printed, or a
    status saying why there is none (timeout, OOM kill, the error's last line)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536",
               BIXT_BENCH_THREADS=str(threads))
    cmd = [sys.executable, os.path.abspath(script), "--memory-worker", *args]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": f"too slow (> {timeout_s:g} s)"}
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if rows:
        return rows[-1]
    if proc.returncode in (-9, 137):
        return {"status": "OOM (worker killed)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": f"failed: {tail[:160]}"}
