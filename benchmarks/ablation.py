"""The BiXT paper's central ablation on the embedded data: iterative (Perceiver), sequential and
bi-directional cross-attention at matched forward FLOPs, 3 seeds each, on an image and a point-cloud task.

    python benchmarks/ablation.py            # the full table (README)
    python benchmarks/ablation.py --quick    # a few-minute version (< 15 min on 2 cores)
    python benchmarks/ablation.py --smoke    # seconds: checks that everything runs

Matched FLOPs: every variant keeps the reference's width; the bi-directional model is the
reference, and each other variant takes the number of latents whose forward
FLOPs come closest to it at the reference depth; only when no latent count comes within
``--tolerance`` (3 %; 10 % for ``--smoke``'s tiny models) does the depth change too (the depth closest to the reference that does, at
least 2: the classifiers' last layer updates the latents only).
FLOPs are counted per sample with :func:`bixt.flops.count_flops`.

Each run trains with AdamW and a cosine schedule (short linear warm-up), batch 64, no workers:
the same seed gives the same numbers on the same machine. Reported per variant: top-1 accuracy
on the held-out split (mean and std over the seeds), forward GFLOPs per sample, parameters,
inference throughput (samples/s, median of timed batches) and the memory of one training step
(CUDA: peak allocated; CPU: parameters + gradients + AdamW state + the activations autograd keeps
for the backward, counted from the saved tensors, which is what differs between the variants).

Writes ``benchmarks/results/ablation.{json,md,png}`` (``ablation_quick.*`` / ``ablation_smoke.*`` for the
shorter presets; ``--out`` to change the stem).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from common import isa_label, machine_info

from bixt.core import CROSS_ATTENTIONS, BiXTEncoder
from bixt.flops import count_flops, count_parameters

RESULTS = Path(__file__).resolve().parent / "results"
# The paper's Table 1 (ImageNet, 120 epochs, 3 seeds): top-1 % per variant, for the README next to ours.
PAPER_TOP1 = {"iterative": 60.0, "sequential": 73.8, "bidirectional": 74.1}


@dataclass
class Preset:
    seeds: tuple[int, ...]
    image_train: int
    image_test: int
    image_epochs: int
    point_train: int
    point_test: int
    num_points: int
    point_epochs: int
    dim: int = 64
    depth: int = 3
    num_latents: int = 16


PRESETS = {
    "smoke": Preset(seeds=(0,), image_train=128, image_test=64, image_epochs=1, point_train=64, point_test=32,
                    num_points=128, point_epochs=1, dim=32, depth=2, num_latents=8),
    "quick": Preset(seeds=(0, 1, 2), image_train=3000, image_test=600, image_epochs=6, point_train=800,
                    point_test=400, num_points=256, point_epochs=10),
    # 10,000 images x 15 epochs brought the bi-directional model to 97 %, where a ceiling hides any gap
    "full": Preset(seeds=(0, 1, 2), image_train=5000, image_test=2000, image_epochs=10, point_train=1500,
                   point_test=1000, num_points=512, point_epochs=20),
}


# ------------------------------------------------------------------------------------------ data
def image_data(p: Preset):
    from bixt.data.shapes import ShapesDataset

    train = ShapesDataset(num_samples=p.image_train, img_size=32, seed=0, num_classes=10, train=True)
    test = ShapesDataset(num_samples=p.image_test, img_size=32, seed=1, num_classes=10)
    return train, test, 10


def point_data(p: Preset):
    from bixt.data.modelnet import SOLID_CLASSES, PointClassificationDataset, make_solids

    train = PointClassificationDataset(*make_solids(p.point_train, split="train", num_points=p.num_points),
                                       SOLID_CLASSES, train=True)
    test = PointClassificationDataset(*make_solids(p.point_test, split="test", num_points=p.num_points),
                                      SOLID_CLASSES)
    return train, test, len(SOLID_CLASSES)


# ---------------------------------------------------------------------------------------- models
def image_model(p: Preset, num_classes: int, *, variant: str, depth: int, num_latents: int) -> nn.Module:
    from bixt.models.bixt_image import BiXT

    return BiXT(img_size=32, patch_size=4, num_classes=num_classes, embed_dim=p.dim, depth=depth,
                num_latents=num_latents, num_heads=4, cross_attention=variant)


def point_model(p: Preset, num_classes: int, *, variant: str, depth: int, num_latents: int) -> nn.Module:
    from bixt.heads.classification import ClassificationHead
    from bixt.models.point import PointClassifier
    from bixt.tokenizers.point import PointGroupTokenizer

    tokenizer = PointGroupTokenizer(dim=p.dim, num_groups=32, group_size=16, hidden=32, relative_scale=10.0)
    encoder = BiXTEncoder(p.dim, depth, num_latents, num_heads=4, cross_attention=variant, last_layer="latents")
    return PointClassifier(tokenizer, encoder, ClassificationHead(dim=p.dim, num_classes=num_classes))


@dataclass
class Task:
    name: str
    data: Callable
    model: Callable
    epochs: Callable[[Preset], int]


TASKS = (Task("shapes (image)", image_data, image_model, lambda p: p.image_epochs),
         Task("solids (points)", point_data, point_model, lambda p: p.point_epochs))


def flops_per_sample(build: Callable[..., nn.Module], example: torch.Tensor, **arch) -> int:
    torch.manual_seed(0)
    return count_flops(build(**arch), example)


def match_flops(build: Callable[..., nn.Module], example: torch.Tensor, p: Preset, variant: str, target: int,
                tolerance: float) -> dict:
    """Depth and latent count of ``variant`` whose forward FLOPs come closest to ``target`` (see the module doc)."""
    def search(depth: int) -> tuple[float, int, int]:
        best = (math.inf, 0, 0)
        for latents in range(2, 8 * p.num_latents + 1):
            flops = flops_per_sample(build, example, variant=variant, depth=depth, num_latents=latents)
            best = min(best, (abs(flops / target - 1), latents, flops))
            if flops > target * (1 + tolerance):
                break  # FLOPs grow with the latents
        return best

    # at least two layers: with one, the (one-sided) classifier layer would be all there is
    for depth in sorted(range(2, 2 * p.depth + 1), key=lambda d: (abs(d - p.depth), d)):
        error, latents, flops = search(depth)
        if error <= tolerance:
            return dict(depth=depth, num_latents=latents, flops=flops)
    raise RuntimeError(f"no depth and latent count of {variant} comes within {tolerance:.0%} of {target} FLOPs")


# -------------------------------------------------------------------------------------- training
def train_and_test(model: nn.Module, train_set, test_set, *, epochs: int, seed: int,
                   device: torch.device) -> tuple[float, float]:
    """Top-1 % on ``test_set`` after training, and the mean training loss of the last epoch (``nan`` when the
    run diverged: the table counts those runs, since stability is part of what the variants differ in)."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=64, shuffle=True, generator=generator, drop_last=True)
    steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.to(device).train()
    for _ in range(epochs):
        losses = []
        for inputs, labels in loader:
            loss = nn.functional.cross_entropy(model(inputs.to(device)), labels.to(device), label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            losses.append(loss.detach())
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for inputs, labels in DataLoader(test_set, batch_size=128):
            correct += int((model(inputs.to(device)).argmax(-1).cpu() == labels).sum())
    return 100.0 * correct / len(test_set), float(torch.stack(losses).mean())


def throughput(model: nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Inference samples per second: median over ``repeats`` timed batches after one warm-up."""
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if batch.is_cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(batch)
            if batch.is_cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times)


def train_step_memory_mb(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor) -> float:
    """Memory of one training step (see the module doc), in MB."""
    model.train()
    if batch.is_cuda:
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        nn.functional.cross_entropy(model(batch), labels).backward()
        model.zero_grad(set_to_none=True)
        return (torch.cuda.max_memory_allocated() - start) / 2**20
    saved: dict[int, int] = {}

    def keep(t: torch.Tensor):
        if t.device.type != "meta":
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = nn.functional.cross_entropy(model(batch), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    activations = sum(n for ptr, n in saved.items() if ptr not in params)
    return (activations + 4 * sum(params.values())) / 2**20  # weights, gradients, two AdamW moments


def measure(model: nn.Module, batch: torch.Tensor, labels: torch.Tensor, *, smoke: bool) -> dict:
    return dict(samples_per_s=throughput(model, batch, repeats=3 if smoke else 10),
                train_mem_mb=train_step_memory_mb(model, batch, labels))


def load_stored(path: Path, preset: Preset) -> dict:
    """The results an earlier run of the same preset stored, for ``--speed-only``."""
    if not path.is_file():
        raise SystemExit(f"--speed-only needs {path} from an earlier run of this preset: run it without --speed-only first")
    stored = json.loads(path.read_text())
    if stored.get("preset") != json.loads(json.dumps(asdict(preset))):
        raise SystemExit(f"{path} was written by another preset ({stored.get('preset')}): run this preset "
                         "without --speed-only first")
    return stored


# ---------------------------------------------------------------------------------------- report
def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(r["task"] for r in runs):
        for variant in CROSS_ATTENTIONS:
            mine = [r for r in runs if r["task"] == task and r["variant"] == variant]
            if not mine:
                continue
            acc = [r["top1"] for r in mine]
            first = mine[0]
            rows.append(dict(task=task, variant=variant, depth=first["depth"], num_latents=first["num_latents"],
                             gflops=first["flops"] / 1e9, params_m=first["params"] / 1e6,
                             top1_mean=statistics.mean(acc), top1_std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
                             seeds=len(acc), diverged=sum(not math.isfinite(r.get("last_epoch_loss", 0.0)) for r in mine),
                             samples_per_s=first["samples_per_s"], train_mem_mb=first["train_mem_mb"]))
    return rows


def markdown(rows: list[dict], args: argparse.Namespace, device: str) -> str:
    lines = [f"Cross-attention ablation at matched forward FLOPs (`python benchmarks/ablation.py{args.flag}`, {device}, "
             f"{args.threads} threads). Top-1 % on the held-out split, mean ± std over seeds.", "",
             "| task | cross-attention | depth | latents | MFLOPs/sample | params (M) | top-1 % | samples/s | "
             "train-step memory (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['variant']} | {r['depth']} | {r['num_latents']} | {r['gflops'] * 1e3:.2f} | "
                     f"{r['params_m']:.3f} | {r['top1_mean']:.1f} ± {r['top1_std']:.1f} ({r['seeds']}"
                     f"{', %d diverged' % r['diverged'] if r.get('diverged') else ''}) | "
                     f"{r['samples_per_s']:.0f} | {r['train_mem_mb']:.1f} |")
    lines += ["", "Paper (Table 1, ImageNet, 120 epochs): " +
              ", ".join(f"{v} {PAPER_TOP1[v]:.1f} %" for v in ("iterative", "sequential", "bidirectional")) + "."]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.6 * len(tasks)), squeeze=False)
    colours = dict(zip(CROSS_ATTENTIONS, ("tab:blue", "tab:orange", "tab:green")))
    for row_axes, task in zip(axes, tasks):
        mine = [r for r in rows if r["task"] == task]
        acc_ax, speed_ax, mem_ax = row_axes
        for r in mine:
            acc_ax.errorbar(r["gflops"] * 1e3, r["top1_mean"], yerr=r["top1_std"], fmt="o", capsize=4,
                            color=colours[r["variant"]], label=r["variant"])
        acc_ax.set(title=f"{task}: accuracy vs FLOPs", xlabel="MFLOPs / sample (forward)", ylabel="top-1 %")
        acc_ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        acc_ax.ticklabel_format(axis="x", useOffset=False)
        acc_ax.legend(fontsize=8)
        names = [r["variant"] for r in mine]
        speed_ax.bar(names, [r["samples_per_s"] for r in mine], color=[colours[n] for n in names])
        speed_ax.set(title="inference throughput", ylabel="samples / s")
        mem_ax.bar(names, [r["train_mem_mb"] for r in mine], color=[colours[n] for n in names])
        mem_ax.set(title="training-step memory", ylabel="MB")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a few-minute version (< 15 min on 2 CPU cores)")
    size.add_argument("--smoke", action="store_true", help="seconds: one seed, tiny sets, one epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="FLOP matching tolerance (relative; default 0.03, --smoke's tiny models 0.1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output stem (.json/.md/.png); default benchmarks/results/ablation[_quick|_smoke]")
    parser.add_argument("--speed-only", action="store_true",
                        help="keep the accuracies of the preset's stored results and measure throughput and "
                             "memory again (for a quiet machine: training under load does not change accuracy)")
    args = parser.parse_args()
    args.flag = " --quick" if args.quick else " --smoke" if args.smoke else ""
    preset_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    preset = PRESETS[preset_name]
    if args.tolerance is None:
        args.tolerance = 0.1 if args.smoke else 0.03
    if args.out is None:
        args.out = RESULTS / ("ablation" if preset_name == "full" else f"ablation_{preset_name}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    started = time.perf_counter()
    stored = load_stored(args.out.with_suffix(".json"), preset)["runs"] if args.speed_only else None
    runs = []
    for task in TASKS:
        train_set, test_set, num_classes = task.data(preset)
        example = torch.stack([train_set[0][0]])
        build = lambda **arch: task.model(preset, num_classes, **arch)  # noqa: E731
        target = flops_per_sample(build, example, variant="bidirectional", depth=preset.depth,
                                  num_latents=preset.num_latents)
        for variant in CROSS_ATTENTIONS:
            arch = (dict(depth=preset.depth, num_latents=preset.num_latents, flops=target) if variant == "bidirectional"
                    else match_flops(build, example, preset, variant, target, args.tolerance))
            flops = arch.pop("flops")
            print(f"[{task.name}] {variant}: depth {arch['depth']}, {arch['num_latents']} latents, "
                  f"{flops / 1e6:.2f} MFLOPs/sample ({flops / target - 1:+.1%} of bidirectional)", flush=True)
            batch = torch.stack([train_set[i][0] for i in range(min(64, len(train_set)))]).to(device)
            labels = torch.tensor([int(train_set[i][1]) for i in range(batch.shape[0])], device=device)
            if stored is not None:
                torch.manual_seed(preset.seeds[0])
                model = build(variant=variant, **arch)
                speed = measure(model, batch, labels, smoke=args.smoke)
                mine = [r for r in stored if r["task"] == task.name and r["variant"] == variant]
                runs += [{**r, **speed} for r in mine]
                print(f"    {speed['samples_per_s']:.0f} samples/s, {speed['train_mem_mb']:.1f} MB "
                      f"(top-1 of {len(mine)} stored runs kept)", flush=True)
                continue
            for seed in preset.seeds:
                torch.manual_seed(seed)
                model = build(variant=variant, **arch)
                top1, last_loss = train_and_test(model, train_set, test_set, epochs=task.epochs(preset), seed=seed,
                                                 device=device)
                run = dict(task=task.name, variant=variant, seed=seed, flops=flops, params=count_parameters(model),
                           top1=top1, last_epoch_loss=last_loss, **arch)
                if seed == preset.seeds[0]:
                    run.update(measure(model, batch, labels, smoke=args.smoke))
                else:
                    run.update(samples_per_s=runs[-1]["samples_per_s"], train_mem_mb=runs[-1]["train_mem_mb"])
                runs.append(run)
                print(f"    seed {seed}: top-1 {top1:.1f} %, last-epoch loss {last_loss:.3f}  ({time.perf_counter() - started:.0f} s so far)", flush=True)
    rows = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU {isa_label(machine_info())}")
    table = markdown(rows, args, device_name)
    args.out.with_suffix(".md").write_text(table)
    seconds = time.perf_counter() - started
    timing = (dict(seconds=load_stored(args.out.with_suffix(".json"), preset)["seconds"], speed_only_seconds=seconds)
              if args.speed_only else dict(seconds=seconds))
    args.out.with_suffix(".json").write_text(json.dumps(
        dict(command=f"python benchmarks/ablation.py{args.flag}", preset=asdict(preset), device=device_name,
             machine=machine_info(), threads=args.threads, tolerance=args.tolerance, **timing, rows=rows,
             runs=runs, paper_top1=PAPER_TOP1), indent=1))
    plot(rows, args.out.with_suffix(".png"))
    print(table)
    print(f"wrote {args.out}.{{md,json,png}} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
