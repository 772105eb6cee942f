"""One prepared CUDA check, for the rare session that has a GPU (run it in one call, < 5 min):

    python benchmarks/cuda_check.py [--out DIR] [--batch 128] [--budget-s 240]

1. the suite's CUDA tests (`pytest -m cuda`);
2. forward (no grad) and train step (forward, cross-entropy, backward, fused AdamW) images/s of
   ``bixt_ti_l64_p16`` next to timm's ViT-Ti and XCiT-T12 at batch 128, 224 px: fp32, bf16
   autocast, and bf16 autocast under ``torch.compile``;
3. peak memory per image over the token sweep (196 / 784 / 3136 / 12544 tokens), bf16 forward;
4. a two-process ``torchrun`` training step of the ImageNet task (NCCL on two GPUs; gloo on the
   CPU where the machine has one GPU).

Prints one markdown table and writes ``cuda_check.json`` to ``--out``. Timings use CUDA events
after warm-up; configurations still waiting when ``--budget-s`` has passed are reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bixt  # noqa: E402,F401  (registers the BiXT models with timm)

MODELS = {"BiXT-Ti": "bixt_ti_l64_p16", "ViT-Ti": "vit_tiny_patch16_224", "XCiT-T12": "xcit_tiny_12_p16_224"}
SWEEP = {  # tokens -> (BiXT kwargs, ViT kwargs, image size)
    196: (dict(), dict(), 224),
    784: (dict(stride=8), dict(patch_size=8), 224),
    3136: (dict(stride=4), dict(patch_size=4), 224),
    12544: (dict(stride=4, img_size=448), dict(patch_size=4, img_size=448), 448),
}


def cuda_time(fn: Callable[[], Any], warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def build(name: str, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).cuda()


def throughput(batch: int, budget_end: float) -> list[dict[str, Any]]:
    rows = []
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    for family, name in MODELS.items():
        for precision in ("fp32", "bf16", "bf16 compiled"):
            for task in ("forward", "train"):
                row = dict(section="throughput", family=family, model=name, task=task, precision=precision,
                           batch=batch)
                rows.append(row)
                if time.monotonic() > budget_end:
                    row["status"] = "skipped (time budget)"
                    continue
                try:
                    model = build(name).train(task == "train")
                    run = model if "compiled" not in precision else torch.compile(model)
                    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision != "fp32")
                    if task == "forward":
                        def step():
                            with torch.no_grad(), amp:
                                return run(x)
                    else:
                        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

                        def step():
                            opt.zero_grad(set_to_none=True)
                            with amp:
                                loss = F.cross_entropy(run(x), y)
                            loss.backward()
                            opt.step()
                    seconds = cuda_time(step)
                    row.update(status="ok", images_per_s=batch / seconds)
                except Exception as err:  # report and go on: one failure must not hide the rest
                    row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
                finally:
                    torch.cuda.empty_cache()
    return rows


def memory_sweep(batch: int, budget_end: float) -> list[dict[str, Any]]:
    rows = []
    for tokens, (bixt_kwargs, vit_kwargs, size) in SWEEP.items():
        for family, name, kwargs in (("BiXT-Ti", "bixt_ti_l64_p16", bixt_kwargs),
                                     ("ViT-Ti", "vit_tiny_patch16_224", vit_kwargs)):
            row = dict(section="memory", family=family, model=name, tokens=tokens, batch=batch, precision="bf16")
            rows.append(row)
            if time.monotonic() > budget_end:
                row["status"] = "skipped (time budget)"
                continue
            try:
                model = build(name, **kwargs).eval()
                x = torch.randn(batch, 3, size, size, device="cuda")
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    model(x)
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
                row.update(status="ok", peak_mb_per_image=peak / 2**20 / batch,
                           images_per_s=batch / cuda_time(lambda: model(x), warmup=1, iters=3))
            except Exception as err:
                row["status"] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
            finally:
                torch.cuda.empty_cache()
    return rows


def run_command(cmd: list[str], timeout: float, env: dict | None = None) -> dict[str, Any]:
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        return dict(rc=proc.returncode, seconds=time.monotonic() - start, tail=(proc.stdout + proc.stderr)[-1500:])
    except subprocess.TimeoutExpired:
        return dict(rc=124, seconds=timeout, tail="timed out")


def cuda_tests(timeout: float) -> dict[str, Any]:
    out = run_command([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py"], timeout)
    summary = [line for line in out["tail"].splitlines() if " passed" in line or " failed" in line]
    return dict(section="tests", status="ok" if out["rc"] == 0 else f"rc {out['rc']}",
                summary=summary[-1] if summary else out["tail"][-300:], seconds=out["seconds"])


def torchrun_step(timeout: float, run_dir: Path) -> dict[str, Any]:
    gpus = torch.cuda.device_count()
    device = "cuda" if gpus >= 2 else "cpu"  # NCCL needs one GPU per process
    tiny = ["model.encoder.depth=2", "model.encoder.dim=32", "model.encoder.num_heads=2",
            "model.encoder.num_latents=8", "data.train_size=128", "data.val_size=64", "trainer.batch_size=8",
            "trainer.progress=false", "trainer.log_every=0", "trainer.max_steps=2", f"trainer.device={device}",
            f"trainer.run_dir={run_dir}", f"hydra.run.dir={run_dir / 'hydra'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "bixt.tasks.imagenet", *tiny]
    out = run_command(cmd, timeout)
    return dict(section="torchrun", status="ok" if out["rc"] == 0 else f"rc {out['rc']}", device=device,
                backend="nccl" if device == "cuda" else "gloo", seconds=out["seconds"],
                detail="" if out["rc"] == 0 else out["tail"][-600:])


def table(results: dict[str, Any]) -> str:
    lines = ["| section | model | what | precision | batch | img/s | peak MB/img | status |",
             "|---|---|---|---|---|---|---|---|"]
    t = results["tests"]
    lines.append(f"| tests | – | pytest -m cuda ({t['seconds']:.0f} s) | – | – | – | – | {t['status']}: {t['summary']} |")
    for r in results["throughput"] + results["memory"]:
        what = r["task"] if r["section"] == "throughput" else f"forward, {r['tokens']} tokens"
        ips = f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "–"
        mem = f"{r['peak_mb_per_image']:.1f}" if r.get("peak_mb_per_image") else "–"
        lines.append(f"| {r['section']} | {r['family']} | {what} | {r['precision']} | {r['batch']} | {ips} | {mem} "
                     f"| {r['status']} |")
    tr = results["torchrun"]
    lines.append(f"| torchrun | – | 2-process step ({tr['backend']} on {tr['device']}, {tr['seconds']:.0f} s) | – | – "
                 f"| – | – | {tr['status']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "benchmarks" / "results")))
    p.add_argument("--batch", type=int, default=128, help="throughput batch (default 128)")
    p.add_argument("--sweep-batch", type=int, default=8, help="batch of the memory sweep (default 8)")
    p.add_argument("--budget-s", type=float, default=240.0, help="no new timing after this many seconds")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("cuda_check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    start = time.monotonic()
    budget_end = start + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "gpus": torch.cuda.device_count(),
        "tests": cuda_tests(timeout=120),
    }
    results["throughput"] = throughput(args.batch, budget_end)
    results["memory"] = memory_sweep(args.sweep_batch, budget_end)
    results["torchrun"] = torchrun_step(timeout=120, run_dir=args.out / "cuda_check_torchrun")
    results["wall_s"] = time.monotonic() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_check.json").write_text(json.dumps(results, indent=2))
    print(f"# cuda_check: {results['device']} x{results['gpus']}, torch {results['torch']}, "
          f"{results['wall_s']:.0f} s\n\n{table(results)}")
    failed = results["tests"]["status"] != "ok" or results["torchrun"]["status"] != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
