"""Does masked pre-training help when labels are few? On the embedded data: pre-train without
labels (``python -m bixt.tasks.pretrain``), then fine-tune with 10 % of the labels
(``finetune_from=``) against training from scratch with the same fine-tuning budget, 3 seeds each.

    python benchmarks/label_efficiency.py            # the full table (README)
    python benchmarks/label_efficiency.py --quick    # smaller sets and budgets
    python benchmarks/label_efficiency.py --smoke    # seconds per run: checks that everything runs

Tasks: image classification (imagenet, embedded shapes), semantic segmentation (ade20k_semseg,
embedded scenes; its backbone is pre-trained on the shapes images), ModelNet-style classification
(modelnet40_cls, embedded solids) and ListOps (lra_listops; masked-token pre-training on the
embedded ListOps expressions, labels ignored). Each runs the real commands in subprocesses and reads the
runs' ``metrics.jsonl``; the metric is the best validation value of the fine-tune. Writes
``benchmarks/results/label_efficiency[_quick|_smoke].{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from common import mean_std  # noqa: E402

#: task -> (pre-training modality, metric, full training-set size of the embedded data, its size key)
TASKS = {
    "imagenet": ("images", "top1", 10000, "data.train_size"),
    "ade20k_semseg": ("images", "miou", 3000, "data.train_size"),
    "modelnet40_cls": ("points", "top1", 2000, "data.train_size"),
    "lra_listops": ("bytes", "top1", 10000, "data.train_size"),
}
#: pre-training data per modality: each modality's default, except bytes, which pre-train on the
#: ListOps expressions themselves (labels ignored) so that the token table carries over
PRETRAIN_DATA = {"bytes": ["data=listops_embedded"]}
PRESETS = {  # pre-training overrides per modality, fine-tune epochs, share of labels, seeds
    "full": dict(pretrain={}, epochs=12, share=0.1, seeds=3),
    "quick": dict(pretrain={"images": ["trainer.epochs=3"], "points": ["trainer.epochs=3"],
                            "bytes": ["trainer.epochs=3"]}, epochs=6, share=0.1, seeds=3),
    "smoke": dict(pretrain={"images": ["trainer.epochs=1", "data.train_size=64", "data.val_size=32"],
                            "points": ["trainer.epochs=1", "data.train_size=32", "data.test_size=16"],
                            "bytes": ["trainer.epochs=1", "data.train_size=32", "data.val_size=16"]},
                  epochs=1, share=0.01, seeds=1),
}
SMOKE_EVAL = {"imagenet": ["data.val_size=32"], "ade20k_semseg": ["data.val_size=8"],
              "modelnet40_cls": ["data.test_size=16"], "lra_listops": ["data.val_size=16", "data.test_size=16"]}


def run(module: str, args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")


def best(run_dir: Path, metric: str) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max(float(r[f"val/{metric}"]) for r in rows if f"val/{metric}" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    preset = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = PRESETS[preset]
    stem = "label_efficiency" + ("" if preset == "full" else "_" + preset)
    out = Path(args.out or REPO / "benchmarks" / "results" / stem)
    started = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {}
    kept = stored_rows(out, preset, args.tasks)  # `--tasks X` redoes the row of X only
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pretrained: dict[str, Path] = {}
        for task in args.tasks:
            modality, metric, full, size_key = TASKS[task]
            if modality not in pretrained:
                run_dir = work / f"pre_{modality}"
                run("bixt.tasks.pretrain", [f"modality={modality}", *PRETRAIN_DATA.get(modality, []),
                                            *cfg["pretrain"].get(modality, []),
                                            f"trainer.run_dir={run_dir}"], work)
                pretrained[modality] = run_dir / "best.pth"
            labels = max(8, int(full * cfg["share"]))
            common = [f"{size_key}={labels}", f"trainer.epochs={cfg['epochs']}", "trainer.min_updates=0",
                      *(SMOKE_EVAL[task] if preset == "smoke" else [])]
            for seed in range(cfg["seeds"]):
                for start in ("scratch", "pretrained"):
                    run_dir = work / f"{task}_{start}_{seed}"
                    extra = [f"finetune_from={pretrained[modality]}"] if start == "pretrained" else []
                    run(f"bixt.tasks.{task}", [*common, f"trainer.seed={seed}", *extra, f"trainer.run_dir={run_dir}"],
                        work)
                    results.setdefault(task, {}).setdefault(start, []).append(best(run_dir, metric))
                    print(task, start, seed, results[task][start][-1], flush=True)
                    # a cut-short run keeps what it measured
                    write(out, preset, cfg, {**kept, **results}, time.perf_counter() - started)
    print(write(out, preset, cfg, {**kept, **results}, time.perf_counter() - started))


def stored_rows(out: Path, preset: str, tasks: list[str]) -> dict[str, dict[str, list[float]]]:
    """The stored rows of the same preset for the tasks this run does not repeat."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    if stored.get("preset") != preset:
        return {}
    return {task: runs for task, runs in stored["results"].items() if task not in tasks}


def write(out: Path, preset: str, cfg: dict, results: dict[str, dict[str, list[float]]], seconds: float) -> str:
    lines = [f"| task (metric %, {int(cfg['share'] * 100)} % of labels) | from scratch | pre-trained | gain |",
             "|---|---|---|---|"]
    for task, runs in results.items():
        scale = 100.0 if TASKS[task][1] == "miou" else 1.0  # every metric in %
        scratch, pretrained = runs.get("scratch", []), runs.get("pretrained", [])

        def cell(values: list[float]) -> str:
            return mean_std(values, scale) if values else "-"
        gain = (f"{scale * (statistics.mean(pretrained) - statistics.mean(scratch)):+.1f}"
                if scratch and pretrained else "-")
        lines.append(f"| {task} ({TASKS[task][1]}) | {cell(scratch)} | {cell(pretrained)} | {gain} |")
    table = "\n".join(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"preset": preset, **cfg, "seconds": seconds,
                                                    "results": results}, indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
