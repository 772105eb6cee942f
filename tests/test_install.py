"""The wheel, installed: the Hydra configs travel in it and every task runs from the installed copy.

The wheel is built from this checkout's working tree once per module and installed with
``pip --target`` into a temporary folder; the commands then run from a temporary working directory
(not the repo) with ``PYTHONPATH`` set to that folder only, so ``import bixt`` finds the installed
copy, never the checkout (asserted through ``bixt.__file__`` and through the config source Hydra
records).
Every command spends seconds importing torch, so the module starts them all at once, two at a
time, and each test checks the result of its own.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bixt" / "configs"

pytestmark = pytest.mark.e2e

# task -> (text --help must print, overrides for a run of a few seconds: tiny model, 1 epoch, few samples)
TASKS = {
    "imagenet": (
        ["data: embedded, folder, hf", "experiment: bixt_ti_l64_p16_ft384, bixt_ti_l64_p16_in1k", "eval_only=true"],
        ["model.encoder.depth=2", "model.encoder.dim=32", "model.encoder.num_heads=2",
         "model.encoder.num_latents=8", "data.train_size=64", "data.val_size=32", "trainer.batch_size=16",
         "trainer.epochs=1", "trainer.progress=false", "trainer.log_every=0"],
    ),
    "shapenet_partseg": (
        ["data: shapenetpart, synthetic", "model: bixt_point_naive, bixt_point_small, bixt_point_tiny"],
        ["model.encoder.dim=32", "model.tokenizer.num_groups=16", "model.tokenizer.group_size=8",
         "model.tokenizer.hidden=16", "model.encoder.depth=2", "model.encoder.num_heads=2",
         "model.encoder.num_latents=8", "model.head.hidden=32", "model.head.category_dim=8",
         "model.head.point_dim=8", "trainer.epochs=1", "trainer.batch_size=8", "trainer.log_every=0",
         "data.train_size=16", "data.val_size=8", "data.points_per_shape=[96,128]", "data.num_points=64"],
    ),
    "lra_retrieval": (
        ["data: aan, embedded", "model: bixt, bixt_tiny, transformer, transformer_tiny"],
        ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
         "model.head.hidden_dims=[16]", "trainer.epochs=1", "trainer.batch_size=4", "trainer.eval_batch_size=8",
         "trainer.log_every=0", "data.train_size=16", "data.eval_size=8", "data.test_size=8",
         "data.min_bytes=100", "data.max_bytes=200"],
    ),
    "modelnet40_cls": (
        ["data: modelnet40, solids", "model: bixt_point, bixt_point_naive, bixt_point_small"],
        ["model.encoder.dim=32", "model.tokenizer.hidden=16", "model.encoder.depth=2", "model.encoder.num_heads=2",
         "model.encoder.num_latents=8", "model.tokenizer.num_groups=8", "model.tokenizer.group_size=8",
         "trainer.epochs=1", "trainer.batch_size=8", "trainer.log_every=0", "data.train_size=20",
         "data.test_size=10", "data.num_points=32"],
    ),
    "lra_listops": (
        ["data: embedded, listops", "model: bixt, bixt_tiny, transformer, transformer_tiny"],
        ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2", "trainer.epochs=1",
         "trainer.batch_size=4", "trainer.eval_batch_size=8", "trainer.log_every=0", "data.train_size=16",
         "data.val_size=8", "data.test_size=8"],
    ),
    "ade20k_semseg": (
        ["data: ade20k, ade20k_hf, scenes", "experiment: ade20k_linear, ade20k_semfpn"],
        ["model.encoder.dim=32", "model.encoder.depth=3", "model.encoder.num_heads=2",
         "model.encoder.num_latents=8", "data.train_size=16", "data.val_size=8", "trainer.epochs=1",
         "trainer.batch_size=8", "trainer.log_every=0"],
    ),
}


def _check(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, (f"{what} failed ({proc.returncode}):\n--- stdout\n{proc.stdout[-3000:]}"
                                  f"\n--- stderr\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a fresh copy of what the wheel is made of (the working tree's bixt/, pyproject.toml,
    # README.md): setuptools builds in-tree and packs whatever a left-over ./build/lib holds, so a
    # build from REPO itself could still ship configs that the package data no longer names.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "bixt", src / "bixt", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    _check(subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300), "pip wheel")
    (path,) = out.glob("bixt-*.whl")
    return path


@pytest.fixture(scope="module")
def target(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _check(subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300), "pip install --target")
    return target


def installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` from ``cwd`` importing bixt from ``target`` only (the editable checkout is not on the path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BIXT_CACHE=str(cwd / "cache"),
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return _check(proc, f"python {' '.join(args)} (cwd {cwd}, PYTHONPATH={target})")


def test_wheel_holds_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(REPO).as_posix() for p in CONFIGS.rglob("*") if p.suffix in (".yaml", ".py")}
    assert len(expected) > 20
    assert expected <= names, f"missing from {wheel.name}: {sorted(expected - names)}"
    assert not any(n.startswith("configs/") for n in names)  # no stray top-level package


@pytest.fixture(scope="module")
def started(target, tmp_path_factory) -> dict[str, tuple[Path, Future]]:
    """name -> (working directory, future of the finished process) for every command of the module."""
    # an entry point imported as a module (a console script would do that), not run as __main__:
    # Hydra then looks its configs up as the package bixt.configs.imagenet, not as a folder
    commands = {"import": ["-c", "import sys, bixt; print(bixt.__file__); sys.argv = ['imagenet', '--cfg', 'job']; "
                                 "from bixt.tasks.imagenet import main; main()"]}
    for task, (_, overrides) in TASKS.items():
        commands[f"run-{task}"] = ["-m", f"bixt.tasks.{task}", *overrides]
        commands[f"help-{task}"] = ["-m", f"bixt.tasks.{task}", "--help"]
    pool = ThreadPoolExecutor(max_workers=2)
    jobs = {}
    for name, args in commands.items():
        cwd = tmp_path_factory.mktemp(name)
        jobs[name] = (cwd, pool.submit(installed, target, cwd, *args))
    yield jobs
    pool.shutdown(cancel_futures=True)


def test_the_installed_copy_is_imported(target, started):
    out = started["import"][1].result().stdout
    path, composed = out.split("\n", 1)
    assert Path(path).resolve().is_relative_to(target.resolve()), out
    model = OmegaConf.create(composed).model  # the installed package's default model node
    assert model._target_ == "bixt.models.factory.image_classifier" and model.encoder.dim == 64, out


@pytest.mark.parametrize("task", list(TASKS))
def test_help_from_the_wheel(started, task):
    out = started[f"help-{task}"][1].result().stdout
    for expected in TASKS[task][0]:
        assert expected in out, f"{expected!r} not in --help output:\n{out}"


@pytest.mark.parametrize("task", list(TASKS))
def test_short_run_from_the_wheel(target, started, task):
    cwd, job = started[f"run-{task}"]
    job.result()
    # no run_dir given: the run goes to Hydra's default output folder under the working directory
    (metrics,) = [p for p in cwd.rglob("metrics.jsonl") if "cache" not in p.relative_to(cwd).parts]
    run_dir = metrics.parent
    assert metrics.read_text().strip() and (run_dir / "metrics.csv").is_file() and (run_dir / "last.pth").is_file()
    # Hydra read the primary config from the installed package
    sources = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.config_sources
    (main,) = [s for s in sources if s.provider == "main"]
    assert main.schema == "file" and Path(main.path).resolve() == (target / "bixt" / "configs" / task).resolve(), main
