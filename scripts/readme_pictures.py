"""Regenerate the pictures of the README's "Use a trained model" section.

Trains the default run of each task on its embedded data (or reuses runs given with ``--runs``),
writes a few held-out samples as files, and runs ``bixt.predict`` and ``bixt.viz attention`` on
them, exactly as a user would; the pictures land in ``docs/pictures/``.

    python scripts/readme_pictures.py                      # the default runs (CPU minutes per task)
    python scripts/readme_pictures.py --quick              # 2 epochs each, smaller data: a smoke version
    python scripts/readme_pictures.py --runs DIR           # reuse DIR/<task> runs made earlier
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "pictures"
QUICK = {
    "imagenet": ["trainer.epochs=3", "data.train_size=3000", "data.val_size=200"],
    "ade20k_semseg": ["trainer.epochs=2", "data.train_size=1000", "data.val_size=50"],
    "shapenet_partseg": ["trainer.epochs=2", "data.train_size=600", "data.val_size=60"],
}


def train(task: str, run_dir: Path, quick: bool) -> Path:
    """The task's default run (``--quick``: shorter), in-process; an existing run is reused."""
    if (run_dir / "best.pth").is_file():
        return run_dir
    from hydra import compose, initialize_config_dir
    import bixt.engine  # noqa: F401  (registers the trainer schemas)
    overrides = [*(QUICK[task] if quick else []), "trainer.progress=false", f"trainer.run_dir={run_dir}"]
    with initialize_config_dir(config_dir=str(REPO / "bixt" / "configs" / task), version_base=None):
        cfg = compose(config_name="config", overrides=overrides)
    importlib.import_module(f"bixt.tasks.{task}").train(cfg)
    return run_dir


def sample_inputs(folder: Path) -> dict[str, list[Path]]:
    """Held-out samples of the embedded sets as ordinary files (new seeds: never trained on)."""
    from bixt.data.partseg_shapes import SYNTHETIC_INFO, make_synthetic_partseg
    from bixt.data.scenes import make_scenes
    from bixt.data.shapes import generate_shapes
    folder.mkdir(parents=True, exist_ok=True)
    shapes, _ = generate_shapes(4, 32, seed=4242, num_classes=10)
    images = []
    for i, img in enumerate(shapes):
        images.append(folder / f"shape{i}.png")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(images[-1])
    scenes, _ = make_scenes(2, seed=4242, split="val")
    photos = []
    for i, img in enumerate(scenes):
        photos.append(folder / f"scene{i}.png")
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(photos[-1])
    clouds = []
    for i, shape in enumerate(make_synthetic_partseg(6, points=(1024, 1024), seed=4242, split="val")):
        name = SYNTHETIC_INFO.category_names[int(shape.category)]
        if name not in ("Chair", "Airplane"):
            continue
        (folder / name).mkdir(exist_ok=True)
        clouds.append(folder / name / f"cloud{i}.txt")
        np.savetxt(clouds[-1], np.c_[shape.pos.numpy(), shape.x.numpy()], fmt="%.4f")
    return {"images": images, "scenes": photos, "clouds": clouds}


def grid(pictures: list[Image.Image], columns: int, width: int = 200) -> Image.Image:
    tiles = [p.resize((width, round(p.height * width / p.width)), Image.NEAREST if p.width < width else Image.BICUBIC)
             for p in pictures]
    height = max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    out = Image.new("RGB", (columns * (width + 4) - 4, rows * (height + 4) - 4), "white")
    for i, tile in enumerate(tiles):
        out.paste(tile, ((i % columns) * (width + 4), (i // columns) * (height + 4)))
    return out


def stack(pictures: list[Image.Image]) -> Image.Image:
    """Pictures one below the other, centred."""
    out = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures) + 4 * (len(pictures) - 1)),
                    "white")
    y = 0
    for p in pictures:
        out.paste(p.convert("RGB"), ((out.width - p.width) // 2, y))
        y += p.height + 4
    return out


def save(img: Image.Image, name: str) -> None:
    path = OUT / name
    img.convert("P", palette=Image.ADAPTIVE, colors=128).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size // 1024} KB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "readme", help="where the runs are made / reused")
    p.add_argument("--quick", action="store_true", help="shorter runs (a smoke version of the pictures)")
    args = p.parse_args()
    from bixt.predict import load_model, predict
    from bixt.viz import write_attention
    OUT.mkdir(parents=True, exist_ok=True)
    work = args.runs / "inputs"
    shutil.rmtree(work, ignore_errors=True)
    inputs = sample_inputs(work)

    run = train("imagenet", args.runs / "imagenet", args.quick)
    rows, _ = predict(load_model(run), [str(p) for p in inputs["images"]], top_k=3)
    for row in rows:
        print(row["file"], row["labels"], [round(v, 3) for v in row["probs"]])
    written = write_attention(load_model(run, fast=False), [str(inputs["images"][0])], work / "viz_image",
                              layers=[-1], k=3, size=120)
    save(Image.open(written[0]), "attention_image.png")

    run = train("ade20k_semseg", args.runs / "ade20k_semseg", args.quick)
    rows, _ = predict(load_model(run), [str(p) for p in inputs["scenes"]], out_dir=str(work / "masks"))
    save(grid([Image.open(p) for row in rows for p in (row["file"], row["mask"], row["overlay"])], 3, 160),
         "segmentation.png")

    run = train("shapenet_partseg", args.runs / "shapenet_partseg", args.quick)
    rows, _ = predict(load_model(run), [str(p) for p in inputs["clouds"]], out_dir=str(work / "parts"))
    written = write_attention(load_model(run, fast=False), [str(inputs["clouds"][0])], work / "viz_points",
                              layers=[-1], k=2, size=180)
    parts = grid([Image.open(row["picture"]) for row in rows[:2]], 2, 240)
    save(stack([parts, Image.open(written[0])]), "points.png")


if __name__ == "__main__":
    sys.exit(main())
