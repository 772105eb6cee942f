"""The longest sequences a machine holds: time and peak memory of one forward and one train step
against the sequence length, per modality, for BiXT, full attention, XCiT and the Perceiver.

    python benchmarks/long_sequences.py                    # full sweep, 16 GB and 120 s per call
    python benchmarks/long_sequences.py --quick            # < 10 min on 2 cores
    python benchmarks/long_sequences.py --only bytes --budget-gb 8 --max-call-s 60
    python benchmarks/long_sequences.py --smoke --out /tmp/ls   # tiny models, seconds (tests)

Per modality (batch 1, fp32, eager, CPU):

- images: stride-4 tokens at growing resolution (1,024 .. 65,536 tokens = 128 .. 1,024 px) for
  BiXT-Ti (``bixt_ti_l64_p16s4``), the Perceiver (the same model with iterative cross-attention),
  ViT-Ti at patch 4 (fused SDPA) and XCiT-T12 at patch 8 (its conv stem takes 16 or 8 only, so it
  reads the same token counts from twice the pixels);
- points: 4,096 .. 131,072 points grouped into points / 8 tokens (farthest-point sampling and kNN
  groups of 16, both in the timed call) for BiXT (ModelNet40 scale: dim 192, 8 layers, 64
  latents), the Perceiver, and full attention (the same tokens through 8 pre-norm SDPA blocks);
- bytes: 1,024 .. 65,536 bytes for the LRA models (dim 128, 4 layers, 4 heads): BiXT with 32
  latents, the Perceiver, and the LRA Transformer (fused SDPA).

Each (model, length) runs in a fresh worker process, which first measures peak memory and then
time (see :func:`_worker`). A length is skipped, with the estimate that ruled it out, when the
memory or the time of a call extrapolated from the smaller lengths (log-log slope of the last two,
at least 1; quadratic from a single one) would exceed ``--budget-gb`` or ``--max-call-s``; the
worker also caps its own data segment at the budget (``RLIMIT_DATA``), so a wrong estimate ends
in an allocation error reported for that point, never in the OOM killer. Once a model is skipped
at a length, its longer lengths are skipped too.

Writes ``long_sequences[_quick|_smoke].{json,md}`` and ``..._time.png`` / ``..._memory.png``
(log-log, fitted slopes in the legend) to ``--out`` (default ``benchmarks/results``).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    build_model, cpu_snapshot, isa_label, machine_info, markdown_table, other_load, read_status_kb, reset_peak_rss,
    set_threads,
)

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("images", "points", "bytes")
MODES = ("forward", "train")
#: Worker environment: glibc maps every allocation over 64 KiB and unmaps it on free, so the
#: resident set follows the live tensors while memory is measured.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


# --- what to measure ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """One model of a modality: ``name`` in the tables, ``kind`` ("bixt" | "full" | "xcit" |
    "perceiver") to build it."""

    modality: str
    name: str
    kind: str


FAMILIES = (
    Family("images", "BiXT-Ti", "bixt"), Family("images", "Perceiver-Ti", "perceiver"),
    Family("images", "ViT-Ti (SDPA)", "full"), Family("images", "XCiT-T12", "xcit"),
    Family("points", "BiXT", "bixt"), Family("points", "Perceiver", "perceiver"),
    Family("points", "full attention (SDPA)", "full"),
    Family("bytes", "BiXT", "bixt"), Family("bytes", "Perceiver", "perceiver"),
    Family("bytes", "Transformer (SDPA)", "full"),
)


@dataclass
class Plan:
    lengths: dict[str, tuple[int, ...]]
    budget_gb: float = 16.0
    max_call_s: float = 120.0  # time budget of one forward or one train step
    repeats: int = 3  # timed calls per point (median)
    total_budget_s: float = math.inf  # no new point once the run has taken this long
    tiny: bool = False  # tiny models (smoke)
    threads: Optional[int] = None
    mode: str = "full"


FULL_LENGTHS = {"images": (1024, 4096, 16384, 65536), "points": (4096, 16384, 65536, 131072),
                "bytes": (1024, 4096, 16384, 65536)}


def make_plan(args: argparse.Namespace) -> Plan:
    if args.smoke:
        plan = Plan(lengths={"images": (64, 256), "points": (256, 1024), "bytes": (256, 1024)},
                    budget_gb=2.0, max_call_s=30.0, repeats=1, tiny=True, threads=1, mode="smoke")
    elif args.quick:
        # Sized on work counts to take ~5-6 min on 2 quiet cores (the cap below is the guarantee):
        # one timed call per point and 10 s per call, so full attention drops out where it turns quadratic.
        plan = Plan(lengths={"images": (1024, 4096, 16384), "points": (2048, 8192, 32768),
                             "bytes": (1024, 4096, 16384, 65536)},
                    max_call_s=10.0, repeats=1, total_budget_s=480.0, mode="quick")
    else:
        plan = Plan(lengths=dict(FULL_LENGTHS))
    overrides = {k: v for k, v in dict(budget_gb=args.budget_gb, max_call_s=args.max_call_s, repeats=args.repeats,
                                       threads=args.threads).items() if v is not None}
    plan = replace(plan, **overrides)
    plan.lengths = {m: plan.lengths[m] for m in args.only}
    return plan


# --- models -----------------------------------------------------------------------------------------
class TokenTransformer(nn.Module):
    """Full attention over a tokeniser's tokens: pre-norm SDPA blocks (timm's ``Block``), mean over
    the tokens, a linear head. The points' full-attention baseline, on BiXT's own point tokens."""

    def __init__(self, tokenizer: nn.Module, *, dim: int, depth: int, num_heads: int, num_classes: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        from bixt.core.layers import LayerNorm

        self.tokenizer = tokenizer
        self.blocks = nn.Sequential(*(Block(dim, num_heads, norm_layer=LayerNorm) for _ in range(depth)))
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(points[..., :3]).tokens
        return self.head(self.norm(self.blocks(tokens).mean(dim=1)))


def image_side(kind: str, tokens: int) -> int:
    """Pixels per side for ``tokens`` tokens: stride 4 (XCiT: 8, its conv stem's finest)."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"image token counts must be squares (tokens per side ** 2), got {tokens}")
    return side * (8 if kind == "xcit" else 4)


def build(family: Family, length: int, tiny: bool) -> tuple[nn.Module, torch.Tensor]:
    """The model of ``family`` for sequences of ``length`` and one input sample."""
    torch.manual_seed(0)
    if family.modality == "images":
        px = image_side(family.kind, length)
        small = dict(depth=2, embed_dim=32, num_heads=2, num_classes=10) if tiny else {}
        if family.kind in ("bixt", "perceiver"):
            extra = {"cross_attention": "iterative"} if family.kind == "perceiver" else {}
            model = build_model("bixt_ti_l64_p16s4", {"img_size": px, **small, **extra,
                                                      **({"num_latents": 8} if tiny else {})})
        elif family.kind == "full":
            model = build_model("vit_tiny_patch16_224", {"img_size": px, "patch_size": 4, **small})
        else:
            model = build_model("xcit_tiny_12_p8_224", {"img_size": px, **small,
                                                        **({"cls_attn_layers": 1} if tiny else {})})
        return model, torch.randn(1, 3, px, px)
    if family.modality == "points":
        from bixt.core import BiXTEncoder
        from bixt.heads.classification import ClassificationHead
        from bixt.models.point import PointClassifier
        from bixt.tokenizers.point import PointGroupTokenizer

        dim, depth, heads, latents = (32, 2, 2, 8) if tiny else (192, 8, 6, 64)
        tokenizer = PointGroupTokenizer(dim=dim, num_groups=length // 8, group_size=16, hidden=16 if tiny else 64)
        if family.kind == "full":
            model = TokenTransformer(tokenizer, dim=dim, depth=depth, num_heads=heads // 2, num_classes=40)
        else:
            cross = "iterative" if family.kind == "perceiver" else "bidirectional"
            encoder = BiXTEncoder(dim=dim, depth=depth, num_latents=latents, num_heads=heads, cross_attention=cross)
            model = PointClassifier(tokenizer, encoder, ClassificationHead(dim=dim, num_classes=40))
        return model, torch.randn(1, length, 3)
    from bixt.baselines.transformer import TransformerDocumentEncoder
    from bixt.heads.classification import ClassificationHead
    from bixt.models.text import BiXTSequenceEncoder, SequenceClassifier

    dim, depth, heads, latents = (32, 2, 2, 8) if tiny else (128, 4, 4, 32)
    if family.kind == "full":
        encoder = TransformerDocumentEncoder(dim=dim, depth=depth, num_heads=heads, max_len=length)
    else:
        cross = "iterative" if family.kind == "perceiver" else "bidirectional"
        encoder = BiXTSequenceEncoder(dim=dim, depth=depth, num_latents=latents, num_heads=heads, max_len=length,
                                      cross_attention=cross)
    model = SequenceClassifier(encoder, ClassificationHead(dim=dim, num_classes=10))
    return model, torch.randint(1, 257, (1, length))


# --- the worker ---------------------------------------------------------------------------------------
def _calls(model: nn.Module, sample: torch.Tensor) -> dict[str, Callable[[], Any]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def forward():
        model.eval()
        with torch.no_grad():
            return model(sample)

    def train():
        model.train()
        loss = F.cross_entropy(model(sample), torch.zeros(1, dtype=torch.long))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # at the end: the next call's baseline holds no gradients
        return loss.detach()

    return {"forward": forward, "train": train}


def _limit_data_segment(budget_gb: float) -> None:
    """Allocations past the current data segment + the budget fail (a catchable error) instead of
    growing until the OOM killer ends the process."""
    limit = read_status_kb("VmData") * 1024 + int(budget_gb * 2**30)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _heap_allocator() -> None:
    """Switch to the heap-only allocator the tasks run with (``bixt.runtime``) for the timed calls."""
    from bixt.runtime import tune_cpu_allocator

    for key in MEMORY_ENV:
        os.environ.pop(key, None)
    tune_cpu_allocator()


def _worker(spec: dict[str, Any]) -> None:
    """One (model, length): for each mode, a warm-up call, then one call whose peak resident memory
    over the resident set before it is the memory result (VmHWM reset through /proc/self/clear_refs;
    glibc unmaps freed tensors, see ``MEMORY_ENV``); then, with the tasks' heap allocator, a warm-up
    call and ``repeats`` timed calls (fewer when a call takes over the time budget). One JSON line
    per mode on stdout."""
    set_threads(spec["threads"])
    family = Family(**spec["family"])
    model, sample = build(family, spec["length"], spec["tiny"])
    calls = _calls(model, sample)
    _limit_data_segment(spec["budget_gb"])
    rows: dict[str, dict[str, Any]] = {}
    for mode in spec["modes"]:
        try:
            calls[mode]()
            gc.collect()
            exact = reset_peak_rss()
            base_kb = read_status_kb("VmRSS")
            start = time.perf_counter()
            calls[mode]()
            elapsed = time.perf_counter() - start
            peak_kb = read_status_kb("VmHWM")
            rows[mode] = {"status": "ok" if exact else "ok (peak since process start)", "memory_call_s": elapsed,
                          "peak_mb": max(peak_kb - base_kb, 0) / 1024, "baseline_mb": base_kb / 1024}
        except (RuntimeError, MemoryError) as err:  # the RLIMIT_DATA backstop, or a kernel's refusal
            text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            rows[mode] = {"status": f"failed: {text}"}
        gc.collect()
    _heap_allocator()
    for mode, row in rows.items():
        if not row["status"].startswith("ok"):
            print(json.dumps({"mode": mode, **row}), flush=True)
            continue
        samples = []
        if row["memory_call_s"] <= spec["max_call_s"]:  # else its one call is the sample
            calls[mode]()
            while len(samples) < spec["repeats"] and sum(samples) < spec["max_call_s"] * spec["repeats"]:
                start = time.perf_counter()
                calls[mode]()
                samples.append(time.perf_counter() - start)
        samples = samples or [row["memory_call_s"]]
        row.update(samples_s=samples, median_s=statistics.median(samples))
        print(json.dumps({"mode": mode, **row}), flush=True)


# --- estimates and skipping -----------------------------------------------------------------------------
def estimate(history: Sequence[tuple[int, float]], length: int) -> Optional[float]:
    """``value`` at ``length`` extrapolated from measured ``(length, value)`` pairs (ascending):
    the log-log slope of the last two (at least 1: fixed costs flatten small lengths), quadratic from
    a single pair, None from none."""
    points = [(n, v) for n, v in history if v and v > 0]
    if not points:
        return None
    n1, v1 = points[-1]
    slope = 2.0
    if len(points) >= 2:
        n0, v0 = points[-2]
        slope = max(1.0, math.log(v1 / v0) / math.log(n1 / n0))
    return v1 * (length / n1) ** slope


def skip_reason(plan: Plan, memory: Sequence[tuple[int, float]], times: Sequence[tuple[int, float]],
                length: int) -> Optional[str]:
    """Why ``length`` is not measured (None: it is), from this (model, mode)'s measured lengths."""
    mem_mb, call_s = estimate(memory, length), estimate(times, length)
    if mem_mb is not None and mem_mb > plan.budget_gb * 1024:
        return f"skipped: estimated {mem_mb / 1024:,.1f} GB > budget {plan.budget_gb:g} GB"
    if call_s is not None and call_s > plan.max_call_s:
        return f"skipped: estimated {call_s:,.0f} s per call > budget {plan.max_call_s:g} s"
    return None


def fitted_slope(points: Sequence[tuple[int, float]], last: int = 3) -> Optional[float]:
    """Least-squares log-log slope over the ``last`` longest measured lengths."""
    pts = [(math.log(n), math.log(v)) for n, v in points if v and v > 0][-last:]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(p[0] for p in pts), statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


# --- orchestration --------------------------------------------------------------------------------------
def run_point(plan: Plan, family: Family, length: int, modes: Sequence[str], threads: int) -> dict[str, dict]:
    spec = {"family": asdict(family), "length": length, "modes": list(modes), "tiny": plan.tiny,
            "budget_gb": plan.budget_gb, "max_call_s": plan.max_call_s, "repeats": plan.repeats, "threads": threads}
    # generous: warm-up + memory call + warm-up + repeats per mode, plus start-up
    timeout = 120 + len(modes) * (3 + plan.repeats) * plan.max_call_s * 1.5
    env = dict(os.environ, **MEMORY_ENV)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        out, code, err = proc.stdout, proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        out, code, err = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or ""), None, ""
    rows = {}
    for line in out.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row.pop("mode")] = row
    for mode in modes:
        if mode not in rows:
            if code is None:
                why = f"too slow: worker stopped after {timeout:.0f} s"
            elif code in (-9, 137):
                why = "OOM (worker killed)"
            else:
                why = "failed: " + ((err.strip().splitlines() or ["no output"])[-1][:160])
            rows[mode] = {"status": why}
    return rows


def run(plan: Plan, log: Callable[[str], None]) -> list[dict[str, Any]]:
    threads = set_threads(plan.threads)
    started = time.monotonic()
    rows = []
    for modality, lengths in plan.lengths.items():
        for family in (f for f in FAMILIES if f.modality == modality):
            history = {mode: {"memory": [], "time": []} for mode in MODES}
            stopped: dict[str, str] = {}  # mode -> the length it stopped at, and why
            for length in lengths:
                todo, results = [], {}
                for mode in MODES:
                    hist = history[mode]
                    if mode in stopped:
                        reason = f"skipped: longer than {stopped[mode]}"
                    elif time.monotonic() - started > plan.total_budget_s:
                        reason = f"skipped: run time budget of {plan.total_budget_s:g} s spent"
                    else:
                        reason = skip_reason(plan, hist["memory"], hist["time"], length)
                    if reason is None:
                        todo.append(mode)
                    else:
                        results[mode] = {"status": reason, "estimated_peak_mb": estimate(hist["memory"], length),
                                         "estimated_s": estimate(hist["time"], length)}
                if todo:
                    results.update(run_point(plan, family, length, todo, threads))
                for mode in MODES:
                    res = results[mode]
                    if res["status"].startswith("ok"):
                        history[mode]["memory"].append((length, res["peak_mb"]))
                        history[mode]["time"].append((length, res["median_s"]))
                    elif mode not in stopped:
                        stopped[mode] = f"{length} ({res['status'].split(':')[0]})"
                    rows.append({"modality": modality, "family": family.name, "kind": family.kind, "length": length,
                                 "mode": mode, **res})
                    log(f"{modality:6} {family.name:22} {length:>7} {mode:7} " + (
                        f"{res['median_s']:8.3f} s {res['peak_mb']:9.1f} MB" if res["status"].startswith("ok")
                        else res["status"]))
    return rows


def summarise(rows: list[dict[str, Any]], plan: Plan) -> list[dict[str, Any]]:
    """Per (modality, model, mode): the fitted slopes and the longest length measured within the budgets."""
    out = []
    keys = sorted({(r["modality"], r["family"], r["mode"]) for r in rows}, key=lambda k: (MODALITIES.index(k[0]), k[1], k[2]))
    for modality, family, mode in keys:
        mine = sorted((r for r in rows if (r["modality"], r["family"], r["mode"]) == (modality, family, mode)),
                      key=lambda r: r["length"])
        ok = [r for r in mine if r["status"].startswith("ok")]
        first_out = next((r for r in mine if not r["status"].startswith("ok")), None)
        out.append({"modality": modality, "family": family, "mode": mode,
                    "longest_fitting": ok[-1]["length"] if ok else None,
                    "first_not_fitting": first_out["length"] if first_out else None,
                    "why": first_out["status"] if first_out else None,
                    "time_slope": fitted_slope([(r["length"], r["median_s"]) for r in ok]),
                    "memory_slope": fitted_slope([(r["length"], r["peak_mb"]) for r in ok])})
    return out


def report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    plan = results["plan"]
    head = (f"# Long sequences ({plan['mode']}): {machine['cpu_model']} [{isa_label(machine)}], {machine['threads']} "
            f"threads, torch {machine['torch']}; budgets {plan['budget_gb']:g} GB, {plan['max_call_s']:g} s per call; "
            f"batch 1, fp32, eager")
    parts = [head]
    for modality in MODALITIES:
        rows = [r for r in results["rows"] if r["modality"] == modality]
        if not rows:
            continue
        table = [(r["family"], r["length"], r["mode"], r.get("median_s"), r.get("peak_mb"), r["status"])
                 for r in rows]
        unit = {"images": "tokens", "points": "points", "bytes": "bytes"}[modality]
        parts.append(f"## {modality} — {machine['cpu_model']} [{isa_label(machine)}]\n"
                     + markdown_table(["model", unit, "call", "s / call", "peak MB", "status"], table))
    summary = [(s["modality"], s["family"], s["mode"], s["longest_fitting"], s["first_not_fitting"],
                s["time_slope"], s["memory_slope"]) for s in results["summary"]]
    parts.append("## Longest length within the budgets, log-log slopes over the 3 longest measured\n" + markdown_table(
        ["modality", "model", "call", "longest measured", "first skipped", "time slope", "memory slope"], summary))
    others = machine.get("other_processes_cpus")
    if others is not None and others >= 0.1:
        parts.append(f"WARNING: other processes kept {others:.2f} CPUs busy during the run: times are unreliable "
                     "(memory is not load-sensitive)")
    parts.append(f"wall time {results['wall_s']:.0f} s")
    return "\n\n".join(parts)


def write_plots(results: dict[str, Any], stem: Path) -> list[Path]:
    """``<stem>_time.png`` and ``<stem>_memory.png``: one log-log panel per modality, forward solid,
    train step dashed, fitted slope in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    modalities = [m for m in MODALITIES if any(r["modality"] == m for r in rows)]
    written = []
    for metric, field_name, ylabel in (("time", "median_s", "seconds per call"), ("memory", "peak_mb", "peak MB")):
        fig, axes = plt.subplots(1, len(modalities), figsize=(5.5 * len(modalities), 4.5), dpi=110, squeeze=False)
        for ax, modality in zip(axes[0], modalities):
            mine = [r for r in rows if r["modality"] == modality]
            for i, family in enumerate(dict.fromkeys(r["family"] for r in mine)):
                for mode, style in (("forward", "-"), ("train", "--")):
                    pts = sorted((r["length"], r[field_name]) for r in mine
                                 if r["family"] == family and r["mode"] == mode and r.get(field_name))
                    if not pts:
                        continue
                    slope = fitted_slope(pts)
                    label = f"{family} {mode}" + (f" (slope {slope:.2f})" if slope is not None else "")
                    ax.plot(*zip(*pts), style, marker="o", color=f"C{i}", label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel({"images": "tokens", "points": "points", "bytes": "bytes"}[modality])
            ax.set_ylabel(ylabel)
            ax.set_title(modality)
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=7)
        machine = results["machine"]
        fig.suptitle(f"{machine['cpu_model']} [{isa_label(machine)}], {machine['threads']} threads, batch 1, fp32, "
                     f"{results['plan']['mode']} run", fontsize=9)
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}_{metric}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--quick", action="store_true", help="fewer lengths, one timed call, 10 s per call (< 10 min)")
    p.add_argument("--smoke", action="store_true", help="tiny models, two lengths each (seconds; for tests)")
    p.add_argument("--only", default=",".join(MODALITIES), help=f"comma-separated subset of {','.join(MODALITIES)}")
    p.add_argument("--budget-gb", type=float, help="memory budget per call (default 16)")
    p.add_argument("--max-call-s", type=float, help="time budget per forward / train step (default 120; quick 10)")
    p.add_argument("--repeats", type=int, help="timed calls per point (default 3; quick 1)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: all available CPUs)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output directory")
    args = p.parse_args(argv)
    args.only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    bad = [m for m in args.only if m not in MODALITIES]
    if bad or not args.only:
        p.error(f"--only takes a comma-separated subset of {', '.join(MODALITIES)}; got {','.join(args.only)!r}")
    if args.budget_gb is not None and args.budget_gb <= 0:
        p.error(f"--budget-gb must be positive, got {args.budget_gb}")
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = make_plan(args)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    threads_before = torch.get_num_threads()
    snapshot = cpu_snapshot()
    try:
        rows = run(plan, log)
        machine = machine_info()
    finally:
        torch.set_num_threads(threads_before)
    machine["other_processes_cpus"] = other_load(snapshot, cpu_snapshot())
    results = {"plan": {**asdict(plan), "lengths": {k: list(v) for k, v in plan.lengths.items()}},
               "machine": machine, "cpu_kind": isa_label(machine), "rows": rows, "summary": summarise(rows, plan),
               "wall_s": time.perf_counter() - started,
               "method": {"memory": "fresh worker process per (model, length), glibc mmap threshold 64 KiB so RSS "
                                    "follows the live tensors; peak RSS (VmHWM, reset via /proc/self/clear_refs) "
                                    "minus RSS before the call, after a warm-up call of the same kind",
                          "time": "same worker, heap-only allocator (bixt.runtime), one warm-up call, median of "
                                  "the timed calls",
                          "train": "forward, cross-entropy, backward, AdamW step, zero_grad(set_to_none)",
                          "skip": "estimate from the log-log slope of the last two measured lengths (>= 1; "
                                  "quadratic from one); RLIMIT_DATA at the budget as a backstop"}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("long_sequences" if plan.mode == "full" else f"long_sequences_{plan.mode}")
    text = report(results)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2))
    stem.with_suffix(".md").write_text(text + "\n")
    plots = write_plots(results, stem)
    print(text)
    print(f"\nwrote {stem.with_suffix('.json')}, {stem.with_suffix('.md')}" + "".join(f", {p}" for p in plots))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(json.loads(sys.argv[2]))
    else:
        main()
