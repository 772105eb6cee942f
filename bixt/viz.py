"""``python -m bixt.viz attention MODEL INPUT... --out DIR [--layers 0,-1] [--k 4]``: what the latents read.

MODEL as for :mod:`bixt.predict` (a run directory, a timm folder, a registered name with
``--checkpoint``). For every chosen layer, the encoder's cross-attention (``return_attention=True``,
averaged over heads) is drawn over the input:

- latent -> token: the attention of each of the ``k`` most focused latents (highest peak) over the
  tokens, and one map of which latent reads each token most;
- token -> latent: which latent each token reads most (layers that refine the tokens only: a
  one-sided last layer and every iterative layer have no such side).

Images get PNG heat maps over the picture (``<stem>_layer<i>.png``), point clouds PNG renderings of
coloured points, text (ListOps expressions, AAN documents) an HTML page of highlighted tokens.
Rendering uses PIL only. The maps come from :func:`attention_maps` (one input) as
:class:`AttentionMaps`; each latent's attention over the real tokens sums to one.
"""
from __future__ import annotations

import argparse
import html
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from bixt.predict import (gather_inputs, image_transform, listops_ids, open_image, palette, part_category,
                          point_inputs, read_points, render_points, segmentation_input)
from bixt.trained import Loaded, PredictError, load_model, partseg_info

log = logging.getLogger("bixt.viz")

__all__ = ["AttentionMaps", "attention_maps", "write_attention", "colormap", "main"]

#: anchor colours of the heat map (dark violet -> orange -> pale yellow)
_HEAT = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) uint8 heat colours."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0, 1) * (len(_HEAT) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_HEAT) - 2)
    t = (v - lo)[..., None]
    return (_HEAT[lo] * (1 - t) + _HEAT[lo + 1] * t).round().astype(np.uint8)


@dataclass
class AttentionMaps:
    """One input's cross-attention, head-averaged, per chosen layer.

    ``latents_to_tokens[j]`` (L, N): each latent's attention over the N tokens (rows sum to one over the
    real tokens; None in a layer that updates the tokens only, as a segmenter's last); ``tokens_to_latents[j]``
    (L, N) or None: each token's attention over the L latents (columns sum to one). ``kind`` is "image", "points" or "text"; ``context`` holds what rendering
    needs (the picture and token grid, the points and token centres, the token strings)."""
    layers: list[int]
    latents_to_tokens: list[Optional[torch.Tensor]]
    tokens_to_latents: list[Optional[torch.Tensor]]
    kind: str
    context: dict[str, Any] = field(default_factory=dict)


def _layers(requested: Optional[Sequence[int]], depth: int) -> list[int]:
    chosen = list(requested) if requested else [0, depth - 1]
    bad = [i for i in chosen if not -depth <= i < depth]
    if bad:
        raise PredictError(f"--layers {bad}: this encoder has layers 0..{depth - 1} (negative: from the last)")
    return sorted({i % depth for i in chosen})


def _encode(encoder, tokens, mask, layers):
    _, _, maps = encoder(tokens, token_mask=mask, return_attention=True)
    chosen = _layers(layers, len(maps))
    to_tokens = [None if maps[i][0] is None else maps[i][0][0].float().mean(0).cpu() for i in chosen]
    to_latents = [None if maps[i][1] is None else maps[i][1][0].float().mean(0).cpu() for i in chosen]
    return chosen, to_tokens, to_latents


@torch.no_grad()
def attention_maps(loaded: Loaded, path: str | Path, *, layers: Optional[Sequence[int]] = None,
                   category: Optional[str] = None) -> AttentionMaps:
    """The cross-attention of ``loaded``'s encoder on one input file."""
    from bixt.tokenizers.image import image_token_grid
    path = Path(path)
    model = loaded.model
    if loaded.task in ("image", "segmentation"):
        try:
            img = open_image(path)
        except Exception as err:  # noqa: BLE001  (PIL raises many kinds)
            raise PredictError(f"{path} is not an image ({type(err).__name__}); this model reads images") from None
        if loaded.task == "segmentation":
            from bixt.models.segmentation import _pad_to  # as segment() pads: bottom/right to the stride
            backbone, stride = model.backbone, model.stride
            x = segmentation_input(loaded, img).to(loaded.device)
            x = _pad_to(x, -(-x.shape[-2] // stride) * stride, -(-x.shape[-1] // stride) * stride)
        else:
            backbone = model
            x = image_transform(loaded)(img)[None].to(loaded.device)
        grid = image_token_grid(x, backbone.patch_embed.stride)
        chosen, to_tok, to_lat = _encode(backbone.encoder, backbone.tokenize(x), None, layers)
        mean = torch.tensor(loaded.input_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(loaded.input_cfg["std"]).view(3, 1, 1)
        shown = ((x[0].cpu() * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return AttentionMaps(chosen, to_tok, to_lat, "image", {"image": Image.fromarray(shown), "grid": tuple(grid)})
    if loaded.task in ("points", "partseg"):
        try:
            cloud = read_points(path)
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise PredictError(f"{path}: {str(err).splitlines()[0]}; this model reads point clouds") from None
        index = part_category(partseg_info(loaded.cfg), path, category) if loaded.task == "partseg" else None
        batch = point_inputs(loaded, cloud, index)
        point_tokens = model.tokenizer(batch["pos"], batch["point_mask"], batch["features"])
        chosen, to_tok, to_lat = _encode(model.encoder, point_tokens.tokens, point_tokens.token_mask, layers)
        return AttentionMaps(chosen, to_tok, to_lat, "points", {
            "points": batch["pos"][0].cpu().numpy(), "centres": point_tokens.centres[0].cpu().numpy()})
    text = _first_text(path)
    sequence_encoder = model.document_encoder if loaded.task == "retrieval" else model.encoder
    if loaded.task == "listops":
        from bixt.data.listops import vocabulary
        vocab = vocabulary(bool((loaded.cfg.get("data") or {}).get("keep_parens", False)))
        ids = torch.as_tensor(listops_ids(vocab, text), dtype=torch.long)[None]
        strings = [vocab.tokens[i - 1] + " " for i in ids[0].tolist()]
    else:
        from bixt.tokenizers.text import ByteTokenizer
        encoded = ByteTokenizer(int((loaded.cfg.get("data") or {}).get("max_len") or 4000))([text.split("\t")[-1]])
        ids = encoded["input_ids"]
        strings = [bytes([i - 1]).decode("latin-1") for i in ids[0].tolist()]
    ids = ids.to(loaded.device)
    mask = ids != 0
    chosen, to_tok, to_lat = _encode(sequence_encoder.encoder, sequence_encoder.embed(ids), mask, layers)
    return AttentionMaps(chosen, to_tok, to_lat, "text", {"tokens": strings})


def _first_text(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, OSError) as err:
        raise PredictError(f"{path} is not a text file ({type(err).__name__}); this model reads text") from None
    if not lines:
        raise PredictError(f"{path} holds no text")
    return lines[0]


def focused_latents(to_tokens: torch.Tensor, k: int) -> list[int]:
    """The ``k`` latents whose attention over the tokens peaks highest (the most focused readers)."""
    return to_tokens.max(dim=1).values.topk(min(k, to_tokens.shape[0])).indices.tolist()


# ----------------------------------------------------------------------------- rendering
def _labelled(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(img, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def _row(panels: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out


def _image_panels(maps: AttentionMaps, j: int, k: int, size: int) -> Image.Image:
    picture = maps.context["image"]
    scale = size / max(picture.size)
    base = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BICUBIC)
    h, w = maps.context["grid"]
    to_tok = maps.latents_to_tokens[j]

    def over(rgb: np.ndarray, nearest: bool) -> Image.Image:
        layer = Image.fromarray(rgb.reshape(h, w, 3)).resize(base.size, Image.NEAREST if nearest else Image.BILINEAR)
        return Image.blend(base, layer, 0.6)

    panels = [_labelled(base, "input")]
    to_lat = maps.tokens_to_latents[j]
    colours = palette((to_tok if to_tok is not None else to_lat).shape[0])
    if to_tok is not None:
        for latent in focused_latents(to_tok, k):
            a = to_tok[latent].numpy()
            panels.append(_labelled(over(colormap(a / max(a.max(), 1e-12)), False), f"latent {latent}"))
        panels.append(_labelled(over(colours[to_tok.argmax(0).numpy()], True), "read most by"))
    if to_lat is not None:
        panels.append(_labelled(over(colours[to_lat.argmax(0).numpy()], True), "token reads"))
    return _row(panels)


def _point_panels(maps: AttentionMaps, j: int, k: int, size: int) -> Image.Image:
    points, centres = maps.context["points"], maps.context["centres"]
    nearest = torch.cdist(torch.from_numpy(points), torch.from_numpy(centres)).argmin(1).numpy()  # token per point
    to_tok, to_lat = maps.latents_to_tokens[j], maps.tokens_to_latents[j]
    panels = []
    colours = palette((to_tok if to_tok is not None else to_lat).shape[0])
    if to_tok is not None:
        for latent in focused_latents(to_tok, k):
            a = to_tok[latent].numpy()
            panels.append(_labelled(render_points(points, colormap(a / max(a.max(), 1e-12))[nearest], size),
                                    f"latent {latent}"))
        panels.append(_labelled(render_points(points, colours[to_tok.argmax(0).numpy()][nearest], size), "read most by"))
    if to_lat is not None:
        panels.append(_labelled(render_points(points, colours[to_lat.argmax(0).numpy()][nearest], size), "token reads"))
    return _row(panels)


def _text_html(maps: AttentionMaps, path: Path, k: int) -> str:
    tokens = maps.context["tokens"]

    def spans(colours: Sequence[str]) -> str:
        return "".join(f'<span style="background:{c}">{html.escape(t)}</span>' for t, c in zip(tokens, colours))

    parts = [f"<html><head><meta charset='utf-8'><title>attention: {html.escape(str(path))}</title></head>"
             "<body style='font-family:monospace;white-space:pre-wrap'>", f"<h2>{html.escape(str(path))}</h2>"]
    for j, layer in enumerate(maps.layers):
        to_tok = maps.latents_to_tokens[j]
        parts.append(f"<h3>layer {layer}: latent &rarr; token</h3>")
        for latent in focused_latents(to_tok, k):
            a = to_tok[latent].numpy()
            a = a / max(a.max(), 1e-12)
            parts.append(f"<p><b>latent {latent}</b><br>" + spans([f"rgba(255,110,0,{v:.3f})" for v in a]) + "</p>")
        colours = [f"rgb{tuple(int(c) for c in rgb)}" for rgb in palette(to_tok.shape[0])]
        parts.append("<p><b>read most by (latent colour)</b><br>" + spans([colours[i] for i in to_tok.argmax(0)]) + "</p>")
        to_lat = maps.tokens_to_latents[j]
        if to_lat is not None:
            parts.append(f"<h3>layer {layer}: token &rarr; latent</h3><p>" +
                         spans([colours[i] for i in to_lat.argmax(0)]) + "</p>")
    return "\n".join(parts + ["</body></html>"])


def write_attention(loaded: Loaded, inputs: Sequence[str], out_dir: str | Path, *,
                    layers: Optional[Sequence[int]] = None, k: int = 4, size: int = 160,
                    category: Optional[str] = None) -> list[Path]:
    """Draw the attention of every input into ``out_dir``: one PNG per image / point cloud and layer
    (``<stem>_layer<i>.png``), one HTML page per text file; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in gather_inputs(inputs):
        maps = attention_maps(loaded, path, layers=layers, category=category)
        if maps.kind == "text":
            target = out_dir / f"{path.stem}_attention.html"
            target.write_text(_text_html(maps, path, k), encoding="utf-8")
            written.append(target)
            continue
        draw = _image_panels if maps.kind == "image" else _point_panels
        for j, layer in enumerate(maps.layers):
            target = out_dir / f"{path.stem}_layer{layer}.png"
            draw(maps, j, k, size).save(target, optimize=True)
            written.append(target)
    return written


def main(argv: Optional[Sequence[str]] = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m bixt.viz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attention", help="cross-attention maps over the input")
    a.add_argument("model", help="a run directory, a timm hub folder, or a registered model name (with --checkpoint)")
    a.add_argument("inputs", nargs="+", help="files, folders or globs")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--checkpoint")
    a.add_argument("--layers", help="comma-separated layer indices (negative: from the last); default: first and last")
    a.add_argument("--k", type=int, default=4, help="latents drawn per layer (the most focused)")
    a.add_argument("--size", type=int, default=160, help="panel size in pixels")
    a.add_argument("--device", default="cpu")
    a.add_argument("--category", help="object category (part segmentation; default: the parent folder)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        layers = [int(v) for v in args.layers.split(",")] if args.layers else None
    except ValueError:
        raise SystemExit(f"error: --layers {args.layers!r}: give comma-separated integers, e.g. 0,-1") from None
    try:
        loaded = load_model(args.model, checkpoint=args.checkpoint, device=args.device, fast=False)
        written = write_attention(loaded, args.inputs, args.out, layers=layers, k=args.k, size=args.size,
                                  category=args.category)
    except (PredictError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{len(written)} file(s) written to {args.out}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()
