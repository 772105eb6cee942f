"""Reading and writing BiXT weights: official releases, training checkpoints, safetensors.

Accepted inputs: a plain state dict; a torch file (``.pth``, ``.pth.tar``, ``.pt``) holding either a
state dict or a training checkpoint that wraps the weights under ``state_dict`` /
``state_dict_ema`` / ``model`` next to optimizer state and argparse ``args``; the published ``.zip``
files that contain one such checkpoint; ``.safetensors``. Wrapper prefixes are removed: ``module.``
(DDP, and timm's ``ModelEma``/``ModelEmaV2``/``ModelEmaV3``, whose weights sit under ``module``) and
``_orig_mod.`` (``torch.compile``), in any nesting.

Non-strict loading (``strict=False``) reports how many of the model's tensors it set and refuses a
checkpoint that sets none: a prefix nobody strips must not pass as "loaded".
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Protocol, Union, runtime_checkable

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]
WEIGHT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
#: prefixes that wrappers put in front of every key: DDP / EMA wrappers (``module.``), torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

log = logging.getLogger(__name__)


def _torch_load(source, name: Optional[str] = None) -> object:
    """``torch.load`` of a path or file object; ``name`` says what it is in errors (a zip member)."""
    # Training checkpoints carry argparse.Namespace under `args`; allow just that beyond tensors.
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in several types
            raise RuntimeError(
                f"could not read {name or source} as a torch checkpoint ({err}). If it holds "
                "objects other than tensors and argparse args, re-save its state dict with torch.save"
            ) from err


def _load_safetensors(data: bytes | PathLike) -> StateDict:
    from safetensors.torch import load, load_file

    return load(data) if isinstance(data, bytes) else load_file(str(data))


def _read_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if any(n.endswith("data.pkl") for n in names):  # torch's own zip serialisation
            return _torch_load(str(path))
        weights = [n for n in names if n.lower().endswith(WEIGHT_SUFFIXES) and not n.startswith("__MACOSX")]
        if not weights:
            raise ValueError(f"{path} is a zip archive without a weight file ({', '.join(WEIGHT_SUFFIXES)}); found {names[:10]}")
        if len(weights) > 1:
            best = [n for n in weights if "best" in Path(n).name]
            if len(best) != 1:
                raise ValueError(f"{path} holds several weight files {weights}; extract the one you want and pass it")
            weights = best
        data = archive.read(weights[0])
    if weights[0].endswith(".safetensors"):
        return _load_safetensors(data)
    return _torch_load(io.BytesIO(data), name=f"{weights[0]} inside {path}")


def unwrap_state_dict(checkpoint: Mapping, use_ema: bool = False, source: str = "checkpoint") -> StateDict:
    """Pick the weights out of a training checkpoint and strip ``module.`` prefixes."""
    state = checkpoint
    order = ("state_dict_ema", "model_ema") if use_ema else WRAPPER_KEYS
    for key in order:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner:
            state = inner
            break
    else:
        if use_ema:
            raise KeyError(f"{source} has no EMA weights (state_dict_ema / model_ema); drop use_ema")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source} holds no tensors; top-level keys: {list(checkpoint)[:10]}")
    return {strip_wrapper_prefixes(k): v for k, v in tensors.items()}


def strip_wrapper_prefixes(key: str) -> str:
    """``module._orig_mod.blocks.0.x`` -> ``blocks.0.x`` (wrappers nest in either order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def read_checkpoint(path: PathLike) -> Mapping:
    """The top-level mapping of a weights file (state dict, training checkpoint, zip, safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if zipfile.is_zipfile(path) and path.suffix == ".zip":
        checkpoint = _read_zip(path)
    else:
        checkpoint = _torch_load(str(path))
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} does not hold a state dict or training checkpoint (got {type(checkpoint).__name__})")
    return checkpoint


def read_state_dict(path: PathLike, use_ema: bool = False) -> StateDict:
    """Read weights from any accepted file format (see module docstring)."""
    return unwrap_state_dict(read_checkpoint(path), use_ema, str(path))


def describe_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str:
    """Human-readable list of missing / unexpected / wrongly shaped keys ('' when it fits)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
            parts.append(f"{title}: {shown}")
    return "; ".join(parts)


@dataclass
class LoadReport:
    """What :func:`load_weights_into` did: ``loaded`` of the model's ``total`` tensors were set."""

    source: str
    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{self.loaded} of {self.total} model tensors from {self.source}"
        if self.missing:
            text += f"; {len(self.missing)} not in the checkpoint keep their values ({', '.join(self.missing[:5])}"
            text += ", ...)" if len(self.missing) > 5 else ")"
        if self.unexpected:
            text += f"; {len(self.unexpected)} checkpoint tensors unused ({', '.join(self.unexpected[:5])}"
            text += ", ...)" if len(self.unexpected) > 5 else ")"
        return text


def load_checkpoint(
    model: nn.Module,
    checkpoint: Union[PathLike, Mapping[str, torch.Tensor]],
    strict: bool = True,
    use_ema: bool = False,
    filter_fn: Optional[Callable[[StateDict, nn.Module], StateDict]] = None,
) -> nn.Module:
    """Load weights into ``model``, mapping foreign key layouts through the model's filter.

    ``filter_fn`` defaults to the model's own ``filter_checkpoint`` (see
    :class:`MapsForeignCheckpoints`: BiXT models map the official layout onto theirs). Raises ``RuntimeError`` naming every missing, unexpected and
    mis-shaped key when the checkpoint does not fit (with ``strict=False``: when it fits nowhere).
    """
    report = load_weights_into(model, checkpoint, strict=strict, use_ema=use_ema, filter_fn=filter_fn)
    if report.missing or report.unexpected:
        log.warning("non-strict load: %s", report)
    return model


@runtime_checkable
class MapsForeignCheckpoints(Protocol):
    """A model that maps other key layouts (official checkpoints) onto its own state dict."""

    def filter_checkpoint(self, state_dict: StateDict) -> StateDict: ...


def load_weights_into(
    model: nn.Module,
    checkpoint: Union[PathLike, Mapping[str, torch.Tensor]],
    strict: bool = True,
    use_ema: bool = False,
    filter_fn: Optional[Callable[[StateDict, nn.Module], StateDict]] = None,
) -> LoadReport:
    """:func:`load_checkpoint`, returning a :class:`LoadReport` instead of the model."""
    source = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    if isinstance(checkpoint, (str, os.PathLike)):
        state_dict = read_state_dict(checkpoint, use_ema)
    else:
        state_dict = unwrap_state_dict(checkpoint, use_ema)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    elif isinstance(model, MapsForeignCheckpoints):
        state_dict = model.filter_checkpoint(state_dict)
    problems = describe_mismatch(model, state_dict)
    if problems and (strict or "shape" in problems):
        raise RuntimeError(
            f"{source} does not fit {type(model).__name__} ({problems}). Check that the checkpoint was made "
            "for this architecture and variant (depth, dims, latents, classes)"
        )
    expected = model.state_dict()
    report = LoadReport(source, loaded=sum(k in state_dict for k in expected), total=len(expected),
                        missing=[k for k in expected if k not in state_dict],
                        unexpected=[k for k in state_dict if k not in expected])
    if expected and report.loaded == 0:
        raise RuntimeError(
            f"{source}: none of its {len(state_dict)} tensors matches a tensor of {type(model).__name__} "
            f"(checkpoint keys like {list(state_dict)[:3]}, model keys like {list(expected)[:3]}): loading "
            "it would change nothing. Is it for another model, or saved with a wrapper prefix?")
    model.load_state_dict(state_dict, strict=strict)
    return report


def save_safetensors(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike) -> None:
    """Write weights as safetensors (atomically: temp file then rename)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
