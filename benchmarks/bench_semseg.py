"""Dense forward at 512x512 (the ADE20K crop): BiXT-Ti d13 token maps and linear segmenter vs ViT-Ti and XCiT-Ti.

    python benchmarks/bench_semseg.py                      # CPU (or --device cuda), batch 4, 5 rounds
    python benchmarks/bench_semseg.py --quick              # 2 rounds, one memory worker for all models
    python benchmarks/bench_semseg.py --device cuda --dtype bf16 --batch 16
    python benchmarks/bench_semseg.py --smoke --size 64 --rounds 1 --quick   # toy models, seconds

Models, each at ``--size`` px (eval mode, no grad):

- ``bixt_ti_l64_d13_p16`` / ``bixt_ti_l64_d13_p16s8`` as :class:`bixt.models.segmentation.BiXTSegmenter`
  (150 classes, layer 12 pruned): the token maps alone (``token_maps``) and the whole linear
  segmenter (logits upsampled to the input size);
- timm's ``vit_tiny_patch16_224`` built at ``img_size=--size`` (1024 tokens at 512, as BiXT p16);
- timm's ``xcit_tiny_12_p16_384`` / ``xcit_tiny_12_p8_384`` at ``--size`` (patch 16 / 8: the token
  counts of p16 / p16s8);

the baselines' last token map through their ``forward_intermediates(..., intermediates_only=True)``.
All configurations are timed in one run, once per round in turn (``common.interleaved_timing``),
so background load hits them alike; the table gives images/s at the median and the fastest round.
Peak memory per image: on CUDA ``torch.cuda.max_memory_allocated`` over one forward minus what was
allocated before it; on CPU the peak resident-set growth of one forward in a fresh worker process
(``common.run_memory_worker``: the method of ``common.measure_peak_memory``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bixt.runtime import tune_cpu_allocator  # noqa: E402
from common import (  # noqa: E402
    interleaved_timing, isa_label, machine_info, markdown_table, peak_rss_of, run_memory_worker,
    set_threads,
)
from perf import skip_reason  # noqa: E402

NUM_CLASSES = 150  # ADE20K
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Config:
    """One row: ``family`` builds the model, ``output`` says what the timed call returns."""

    key: str
    family: str  # a key of FAMILIES
    output: str  # "token maps" | "logits"
    token_stride: int


CONFIGS = (
    Config("BiXT-Ti d13 p16", "bixt_ti_l64_d13_p16", "token maps", 16),
    Config("BiXT-Ti d13 p16 + linear", "bixt_ti_l64_d13_p16", "logits", 16),
    Config("BiXT-Ti d13 p16s8", "bixt_ti_l64_d13_p16s8", "token maps", 8),
    Config("BiXT-Ti d13 p16s8 + linear", "bixt_ti_l64_d13_p16s8", "logits", 8),
    Config("ViT-Ti p16", "vit_tiny_patch16_224", "token maps", 16),
    Config("XCiT-Ti p16", "xcit_tiny_12_p16_384", "token maps", 16),
    Config("XCiT-Ti p8", "xcit_tiny_12_p8_384", "token maps", 8),
)
BY_KEY = {c.key: c for c in CONFIGS}


# --smoke: every family at toy width and depth (tests run the whole script in seconds)
SMOKE_KWARGS = {
    "bixt": dict(embed_dim=32, depth=3, num_heads=2, num_latents=8),
    "vit": dict(embed_dim=32, depth=2, num_heads=2),
    "xcit": dict(embed_dim=32, depth=2, num_heads=2, cls_attn_layers=1),
}


def build(family: str, size: int, smoke: bool = False) -> torch.nn.Module:
    """The model of one family for ``size`` px images, in eval mode."""
    import timm

    small = SMOKE_KWARGS[family.split("_")[0]] if smoke else {}
    if family.startswith("bixt_"):
        from bixt.models.segmentation import BiXTSegmenter

        return BiXTSegmenter(backbone=family, num_classes=NUM_CLASSES, head="linear", backbone_kwargs=small).eval()
    return timm.create_model(family, img_size=size, num_classes=0, **small).eval()


def forward_call(config: Config, model: torch.nn.Module) -> Callable[[torch.Tensor], Any]:
    """The timed call: token maps or segmentation logits for a batch of images."""
    if config.family.startswith("bixt_"):
        return model if config.output == "logits" else model.token_maps
    return lambda images: model.forward_intermediates(images, indices=1, intermediates_only=True)


def _autocast(device: torch.device, dtype_name: str):
    dtype = DTYPES[dtype_name]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- peak memory ----------------------------------------------------------------------------------
def cuda_peak_mb_per_image(call: Callable[[], Any], device: torch.device, batch: int) -> dict[str, Any]:
    """Peak allocation of one forward above what was allocated before it, per image."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del out
    return {"status": "ok", "peak_mb_per_image": (peak - before) / 2**20 / batch}


def _memory_worker(keys: list[str], size: int, batch: int, dtype_name: str, smoke: bool = False) -> None:
    """Fresh-process CPU measurement of the configurations ``keys``; one JSON line with all results."""
    set_threads(int(os.environ.get("BIXT_BENCH_THREADS", "0")) or None)
    device, results = torch.device("cpu"), {}
    images = torch.randn(batch, 3, size, size)
    for key in keys:
        config = BY_KEY[key]
        model = build(config.family, size, smoke)
        call = forward_call(config, model)
        with _autocast(device, dtype_name):
            result = peak_rss_of(lambda f=call: f(images))  # its warm-up keeps one-time set-up out
        del model, call
        gc.collect()
        results[key] = {"status": result["status"], "peak_mb_per_image": result["peak_extra_mb"] / batch}
    print(json.dumps({"results": results}), flush=True)


def cpu_memory(keys: list[str], size: int, batch: int, dtype_name: str, threads: int, one_worker: bool,
               log: Callable[[str], None], smoke: bool = False) -> dict[str, dict[str, Any]]:
    """Peak RSS growth per image; one worker per configuration (or one for all with ``one_worker``)."""
    groups = [keys] if one_worker else [[k] for k in keys]
    results: dict[str, dict[str, Any]] = {}
    for group in groups:
        row = run_memory_worker(__file__, [",".join(group), str(size), str(batch), dtype_name, str(int(smoke))],
                                threads)
        for key in group:
            results[key] = row.get("results", {}).get(key) or {"status": row.get("status", "failed: no result")}
            log(f"  memory {key}: {results[key]}")
    return results


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch", type=int, default=4, help="images per forward")
    p.add_argument("--size", type=int, default=512, help="image side in px (divisible by 16)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="bf16: autocast")
    p.add_argument("--quick", action="store_true", help="2 rounds, CPU memory in one worker for all models")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--smoke", action="store_true", help="toy widths and depths for every model (tests)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: all available)")
    p.add_argument("--default-allocator", action="store_true",
                   help="leave glibc malloc as it is (default: bixt.runtime.tune_cpu_allocator(), as the tasks do)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.size % 16:
        p.error(f"--size must be divisible by 16 (the coarsest token stride), got {args.size}")
    if args.rounds is None:
        args.rounds = 2 if args.quick else 5
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    threads = set_threads(args.threads)
    if device.type == "cpu" and not args.default_allocator:
        tune_cpu_allocator()  # as the task entry points do (bixt.runtime)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    machine = machine_info()
    where = (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})" if device.type == "cuda"
             else f"{machine['cpu_model']} [{isa_label(machine)}], {threads} threads")
    header = (f"# bixt semseg dense forward: {where}, batch {args.batch} x {args.size}x{args.size}, {args.dtype}"
              + (" (smoke: toy models)" if args.smoke else ""))
    print(header)
    skipped = skip_reason(args.dtype) if device.type == "cpu" else None

    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    models: dict[str, torch.nn.Module] = {}
    calls: dict[str, Callable[[], Any]] = {}
    params: dict[str, float] = {}
    for config in CONFIGS:
        if config.family not in models:
            models[config.family] = build(config.family, args.size, args.smoke).to(device)
        model = models[config.family]
        fn = forward_call(config, model)
        counted = model.backbone if config.output == "token maps" and hasattr(model, "backbone") else model
        params[config.key] = sum(p.numel() for p in counted.parameters()) / 1e6

        def call(fn=fn):
            with torch.no_grad(), _autocast(device, args.dtype):
                out = fn(images)
            _sync(device)
            return out
        calls[config.key] = call

    timings: dict[str, Any] = {}
    memory: dict[str, dict[str, Any]] = {}
    if skipped:
        log(skipped)
    else:
        timings = interleaved_timing(calls, repeats=args.rounds, warmup=args.warmup, log=log)
        if not args.no_memory:
            if device.type == "cuda":
                memory = {k: cuda_peak_mb_per_image(c, device, args.batch) for k, c in calls.items()}
            else:
                del models, calls
                gc.collect()
                memory = cpu_memory([c.key for c in CONFIGS], args.size, args.batch, args.dtype, threads,
                                    one_worker=args.quick, log=log, smoke=args.smoke)

    rows, results = [], {}
    for config in CONFIGS:
        t = timings.get(config.key)
        mem = memory.get(config.key, {})
        median = args.batch / t.median if t is not None and t.median else None
        best = args.batch / min(t.samples) if t is not None and t.samples else None
        status = skipped or (t.status if t is not None else "not run")
        results[config.key] = {"family": config.family, "output": config.output, "params_m": params[config.key],
                               "tokens": (args.size // config.token_stride) ** 2, "img_per_s_median": median,
                               "img_per_s_best": best, "timing": t.as_dict() if t is not None else None,
                               "memory": mem, "status": status}
        rows.append([config.key, config.output, results[config.key]["tokens"], params[config.key], median, best,
                     mem.get("peak_mb_per_image"), status if status != "ok" else ""])
    table = markdown_table(["model", "output", "tokens", "params (M)", "img/s median", "img/s best",
                            "peak MB/img", "note"], rows)
    print(table)
    report = {"header": header, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": machine, "models": results, "table": table,
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=str))
        log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1")
    else:
        main()
