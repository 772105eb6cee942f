"""LRA ListOps: BiXT vs the full-attention Transformer baseline at 2,000 tokens, forward pass on CPU.

    python benchmarks/bench_listops.py                  # batch 32 sequences x 2000 tokens
    python benchmarks/bench_listops.py --quick          # batch 4, 2 rounds
    python benchmarks/bench_listops.py --batch 8 --repeats 5 --out /tmp/listops

Both models come from the task's Hydra configs (``bixt/configs/lra_listops/model/{bixt,transformer}.yaml``:
dim 128, 4 layers, 4 heads, MLP 512; BiXT with 32 latents), built exactly as
``python -m bixt.tasks.lra_listops experiment=listops model=...`` builds them, and read random
ListOps token ids, every token real (the LRA length bound). In one run:

- throughput: forward sequences/s (eval mode, no grad, fp32), each model timed once per round,
  medians over rounds, so background load hits both alike (``common.interleaved_timing``);
- peak memory: extra resident memory of one forward pass, each model in a fresh worker process
  (glibc mmap threshold at 64 KiB so RSS follows the live tensors, peak-RSS counter reset before
  the pass, peak minus the RSS before it; the method of ``common.measure_peak_memory``);
- model FLOPs per sequence (``bixt.flops.count_call_flops``).

Prints a markdown table and the BiXT / Transformer ratios, writes ``lra_listops.json`` to ``--out``.
The paper reports BiXT 39.42 % vs the Transformer's 39.10 % accuracy at 25 % fewer FLOPs.
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
    cpu_snapshot, interleaved_timing, machine_info, other_load, peak_rss_of, run_memory_worker,
    sequence_benchmark_parser, sequence_benchmark_results, set_threads,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "bixt" / "configs" / "lra_listops"
MODELS = ("bixt", "transformer")


def build_listops_model(name: str, max_len: int) -> torch.nn.Module:
    """The task's model ``model=<name>`` for sequences of ``max_len`` tokens (Hydra compose)."""
    from hydra import compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers the trainer schema the config composes)
    from bixt.data.listops import NUM_CLASSES, vocabulary
    from bixt.tasks.kit import build_model

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        cfg = compose("config", overrides=["experiment=listops", f"model={name}", "data.root=unused",
                                           f"data.max_len={max_len}"])
    return build_model(cfg.model, encoder={"vocab_size": vocabulary().vocab_size},
                       head={"num_classes": NUM_CLASSES}).eval()


def make_batch(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random ListOps ids (operators, ``]``, digits: 1..15), all tokens real."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 16, (batch, length), generator=gen)


def _memory_worker(name: str, batch: int, length: int) -> None:
    set_threads(int(os.environ.get("BIXT_BENCH_THREADS", "0")) or None)
    model = build_listops_model(name, length)
    inputs = make_batch(batch, length)
    result = peak_rss_of(lambda: model(inputs))  # the warm-up: one-time kernel / allocator set-up at this shape
    print(json.dumps({**result, "peak_extra_mb_per_seq": result["peak_extra_mb"] / batch}), flush=True)


def measure_memory(name: str, batch: int, length: int, threads: int, timeout_s: float = 1200.0) -> dict[str, Any]:
    return run_memory_worker(__file__, [name, str(batch), str(length)], threads, timeout_s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = sequence_benchmark_parser(__doc__, batch_help="sequences per forward pass", length=2000,
                                       length_help="tokens per sequence (LRA ListOps: 2000)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = min(args.batch, 4), min(args.repeats, 2)
    threads = set_threads(args.threads)
    tune_cpu_allocator()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"batch {args.batch} sequences x {args.length} tokens, {threads} threads, {args.repeats} rounds")

    start_load = cpu_snapshot()
    models = {name: build_listops_model(name, args.length) for name in MODELS}
    inputs = make_batch(args.batch, args.length)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    flops = {name: count_call_flops(lambda m=m: m(make_batch(1, args.length))) for name, m in models.items()}

    def forward(model: torch.nn.Module):
        def call():
            with torch.no_grad():
                model(inputs)
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
    load = other_load(start_load, cpu_snapshot())

    results, table, summary = sequence_benchmark_results(MODELS, args.batch, "seq", params, flops, timings, memory,
                                                         flops_ratio="bixt_over_transformer")
    summary["other_load_cpus"] = load
    print(table)
    print()
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}x"  # noqa: E731
    print(f"BiXT / Transformer forward seqs/s at {args.length} tokens: {fmt(summary['throughput_ratio_bixt_over_transformer'])}")
    print(f"Transformer / BiXT peak extra memory: {fmt(summary['memory_ratio_transformer_over_bixt'])}")
    print(f"BiXT / Transformer FLOPs: {fmt(summary['flops_ratio_bixt_over_transformer'])} "
          "(paper, its LRA models: 0.75x)")
    if load is not None and load > 0.2:
        print(f"note: other processes used {load:.2f} CPUs during the run; ratios are within one run")

    report = {"settings": {"batch": args.batch, "length": args.length, "repeats": args.repeats, "warmup": args.warmup,
                           "threads": threads, "dtype": "fp32", "mode": "eval, no grad"},
              "machine": machine_info(), "models": results, "summary": summary, "table": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lra_listops.json").write_text(json.dumps(report, indent=2))
    log(f"wrote {args.out / 'lra_listops.json'}")
    return report


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
