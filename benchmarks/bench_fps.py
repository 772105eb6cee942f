"""Farthest-point sampling throughput on CPU: 32 clouds x 2048 points -> 128 centres.

    python benchmarks/bench_fps.py [--batch 32] [--points 2048] [--centres 128] [--threads 2]

Prints milliseconds per call (median over repeats) and clouds per second; also the kNN grouping
that follows FPS in the tokeniser (32 neighbours per centre), for context.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bixt.tokenizers.point import farthest_point_sample, gather, knn


def bench(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--centres", type=int, default=128)
    parser.add_argument("--neighbours", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pos = torch.randn(args.batch, args.points, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(args.batch, args.points, dtype=torch.bool)
    mask[: args.batch // 2, args.points * 3 // 4:] = False  # half the clouds padded by 25 %

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.batch} clouds x {args.points} points -> {args.centres} centres")
    for label, m in (("fps", None), ("fps (padding mask)", mask)):
        sec = bench(lambda: farthest_point_sample(pos, args.centres, m), args.repeats)
        print(f"{label:<22} {sec * 1e3:8.2f} ms/call  {args.batch / sec:9.0f} clouds/s")
    centres = gather(pos, farthest_point_sample(pos, args.centres))
    sec = bench(lambda: knn(centres, pos, args.neighbours), args.repeats)
    print(f"{f'knn (k={args.neighbours})':<22} {sec * 1e3:8.2f} ms/call  {args.batch / sec:9.0f} clouds/s")


if __name__ == "__main__":
    main()
