"""Tiny trained runs of every task, made in-process in a tmp dir (for the predict / viz / export tests)."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
QUIET = ["trainer.progress=false", "trainer.log_every=0", "trainer.threads=1", "trainer.epochs=1"]
TINY = {
    "imagenet": ["model.encoder.depth=2", "model.encoder.dim=32", "model.encoder.num_heads=2",
                 "model.encoder.num_latents=8", "trainer.batch_size=8"],
    "ade20k_semseg": ["model.encoder.dim=32", "model.encoder.depth=3", "model.encoder.num_heads=2",
                      "model.encoder.num_latents=8", "data.train_size=8", "data.val_size=4", "data.img_size=32",
                      "data.crop_size=32", "data.scale=[32,32]", "trainer.batch_size=4"],
    "modelnet40_cls": ["model.encoder.dim=32", "model.tokenizer.hidden=16", "model.encoder.depth=2",
                       "model.encoder.num_heads=2", "model.encoder.num_latents=8", "model.tokenizer.num_groups=8",
                       "model.tokenizer.group_size=8", "data.train_size=20", "data.test_size=10",
                       "data.num_points=32", "trainer.batch_size=8"],
    "shapenet_partseg": ["model.encoder.dim=32", "model.tokenizer.num_groups=16", "model.tokenizer.group_size=8",
                         "model.tokenizer.hidden=16", "model.encoder.depth=2", "model.encoder.num_heads=2",
                         "model.encoder.num_latents=8", "model.head.hidden=32", "model.head.category_dim=8",
                         "model.head.point_dim=8", "data.train_size=24", "data.val_size=12",
                         "data.points_per_shape=[96,128]", "data.num_points=64", "trainer.batch_size=8"],
    "lra_retrieval": ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
                      "model.head.hidden_dims=[16]", "data.train_size=16", "data.eval_size=8", "data.test_size=8",
                      "data.max_len=256", "data.min_bytes=100", "data.max_bytes=200", "trainer.batch_size=4"],
    "lra_listops": ["model.encoder.dim=32", "model.encoder.depth=2", "model.encoder.num_heads=2",
                    "data.train_size=32", "data.val_size=16", "data.test_size=16", "trainer.batch_size=8"],
}


def write_image_folder(root: Path, classes=("circle", "square", "triangle"), per_class: int = 4,
                       size: int = 40) -> Path:
    """root/{train,val}/<class>/*.png of coloured noise (sizes vary: predict resizes as the run's eval)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                h, w = size + 4 * i, size + 8 * (i % 2)
                pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] = 255 - 40 * c
                Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return root


def train_run(task: str, run_dir: Path, *overrides: str) -> Path:
    """Train a tiny run of ``task`` into ``run_dir`` (which must not exist) in this process."""
    from hydra import compose, initialize_config_dir

    import bixt.engine  # noqa: F401  (registers the trainer schemas)
    module = importlib.import_module(f"bixt.tasks.{task}")
    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / task), version_base=None):
        cfg = compose(config_name="config", overrides=[*QUIET, *TINY[task], *overrides, f"trainer.run_dir={run_dir}"])
    module.train(cfg)
    return run_dir
