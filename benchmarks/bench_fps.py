"""Farthest-point sampling throughput on CPU: 32 clouds x 2048 points -> 128 centres.

    python benchmarks/bench_fps.py [--batch 32] [--points 2048] [--centres 128] [--threads 2]

Prints milliseconds per call (median and fastest of the timed rounds) and clouds per second, for
plain FPS, FPS with a padding mask (half the clouds padded by 25 %), and the kNN grouping that
follows FPS in the tokeniser. The configurations are timed in interleaved rounds so that
background load on a shared machine hits them alike. No assertions.
"""
from __future__ import annotations

import argparse

import torch
from common import interleaved_timing, machine_info, set_threads

from bixt.tokenizers.point import farthest_point_sample, gather, knn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--centres", type=int, default=128)
    parser.add_argument("--neighbours", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    set_threads(args.threads)
    pos = torch.randn(args.batch, args.points, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(args.batch, args.points, dtype=torch.bool)
    mask[: args.batch // 2, args.points * 3 // 4:] = False
    centres = gather(pos, farthest_point_sample(pos, args.centres))

    configs = {
        "fps": lambda: farthest_point_sample(pos, args.centres),
        "fps (padding mask)": lambda: farthest_point_sample(pos, args.centres, mask),
        f"knn (k={args.neighbours})": lambda: knn(centres, pos, args.neighbours),
    }
    info = machine_info()
    print(f"{info['cpu_model']} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{args.batch} clouds x {args.points} points -> {args.centres} centres")
    results = interleaved_timing(configs, repeats=args.repeats, warmup=2)
    for name, res in results.items():
        if res.median is None:
            print(f"{name:<22} {res.status}")
            continue
        fastest = min(res.samples)
        print(f"{name:<22} {res.median * 1e3:8.2f} ms/call (fastest {fastest * 1e3:6.2f})  "
              f"{args.batch / res.median:8.0f} clouds/s")


if __name__ == "__main__":
    main()
