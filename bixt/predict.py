"""``python -m bixt.predict MODEL INPUT... [--out FILE]``: run a trained model on your own files.

MODEL is a run directory (its ``config.yaml``, ``best.pth`` or ``last.pth``, the class names stored
in the checkpoint), a folder in timm's hub format (:mod:`bixt.export`), or a registered timm name
with ``--checkpoint FILE`` (official weights get ImageNet's class names, as timm ships them).
INPUT: files, folders or globs. What a model reads follows its task:

=================  ===========================================================================
image classifier   images: the top-k classes with names and probabilities
segmenter          images: a palette mask PNG and an overlay per image, at the image's own size
point classifier   point clouds (``.txt`` rows ``x,y,z[,nx,ny,nz]`` as ModelNet / ShapeNetPart, ``.npy``)
part segmenter     point clouds: the part label of every point, and a rendered PNG
ListOps            text files, one expression per line (the result 0..9)
AAN retrieval      ``.tsv`` files, one document pair per row (the last two columns): match or not
=================  ===========================================================================

The model is rebuilt from the run's saved config (``bixt.tasks.kit.build_model``) and its inputs
prepared by the run's evaluation transform, so a run's images get the logits of its own
evaluation. On the CPU the model runs through :func:`bixt.accel.optimize`, as the engine evaluates.

    from bixt.predict import load_model, predict
    loaded = load_model("runs/imagenet/2026-01-01_00-00-00")
    rows, skipped = predict(loaded, ["photos/"], top_k=5)
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from bixt.trained import Loaded, PredictError, image_input_config, load_model, partseg_info

log = logging.getLogger("bixt.predict")

__all__ = ["Loaded", "PredictError", "load_model", "predict", "gather_inputs", "image_input_config", "main"]

POINT_SUFFIXES = (".txt", ".npy", ".pts", ".xyz")
TEXT_SUFFIXES = (".txt", ".tsv", ".csv")


# ----------------------------------------------------------------------------- inputs
def gather_inputs(inputs: Sequence[str], suffixes: Optional[Sequence[str]] = None) -> list[Path]:
    """Files, folders (walked, sorted, hidden entries skipped) and globs, in the order given."""
    files: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches:
            raise PredictError(f"INPUT {item!r} matches no file")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and not any(
                    part.startswith(".") for part in p.relative_to(path).parts))
                files += [p for p in found if suffixes is None or p.suffix.lower() in suffixes]
            elif path.is_file():
                files.append(path)
            else:
                raise PredictError(f"INPUT {item!r} is neither a file nor a folder")
    return files


class Skipped(list):
    """Inputs that were not of the expected kind: (file, why)."""

    def add(self, path: Path, why: str, strict: bool) -> None:
        if strict:
            raise PredictError(f"{path}: {why} (without --strict such files are skipped and counted)")
        log.warning("skipped %s: %s", path, why)
        self.append((str(path), why))


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="file", disable=total < 32 or not sys.stderr.isatty(), leave=False)


def _with_progress(files: list[Path]) -> Iterator[Path]:
    bar = _progress(len(files), "predict")
    for path in files:
        yield path
        bar.update(1)
    bar.close()


def open_image(path: Path) -> Image.Image:
    from bixt.data.image_files import open_rgb
    return open_rgb(str(path))


def image_transform(loaded: Loaded, native: bool = False):
    from timm.data import create_transform
    c = loaded.input_cfg
    if native:
        from torchvision.transforms import functional as TF
        return lambda img: TF.normalize(TF.to_tensor(img), c["mean"], c["std"])
    return create_transform(c["input_size"][1:], is_training=False, interpolation=c["interpolation"],
                            crop_pct=c["crop_pct"], crop_mode=c.get("crop_mode", "center"), mean=c["mean"],
                            std=c["std"])


def read_points(path: Path) -> np.ndarray:
    """(P, C >= 3) float32 rows of a point-cloud file (``.npy``, or text rows separated by commas or spaces)."""
    if path.suffix.lower() == ".npy":
        rows = np.load(path, allow_pickle=False)
    else:
        text = path.read_text(errors="strict").replace(",", " ")
        rows = np.loadtxt(text.splitlines(), dtype=np.float32, ndmin=2)
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] < 3 or rows.shape[0] < 1 or not np.isfinite(rows).all():
        raise ValueError(f"not a point cloud (need finite rows x,y,z[,...]; got shape {rows.shape})")
    return rows


# ----------------------------------------------------------------------------- prediction
def _topk(loaded: Loaded, logits: torch.Tensor, top_k: int) -> tuple[list, list, list]:
    probs = logits.float().softmax(-1)
    k = min(top_k, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    names = loaded.classes or [str(i) for i in range(probs.shape[-1])]
    return ([[names[i] for i in row] for row in indices.tolist()], values.tolist(), indices.tolist())


@torch.no_grad()
def predict(loaded: Loaded, inputs: Sequence[str], *, top_k: int = 5, batch_size: int = 32, strict: bool = False,
            out_dir: Optional[str] = None, native_size: bool = False, category: Optional[str] = None,
            ) -> tuple[list[dict], Skipped]:
    """Rows (one per input: file, predictions) and the skipped inputs. ``out_dir`` receives the masks
    and renderings of dense tasks (default: beside ``--out``, else ``predictions/``)."""
    skipped = Skipped()
    task = loaded.task
    files = gather_inputs(inputs)
    runner = {"image": _predict_images, "segmentation": _predict_segmentation, "points": _predict_points,
              "partseg": _predict_partseg, "listops": _predict_listops, "retrieval": _predict_retrieval}[task]
    kwargs = dict(top_k=top_k, batch_size=batch_size, strict=strict, out_dir=Path(out_dir or "predictions"),
                  native_size=native_size, category=category)
    rows = runner(loaded, files, skipped, **kwargs)
    if not rows and skipped:
        raise PredictError(f"none of the {len(skipped)} input(s) is {loaded.modality}, what this {task} model "
                           f"reads (first: {skipped[0][0]}: {skipped[0][1]})")
    return rows, skipped


def _read_images(loaded: Loaded, files: list[Path], skipped: Skipped, strict: bool) -> Iterator[tuple[Path, Image.Image]]:
    for path in files:
        try:
            yield path, open_image(path)
        except Exception as err:  # noqa: BLE001  (PIL raises many kinds for a file that is no image)
            skipped.add(path, f"not an image ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                        f"; this model reads {loaded.modality}", strict)


def _predict_images(loaded: Loaded, files, skipped, *, top_k, batch_size, strict, native_size, **_) -> list[dict]:
    transform = image_transform(loaded, native=native_size)
    rows: list[dict] = []
    stride = int(getattr(getattr(loaded.model, "patch_embed", None), "stride", 1) or 1)
    if native_size and not getattr(loaded.model, "dynamic_img_size", False):
        raise PredictError("--native-size needs a model with resolution-adaptive positions (dynamic_img_size, "
                           "e.g. the *_ft384 variants); this one has a fixed input size")
    bar = _progress(len(files), "predict")
    pending: list[tuple[Path, torch.Tensor]] = []

    def flush():
        if not pending:
            return
        batch = torch.stack([t for _, t in pending]).to(loaded.device)
        logits = loaded.model(batch)
        labels, probs, indices = _topk(loaded, logits, top_k)
        for (path, _), lab, pr, idx in zip(pending, labels, probs, indices):
            rows.append({"file": str(path), "labels": lab, "probs": pr, "indices": idx})
        bar.update(len(pending))
        pending.clear()

    for path, img in _read_images(loaded, files, skipped, strict):
        if native_size:  # each image at its own size, rounded to the token stride, alone in its batch
            w, h = img.size
            img = img.resize((max(stride, round(w / stride) * stride), max(stride, round(h / stride) * stride)),
                             Image.BICUBIC)
            flush()
        pending.append((path, transform(img)))
        if native_size or len(pending) == batch_size:
            flush()
    flush()
    bar.close()
    return rows


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, distinct and deterministic (class 0 first)."""
    hues = (np.arange(n) * 0.618034) % 1.0
    import colorsys
    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.65, 0.95)] for h in hues], dtype=np.uint8)


def mask_image(mask: np.ndarray, num_classes: int) -> Image.Image:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(palette(max(num_classes, 1)).flatten().tolist())
    return img


def segmentation_input(loaded: Loaded, img: Image.Image) -> torch.Tensor:
    """An image as the run's evaluation feeds it (keep-ratio resize to ``data.test_scale``, if set, and
    normalisation: :class:`~bixt.data.seg_transforms.SegEvalTransform`), (1, 3, H', W')."""
    from bixt.data.seg_transforms import SegEvalTransform
    data = loaded.cfg.get("data") or {}
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    transform = SegEvalTransform(scale=data.get("test_scale"), mean=loaded.input_cfg["mean"],
                                 std=loaded.input_cfg["std"])
    return transform(pixels, torch.zeros(pixels.shape[-2:], dtype=torch.long))[0][None]


def _predict_segmentation(loaded: Loaded, files, skipped, *, batch_size, strict, out_dir, **_) -> list[dict]:
    import torch.nn.functional as F
    from bixt.models.segmentation import segment
    from bixt.tasks.segmentation import check_sizes
    eval_cfg = loaded.cfg.get("eval") or {}
    window, step = check_sizes(OmegaConf.create(loaded.cfg), int(loaded.model.stride))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = loaded.classes or []
    rows = []
    for path, img in _read_images(loaded, files, skipped, strict):
        x = segmentation_input(loaded, img).to(loaded.device)
        logits = segment(loaded.model, x, mode=eval_cfg.get("mode", "whole"), crop_size=window, crop_stride=step)
        if logits.shape[-2:] != (img.height, img.width):  # scored at the image's own size, as the run's labels
            logits = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].cpu().numpy()
        n = logits.shape[1]
        stem = out_dir / path.stem
        coloured = mask_image(mask, n)
        coloured.save(f"{stem}_mask.png")
        Image.blend(img, coloured.convert("RGB"), 0.5).save(f"{stem}_overlay.png")
        present, counts = np.unique(mask, return_counts=True)
        rows.append({"file": str(path), "mask": f"{stem}_mask.png", "overlay": f"{stem}_overlay.png",
                     "size": [img.width, img.height],
                     "classes": {(names[i] if i < len(names) else str(i)): round(float(c) / mask.size, 4)
                                 for i, c in zip(present.tolist(), counts.tolist())}})
    return rows


def _point_files(loaded: Loaded, files, skipped, strict) -> Iterator[tuple[Path, np.ndarray]]:
    for path in _with_progress(files):
        if path.suffix.lower() not in POINT_SUFFIXES:
            skipped.add(path, f"not a point cloud file ({'/'.join(POINT_SUFFIXES)}); this model reads {loaded.modality}",
                        strict)
            continue
        try:
            yield path, read_points(path)
        except (ValueError, UnicodeDecodeError, OSError) as err:
            skipped.add(path, f"{str(err).splitlines()[0]}; this model reads {loaded.modality}", strict)


def point_inputs(loaded: Loaded, cloud: np.ndarray, category: Optional[int] = None) -> dict[str, torch.Tensor]:
    """A cloud's model inputs as the run's evaluation prepares them: ``pos`` (1, P, 3), ``point_mask``,
    ``features`` (normals, when the model reads them) and, for part segmentation, ``category``."""
    data = loaded.cfg.get("data") or {}
    normals = bool(data.get("normals"))
    if normals and cloud.shape[1] < 6:
        raise ValueError("has no normals (x,y,z,nx,ny,nz), which this model reads")
    if loaded.task == "points":
        from bixt.data.modelnet import PointClassificationDataset
        limit = int(data.get("num_points") or 0)
        cloud = cloud[:limit] if limit else cloud  # ModelNet's protocol: the first num_points rows
        six = np.zeros((cloud.shape[0], 6), np.float32)
        six[:, :min(6, cloud.shape[1])] = cloud[:, :6]
        sample = PointClassificationDataset(torch.from_numpy(six)[None], torch.zeros(1), loaded.classes or [],
                                            normals=normals)[0][0][None]
        batch = {"pos": sample[..., :3], "point_mask": None, "features": sample[..., 3:] if normals else None}
    else:
        from torch_geometric.data import Data
        from bixt.data.partseg import PointCloudDataset, build_point_transform, collate_point_clouds
        pos = torch.from_numpy(cloud[:, :3].copy())
        sample = Data(pos=pos, x=torch.from_numpy(cloud[:, 3:6].copy()) if normals else None,
                      y=torch.zeros(len(pos), dtype=torch.long), category=torch.tensor([category or 0]))
        data = PointCloudDataset([sample], transform=build_point_transform(None, train=False), include_normals=normals)
        batch = collate_point_clouds([data[0]])
        batch.pop("labels")
        batch.setdefault("features", None)
    return {k: (v.to(loaded.device) if v is not None else None) for k, v in batch.items()}


def _predict_points(loaded: Loaded, files, skipped, *, top_k, strict, **_) -> list[dict]:
    rows = []
    for path, cloud in _point_files(loaded, files, skipped, strict):
        try:
            batch = point_inputs(loaded, cloud)
        except ValueError as err:
            skipped.add(path, str(err), strict)
            continue
        pos, features = batch["pos"], batch["features"]
        logits = loaded.model(pos if features is None else torch.cat([pos, features], -1))
        labels, probs, indices = _topk(loaded, logits, top_k)
        rows.append({"file": str(path), "labels": labels[0], "probs": probs[0], "indices": indices[0]})
    return rows


def part_category(info, path: Path, category: Optional[str]) -> int:
    name = category or path.parent.name
    index = _category_index(info, name)
    if index is None:
        raise PredictError(f"{path}: the part segmenter needs the object category; {name!r} is not one of "
                           f"{list(info.category_names)}: give --category NAME")
    return index


def _predict_partseg(loaded: Loaded, files, skipped, *, strict, out_dir, category, **_) -> list[dict]:
    info = partseg_info(loaded.cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, cloud in _point_files(loaded, files, skipped, strict):
        index = part_category(info, path, category)
        try:
            batch = point_inputs(loaded, cloud, index)
        except ValueError as err:
            skipped.add(path, str(err), strict)
            continue
        logits = loaded.model(batch["pos"], batch["point_mask"], batch["features"], batch["category"])[0]
        allowed = torch.full((logits.shape[-1],), float("-inf"))
        allowed[list(info.seg_classes[index])] = 0.0  # only the category's own parts, as the metric scores them
        labels = (logits.float().cpu() + allowed).argmax(-1).numpy()
        picture = f"{out_dir / path.stem}_parts.png"
        render_points(cloud[:, :3], palette(info.num_classes)[labels]).save(picture)
        rows.append({"file": str(path), "category": info.category_names[index], "part_labels": labels.tolist(),
                     "picture": picture})
    return rows


def _category_index(info, name: str) -> Optional[int]:
    lowered = [c.lower() for c in info.category_names]
    return lowered.index(name.lower()) if name.lower() in lowered else None


def render_points(points: np.ndarray, colours: np.ndarray, size: int = 320, elev: float = 20.0,
                  azim: float = 35.0) -> Image.Image:
    """A small orthographic rendering of coloured points (PIL only), far points drawn first."""
    from PIL import ImageDraw
    p = points - points.mean(0)
    p = p / max(float(np.abs(p).max()), 1e-9)
    a, e = math.radians(azim), math.radians(elev)
    rot_y = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    q = p @ rot_y.T @ rot_x.T
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    scale = size * 0.42
    for i in np.argsort(q[:, 2]):
        x, y = size / 2 + q[i, 0] * scale, size / 2 - q[i, 1] * scale
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=tuple(int(c) for c in colours[i]))
    return img


def _text_rows(loaded: Loaded, files, skipped, strict) -> Iterator[tuple[Path, int, str]]:
    for path in _with_progress(files):
        if path.suffix.lower() not in TEXT_SUFFIXES:
            skipped.add(path, f"not a text file ({'/'.join(TEXT_SUFFIXES)}); this model reads {loaded.modality}", strict)
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (UnicodeDecodeError, OSError) as err:
            skipped.add(path, f"not text ({type(err).__name__}); this model reads {loaded.modality}", strict)
            continue
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield path, number, line


def listops_ids(vocab, line: str) -> np.ndarray:
    """A ListOps expression's ids; brackets may touch their neighbours (``[MAX 2 9]``)."""
    return vocab.encode(line.replace("]", " ] ").replace("(", " ( ").replace(")", " ) "))


def _predict_listops(loaded: Loaded, files, skipped, *, top_k, batch_size, strict, **_) -> list[dict]:
    from bixt.data.listops import vocabulary
    from bixt.tokenizers.text import pad_sequences
    data = loaded.cfg.get("data") or {}
    vocab, max_len = vocabulary(bool(data.get("keep_parens", False))), int(data.get("max_len") or 2000)
    rows, pending = [], []

    def flush():
        if pending:
            ids, _ = pad_sequences([p[2] for p in pending], None)
            labels, probs, indices = _topk(loaded, loaded.model(ids.to(loaded.device)), top_k)
            rows.extend({"file": str(p), "line": n, "labels": lab, "probs": pr}
                        for (p, n, _), lab, pr in zip(pending, labels, probs))
            pending.clear()

    for path, number, line in _text_rows(loaded, files, skipped, strict):
        try:
            ids = listops_ids(vocab, line)
        except ValueError as err:
            skipped.add(Path(f"{path}:{number}"), f"not a ListOps expression ({str(err).splitlines()[0]})", strict)
            continue
        if len(ids) > max_len:
            skipped.add(Path(f"{path}:{number}"), f"{len(ids)} tokens, longer than the model's {max_len}", strict)
            continue
        pending.append((path, number, ids))
        if len(pending) == batch_size:
            flush()
    flush()
    return rows


def _predict_retrieval(loaded: Loaded, files, skipped, *, batch_size, strict, **_) -> list[dict]:
    from bixt.tokenizers.text import ByteTokenizer
    data = loaded.cfg.get("data") or {}
    tok = ByteTokenizer(int(data.get("max_len") or 4000))
    rows, pending = [], []

    def flush():
        if pending:
            a, b = tok([p[2] for p in pending]), tok([p[3] for p in pending])
            logits = loaded.model(a["input_ids"], a["token_mask"], b["input_ids"], b["token_mask"])
            probs = logits.float().softmax(-1)[:, 1].tolist()
            rows.extend({"file": str(p[0]), "line": p[1], "labels": ["match" if q >= 0.5 else "no match"],
                         "probs": [q if q >= 0.5 else 1 - q], "match_prob": q} for p, q in zip(pending, probs))
            pending.clear()

    for path, number, line in _text_rows(loaded, files, skipped, strict):
        cells = line.split("\t")
        if len(cells) < 2:
            skipped.add(Path(f"{path}:{number}"), "not a document pair (two tab-separated columns)", strict)
            continue
        pending.append((path, number, cells[-2], cells[-1]))
        if len(pending) == batch_size:
            flush()
    flush()
    return rows


# ----------------------------------------------------------------------------- output
def write_rows(rows: list[dict], out: str) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, keys)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    else:
        raise PredictError(f"--out {out}: give a .jsonl or .csv file")


def describe(row: dict) -> str:
    where = row["file"] + (f":{row['line']}" if "line" in row else "")
    if "probs" in row:
        return where + "  " + "  ".join(f"{n} {p:.3f}" for n, p in zip(row["labels"], row["probs"]))
    if "mask" in row:
        return f"{where}  -> {row['mask']}, {row['overlay']}"
    return f"{where}  {row.get('category', '')} -> {row.get('picture', '')}"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bixt.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a run directory, a timm hub folder, or a registered model name (with --checkpoint)")
    p.add_argument("inputs", nargs="+", help="files, folders or globs")
    p.add_argument("--checkpoint", help="weights file (for a model name; for a run: instead of best.pth/last.pth)")
    p.add_argument("--out", help="write the predictions to FILE (.jsonl or .csv); masks/renders go beside it")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--strict", action="store_true", help="a file of the wrong kind is an error (default: skipped)")
    p.add_argument("--no-fast", dest="fast", action="store_false", help="plain eager ops instead of bixt.accel on CPU")
    p.add_argument("--native-size", action="store_true", help="each image at its own size (resolution-adaptive models)")
    p.add_argument("--category", help="object category of the clouds (part segmentation; default: the parent folder)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from bixt.data.errors import DataError
    try:
        loaded = load_model(args.model, checkpoint=args.checkpoint, device=args.device, fast=args.fast)
        out_dir = Path(args.out).with_suffix("") if args.out else Path("predictions")
        rows, skipped = predict(loaded, args.inputs, top_k=args.top_k, batch_size=args.batch_size, strict=args.strict,
                                out_dir=str(out_dir), native_size=args.native_size, category=args.category)
        if args.out:
            write_rows(rows, args.out)
    except (PredictError, DataError, FileNotFoundError) as err:
        raise SystemExit(f"error: {getattr(err, 'message', None) or err}") from None
    for row in rows:
        print(describe(row))
    print(f"{len(rows)} prediction(s)" + (f", {len(skipped)} file(s) skipped (not {loaded.modality})" if skipped else "")
          + (f"; written to {args.out}" if args.out else ""), file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
