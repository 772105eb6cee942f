"""LRA byte-level retrieval: BiXT vs the full-attention Transformer baseline, forward pass on CPU.

    python benchmarks/bench_lra.py                  # batch 32 pairs, 4000 bytes per document
    python benchmarks/bench_lra.py --quick          # batch 4, 1 warm-up + 2 rounds
    python benchmarks/bench_lra.py --batch 8 --repeats 5 --out /tmp/lra

Both models come from the task's Hydra configs (``bixt/configs/lra_retrieval/model/{bixt,transformer}.yaml``:
dim 128, 4 layers, 4 heads, MLP 512; BiXT with 32 latents), built exactly as
``python -m bixt.tasks.lra_retrieval model=...`` builds them, and read pairs of random 4000-byte
documents (every byte real, as for AAN documents at the LRA cut). In one run:

- throughput: forward pairs/s (eval mode, no grad, fp32), each model timed once per round and
  reported as the median over rounds, so background load hits both alike (``common.interleaved_timing``);
- peak memory: extra resident memory of one forward pass, per pair, each model in a fresh worker
  process (method of ``common.measure_peak_memory``: glibc mmap threshold at 64 KiB so RSS follows
  the live tensors, peak-RSS counter reset before the pass, peak minus the RSS before it);
- model FLOPs per pair (``bixt.flops.count_call_flops``: matrix products and attention).

Prints a markdown table and the BiXT / Transformer ratios, writes ``lra_retrieval.json`` to ``--out``.
The paper reports 7.6x the Transformer's samples/s at batch 32 on a GPU (5703 vs 751).
"""
from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bixt.flops import count_call_flops  # noqa: E402
from bixt.runtime import tune_cpu_allocator  # noqa: E402
from common import (  # noqa: E402
    interleaved_timing, machine_info, peak_rss_of, run_memory_worker, sequence_benchmark_parser,
    sequence_benchmark_results, set_threads,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "bixt" / "configs" / "lra_retrieval"
MODELS = ("bixt", "transformer")


def build_retrieval_model(name: str, max_len: int) -> torch.nn.Module:
    """The task's model ``model=<name>`` for documents of ``max_len`` bytes (Hydra compose)."""
    from hydra import compose, initialize_config_dir

    from bixt.tasks.kit import build_model

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", overrides=[f"model={name}", "data=aan", "data.root=unused", f"data.max_len={max_len}"])
    return build_model(cfg.model).eval()


def make_pairs(batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random byte ids (1..256) for both documents of ``batch`` pairs, all tokens real."""
    gen = torch.Generator().manual_seed(seed)
    ids1 = torch.randint(1, 257, (batch, length), generator=gen)
    ids2 = torch.randint(1, 257, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.bool)
    return ids1, mask, ids2, mask


# --- peak memory worker -------------------------------------------------------------------------------
def _memory_worker(name: str, batch: int, length: int) -> None:
    set_threads(int(os.environ.get("BIXT_BENCH_THREADS", "0")) or None)
    model = build_retrieval_model(name, length)
    inputs = make_pairs(batch, length)
    result = peak_rss_of(lambda: model(*inputs), warmup=lambda: model(*make_pairs(1, length, seed=1)))
    print(json.dumps({**result, "peak_extra_mb_per_pair": result["peak_extra_mb"] / batch}), flush=True)


def measure_memory(name: str, batch: int, length: int, threads: int, timeout_s: float = 1200.0) -> dict[str, Any]:
    return run_memory_worker(__file__, [name, str(batch), str(length)], threads, timeout_s)


# --- main ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = sequence_benchmark_parser(__doc__, batch_help="pairs per forward pass (paper: 32)", length=4000,
                                       length_help="bytes per document (LRA: 4000)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = min(args.batch, 4), min(args.repeats, 2)
    threads = set_threads(args.threads)
    tune_cpu_allocator()  # as the task entry points do (bixt.runtime)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"batch {args.batch} pairs x {args.length} bytes, {threads} threads, {args.repeats} rounds")

    models = {name: build_retrieval_model(name, args.length) for name in MODELS}
    inputs = make_pairs(args.batch, args.length)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    flops = {name: count_call_flops(lambda m=m: m(*make_pairs(1, args.length))) for name, m in models.items()}

    def forward(model: torch.nn.Module):
        def call():
            with torch.no_grad():
                model(*inputs)
        return call

    timings = interleaved_timing({n: forward(m) for n, m in models.items()}, repeats=args.repeats,
                                 warmup=args.warmup, log=log)
    del models
    gc.collect()
    memory = {}
    if not args.no_memory:
        for name in MODELS:
            memory[name] = measure_memory(name, args.batch, args.length, threads)
            log(f"  memory {name}: {memory[name].get('peak_extra_mb', float('nan')):.0f} MB ({memory[name]['status']})")

    results, table, summary = sequence_benchmark_results(MODELS, args.batch, "pair", params, flops, timings, memory,
                                                         flops_ratio="transformer_over_bixt")
    print(table)
    print()
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    print(f"BiXT / Transformer forward pairs/s: {fmt(summary['throughput_ratio_bixt_over_transformer'])} "
          f"(paper, GPU, batch 32: 7.6x)")
    print(f"Transformer / BiXT peak extra memory: {fmt(summary['memory_ratio_transformer_over_bixt'])}")
    print(f"Transformer / BiXT FLOPs: {fmt(summary['flops_ratio_transformer_over_bixt'])}")

    report = {"settings": {"batch": args.batch, "length": args.length, "repeats": args.repeats,
                           "warmup": args.warmup, "threads": threads, "dtype": "fp32", "mode": "eval, no grad"},
              "machine": machine_info(), "models": results, "summary": summary, "table": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lra_retrieval.json").write_text(json.dumps(report, indent=2))
    log(f"wrote {args.out / 'lra_retrieval.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
