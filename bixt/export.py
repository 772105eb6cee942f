"""``python -m bixt.export RUN --format timm|onnx --out DIR``: a trained run in a form that travels.

``--format timm`` writes timm's hub layout: ``config.json`` (``architecture``, ``model_args``, the
run's evaluation transform as ``pretrained_cfg`` input size / interpolation / crop / mean / std,
``label_names``) and ``model.safetensors``, so that anywhere with timm and bixt installed::

    model = timm.create_model("local-dir:DIR", pretrained=True)   # the run's model, same outputs
    cfg = timm.data.resolve_data_config({}, model=model)          # the run's evaluation transform

and ``python -m bixt.predict DIR IMAGES...`` work on it. The export is checked on the spot: the
folder is reloaded through timm and its logits compared with the run's model (within 1e-6).
``--format onnx`` writes ``DIR/model.onnx`` (batch and, for resolution-adaptive models, image size
dynamic) and checks it in onnxruntime against eager PyTorch (within 1e-4).

Image classifiers only: timm's hub format describes timm models. Segmentation, point and text
runs travel as their run directory (``config.yaml`` + ``best.pth``), which ``bixt.predict`` and
``bixt.viz`` read directly.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from bixt.trained import PredictError, load_model

log = logging.getLogger("bixt.export")

__all__ = ["export_timm", "export_onnx", "timm_model_args", "main"]

#: the registered variant a run built with ``model.model_name: null`` is expressed through (every
#: architecture argument is given explicitly in ``model_args``, so its defaults never apply)
GENERIC_ARCHITECTURE = "bixt_ti_l64_p16"
TIMM_TOLERANCE = 1e-6
ONNX_TOLERANCE = 1e-4


def timm_model_args(model_cfg: dict) -> tuple[str, dict[str, Any]]:
    """``(architecture, model_args)`` that ``timm.create_model`` rebuilds a run's image classifier from:
    the translation :func:`bixt.models.factory.image_classifier` makes, minus what only training uses."""
    from bixt.models.factory import encoder_kwargs
    known = {"_target_", "model_name", "img_size", "patch_size", "drop_path_rate", "encoder", "pretrained", "checkpoint",
             "num_classes"}
    args = {k: v for k, v in model_cfg.items() if k not in known}
    args.update(encoder_kwargs(model_cfg.get("encoder")))
    args["img_size"] = int(model_cfg.get("img_size") or 224)
    if model_cfg.get("patch_size") is not None:
        args["patch_size"] = int(model_cfg["patch_size"])
    for key in ("drop_rate", "drop_path_rate", "token_drop_path_rate"):  # training-only: the export is for inference
        args.pop(key, None)
    return model_cfg.get("model_name") or GENERIC_ARCHITECTURE, args


def _image_run(run: str | Path):
    loaded = load_model(run, fast=False)
    if loaded.task != "image" or not loaded.cfg:
        raise PredictError(f"{run}: bixt.export writes image-classifier runs (this is a {loaded.task} "
                           f"{'run' if loaded.cfg else 'model, not a run directory'}); other runs travel as their run "
                           "directory (config.yaml + best.pth), which bixt.predict and bixt.viz read")
    return loaded


def _probe(loaded, batch: int = 2) -> torch.Tensor:
    size = loaded.input_cfg["input_size"]
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def export_timm(run: str | Path, out: str | Path) -> Path:
    """Write ``out/config.json`` + ``out/model.safetensors`` for an image-classifier run; checks that
    ``timm.create_model("local-dir:out", pretrained=True)`` gives the run's logits within 1e-6."""
    import timm
    from timm.models import save_for_hf
    loaded = _image_run(run)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PredictError(f"--out {out} exists and is not empty: give a new folder (one .safetensors per folder)")
    architecture, args = timm_model_args(loaded.cfg["model"])
    model = timm.create_model(architecture, pretrained=False, num_classes=loaded.model.num_classes, **args).eval()
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    input_cfg = {**loaded.input_cfg, "input_size": tuple(loaded.input_cfg["input_size"])}
    save_for_hf(model, str(out), model_config={"label_names": list(loaded.classes or [])},
                data_config=input_cfg, safe_serialization=True)
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = _probe(loaded)
    diff = float((reloaded(x) - loaded.model(x)).abs().max())
    if diff > TIMM_TOLERANCE:
        raise RuntimeError(f"the timm folder {out} gives logits {diff:.2e} away from the run's model (> {TIMM_TOLERANCE})")
    log.info("wrote %s (%s, %d classes); timm local-dir reload matches within %.1e", out, architecture,
             model.num_classes, diff)
    return out


@torch.no_grad()
def export_onnx(run: str | Path, out: str | Path) -> Path:
    """Write ``out/model.onnx`` for an image-classifier run and check it in onnxruntime (within 1e-4)."""
    import warnings
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError as err:
        raise PredictError(f"--format onnx needs onnxruntime and onnxscript ({err}): pip install onnxruntime "
                           "onnxscript") from None
    loaded = _image_run(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    x = _probe(loaded)
    model = loaded.model
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, dynamic_shapes=({**dims},))
        program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    diff = float((torch.from_numpy(got) - model(x)).abs().max())
    if diff > ONNX_TOLERANCE:
        raise RuntimeError(f"{path} gives logits {diff:.2e} away from eager PyTorch in onnxruntime (> {ONNX_TOLERANCE})")
    (out / "labels.json").write_text(json.dumps({"label_names": loaded.classes, "input": {
        k: list(v) if isinstance(v, tuple) else v for k, v in loaded.input_cfg.items()}}, indent=2))
    log.info("wrote %s; onnxruntime matches eager within %.1e", path, diff)
    return path


def main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m bixt.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory of an image-classification run")
    p.add_argument("--format", choices=("timm", "onnx"), default="timm")
    p.add_argument("--out", help="output folder (default: RUN/timm or RUN/onnx)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or str(Path(args.run) / args.format)
    try:
        return (export_timm if args.format == "timm" else export_onnx)(args.run, out)
    except (PredictError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
