"""What does fusion add? ``python -m bixt.tasks.clevr_vqa`` as a user runs it (the embedded scenes,
the default budget), for the fused model and the two single-modality baselines, over seeds.

    python benchmarks/vqa_fusion.py              # 3 seeds each, the defaults (the README table)
    python benchmarks/vqa_fusion.py --seeds 1    # one seed each
    python benchmarks/vqa_fusion.py --smoke      # a few steps each: checks that everything runs
    python benchmarks/vqa_fusion.py --models fused   # redo one model's rows, keep the stored others

Each run is the real command in a subprocess (its own wall time is recorded, so the "under 5 minutes"
of the default is measured here too); the metrics are the last epoch's validation accuracy, overall
and per question family, read from the run's ``metrics.jsonl``. Writes
``benchmarks/results/vqa_fusion[_smoke].{json,md,png}``: mean ± std over the seeds, and the gain of the
fused model over the better baseline.
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
from common import machine_info, markdown_table, mean_std  # noqa: E402

MODELS = {"fused": "bixt_fusion", "question only": "question_only", "image only": "image_only"}
FAMILIES = ("existence", "counting", "query", "compare", "spatial")
SMOKE = ["trainer.epochs=1", "data.train_scenes=40", "data.val_scenes=10"]


def run_task(model: str, seed: int, run_dir: Path, extra: list[str]) -> tuple[dict, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [f"model={model}", f"trainer.seed={seed}", f"trainer.run_dir={run_dir}", *extra]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bixt.tasks.clevr_vqa", *args], cwd=run_dir.parent, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"clevr_vqa {' '.join(args)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in rows if "val/top1" in r][-1]
    return {"overall": last["val/top1"], **{f: last[f"val/acc/{f}"] for f in FAMILIES}}, seconds


def write(out: Path, results: dict[str, list[dict]], seconds: dict[str, list[float]], meta: dict) -> str:
    columns = ("overall", *FAMILIES)
    rows = [[name, *(mean_std([r[c] for r in runs]) for c in columns), f"{max(seconds[name]):.0f}"]
            for name, runs in results.items()]
    table = markdown_table(["model", "val top-1 %", *FAMILIES, "longest run (s)"], rows)
    means = {name: statistics.mean(r["overall"] for r in runs) for name, runs in results.items()}
    baselines = [means[n] for n in ("question only", "image only") if n in means]
    if "fused" in means and baselines:
        table += f"\n\nfused - better baseline: {means['fused'] - max(baselines):+.1f} points (means over seeds)"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({**meta, "results": results, "seconds": seconds}, indent=1))
    out.with_suffix(".md").write_text(table + "\n")
    plot(out.with_suffix(".png"), results, columns)
    return table


def plot(path: Path, results: dict[str, list[dict]], columns: tuple[str, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(1, len(results))
    for i, (name, runs) in enumerate(results.items()):
        means = [statistics.mean(r[c] for r in runs) for c in columns]
        spreads = [statistics.stdev(r[c] for r in runs) if len(runs) > 1 else 0.0 for c in columns]
        ax.bar([j + i * width for j in range(len(columns))], means, width, yerr=spreads, capsize=2, label=name)
    ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(columns))], columns)
    ax.set_ylabel("val accuracy % (mean ± std over seeds)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("python -m bixt.tasks.clevr_vqa, embedded scenes, default budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stored_rows(out: Path, models: list[str]) -> tuple[dict[str, list[dict]], dict[str, list[float]]]:
    """The stored results and wall times of the models this run does not repeat."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return {}, {}
    stored = json.loads(path.read_text())
    keep = [name for name in stored["results"] if name not in models]
    return {n: stored["results"][n] for n in keep}, {n: stored["seconds"][n] for n in keep}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per run: checks that everything runs")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default=None, help="output stem (default benchmarks/results/vqa_fusion[_smoke])")
    args = parser.parse_args()
    out = Path(args.out or REPO / "benchmarks" / "results" / ("vqa_fusion" + ("_smoke" if args.smoke else "")))
    meta = {"machine": machine_info(), "seeds": args.seeds, "overrides": SMOKE if args.smoke else []}
    results, seconds = stored_rows(out, args.models)  # `--models X` redoes the rows of X only
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for seed in range(args.seeds):
                metrics, wall = run_task(MODELS[name], seed, Path(tmp) / f"{MODELS[name]}_{seed}",
                                         SMOKE if args.smoke else [])
                results.setdefault(name, []).append(metrics)
                seconds.setdefault(name, []).append(wall)
                print(f"{name} seed {seed}: {metrics} in {wall:.0f} s", flush=True)
                write(out, results, seconds, meta)  # a cut-short run keeps what it measured
    print(write(out, results, seconds, meta))


if __name__ == "__main__":
    main()
