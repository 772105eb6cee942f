"""The one home of model weights: read, unwrap, map official keys, load with a report, write.

Read (:func:`read_checkpoint`): a torch file (``.pth``, ``.pth.tar``, ``.pt``) holding a state dict
or a training checkpoint, the published ``.zip`` files that contain one, ``.safetensors``. Every
torch file goes through :func:`torch_load` (``weights_only=True``: a file never runs code).

Unwrap (:func:`unwrap_state_dict`): the weights under ``state_dict`` / ``state_dict_ema`` /
``model`` / ``model_ema`` next to optimizer state and argparse ``args``, with the prefixes that
wrappers add removed in any nesting: ``module.`` (DDP, timm's ``ModelEma*``) and ``_orig_mod.``
(``torch.compile``).

Map and load (:func:`load_weights`): ``within`` takes one sub-module's tensors out of a whole-model
checkpoint (a segmenter's ``backbone``), the model's ``filter_checkpoint`` (:class:`MapsForeignCheckpoints`)
maps official key layouts onto it, a ``drop`` rule names what this consumer discards and why (a
segmenter drops the classifier and the one-sided last layer, a fine-tune a pre-training decoder);
the rest must fit. The :class:`LoadReport` says how many tensors were filled; a load that fills
none is an error, and a file that does not fit names what differs (``token width 192 vs 256``,
the missing / unexpected / mis-shaped keys) and what the file seems to be for.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Union, runtime_checkable

import torch
from torch import nn

__all__ = ["read_checkpoint", "read_state_dict", "unwrap_state_dict", "strip_wrapper_prefixes", "torch_load",
           "load_weights", "fit_layer_kinds", "LoadReport", "MapsForeignCheckpoints", "DropRule", "drop_prefixes",
           "describe_checkpoint", "architecture", "save_safetensors"]

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]
#: a consumer's rule: (the mapped state dict, the model) -> {why: [keys it discards]}
DropRule = Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, list[str]]]
WEIGHT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".ckpt", ".safetensors")
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
#: prefixes that wrappers put in front of every key: DDP / EMA wrappers (``module.``), torch.compile
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

log = logging.getLogger(__name__)


# --- read ------------------------------------------------------------------------------------------
def torch_load(source, name: Optional[str] = None) -> object:
    """The safe ``torch.load`` of a path or file object (tensors, plain containers and argparse
    ``args`` only); ``name`` says what it is in errors (a zip member)."""
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
            return torch_load(str(path))
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
    return torch_load(io.BytesIO(data), name=f"{weights[0]} inside {path}")


def read_checkpoint(path: PathLike) -> Mapping:
    """The top-level mapping of a weights file (state dict, training checkpoint, zip, safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    if path.suffix == ".zip" and zipfile.is_zipfile(path):
        checkpoint = _read_zip(path)
    else:
        checkpoint = torch_load(str(path))
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} does not hold a state dict or training checkpoint (got {type(checkpoint).__name__})")
    return checkpoint


# --- unwrap ----------------------------------------------------------------------------------------
def strip_wrapper_prefixes(key: str) -> str:
    """``module._orig_mod.blocks.0.x`` -> ``blocks.0.x`` (wrappers nest in either order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def unwrap_state_dict(checkpoint: Mapping, use_ema: bool = False, source: str = "checkpoint") -> StateDict:
    """Pick the weights out of a training checkpoint and strip the wrappers' prefixes."""
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


def read_state_dict(path: PathLike, use_ema: bool = False) -> StateDict:
    """Read the weights of any accepted file format (see the module docstring)."""
    return unwrap_state_dict(read_checkpoint(path), use_ema, str(path))


# --- describe --------------------------------------------------------------------------------------
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a BiXT state dict (ours or the official layout) tells of its model: embed dim, latents,
    token width, layers, whether the last one is one-sided, patch conv, classes (those it shows)."""
    facts: dict[str, Any] = {}
    latents = next((v for k, v in state.items() if re.fullmatch(r"(.*\.)?latents", k) and v.dim() == 3), None)
    if latents is not None:
        facts["embed dim"], facts["latents"] = latents.shape[-1], latents.shape[1]
    norm = next((v for k, v in state.items()
                 if re.search(r"blocks\.0\.(cross\.norm_tokens|cross_attention_latents_token\.norm1_pat)\.weight$", k)),
                None)
    if norm is not None:
        facts["token width"] = norm.shape[0]
    blocks = {int(m.group(1)) for k in state for m in [_BLOCK.search(k)] if m}
    if blocks:
        last = max(blocks)
        facts["layers"] = last + 1
        facts["last layer"] = ("one-sided" if any(re.search(rf"blocks\.{last}\..*attn\.r_latents\.", k) for k in state)
                               else "two-sided")
    patch = state.get("patch_embed.proj.weight")
    if patch is not None and patch.dim() == 4:
        facts["patch conv"] = f"{patch.shape[-2]}x{patch.shape[-1]}"
    head = state.get("head.weight")
    if head is not None and head.dim() == 2:
        facts["classes"] = head.shape[0]
    return facts


def _trained_as(checkpoint: Mapping) -> Optional[str]:
    """The model name a training checkpoint's own ``args`` (or ``arch``) give."""
    args = checkpoint.get("args")
    name = getattr(args, "model", None) or (args.get("model") if isinstance(args, Mapping) else None)
    return name or (checkpoint.get("arch") if isinstance(checkpoint.get("arch"), str) else None)


def describe_checkpoint(checkpoint: Mapping, state: Mapping[str, torch.Tensor]) -> str:
    """What architecture a checkpoint seems to be for (from its training args and tensor shapes)."""
    name = _trained_as(checkpoint)
    parts = [f"model {name!r} (its training args)"] if name else []
    facts = architecture(state)
    for key, value in facts.items():
        if key == "layers":
            parts.append(f"{value} layers" + (" (last one-sided)" if facts["last layer"] == "one-sided" else ""))
        elif key in ("latents", "classes"):
            parts.append(f"{value} {key}")
        elif key != "last layer":
            parts.append(f"{key} {value}")
    return ", ".join(parts) if parts else f"keys like {list(state)[:3]}"


def _differences(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> str:
    """``token width 192 vs 256 (file vs model)`` for each fact of :func:`architecture` that differs."""
    ours, theirs = architecture(model_state), architecture(state)
    diffs = [f"{k} {theirs[k]} vs {ours[k]}" for k in theirs if k in ours and theirs[k] != ours[k] and k != "classes"]
    return f"{', '.join(diffs)} (file vs model)" if diffs else ""


def _listed(title: str, items: list[str], limit: int = 12) -> str:
    return f"{title}: " + ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _mismatch(expected, state, missing, unexpected) -> str:
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    return "; ".join(_listed(title, items) for title, items in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items)


# --- load ------------------------------------------------------------------------------------------
@runtime_checkable
class MapsForeignCheckpoints(Protocol):
    """A model that maps other key layouts (official checkpoints) onto its own state dict.

    It may also name the official tensors its filter leaves out because it computes them itself, in
    a class attribute ``derived_checkpoint_keys = {key: why}``: load reports list them as dropped.
    """

    def filter_checkpoint(self, state_dict: StateDict) -> StateDict: ...


@dataclass
class LoadReport:
    """What :func:`load_weights` did: ``loaded`` of the model's ``total`` tensors were set."""

    source: str
    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)  #: model tensors the file lacks (they keep their values)
    unexpected: list[str] = field(default_factory=list)  #: file tensors the model has no place for
    dropped: dict[str, list[str]] = field(default_factory=dict)  #: file tensors discarded on purpose, by reason
    what: str = "model"  #: what was loaded, in the text: "model", "backbone"
    note: str = ""  #: the consumer's last word, e.g. "the linear decode head starts from random init"

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        text = f"loaded {self.loaded} of {self.total} {self.what} tensors from {self.source}"
        if self.dropped:
            text += "; dropped from the checkpoint: " + "; ".join(
                f"{why}: {len(keys)} tensor{'s' if len(keys) != 1 else ''}" for why, keys in self.dropped.items())
        if self.missing:
            text += f"; {len(self.missing)} not in the checkpoint keep their values ({', '.join(self.missing[:5])}"
            text += ", ...)" if len(self.missing) > 5 else ")"
        if self.unexpected:
            text += f"; {len(self.unexpected)} checkpoint tensors unused ({', '.join(self.unexpected[:5])}"
            text += ", ...)" if len(self.unexpected) > 5 else ")"
        return text + (f"; {self.note}" if self.note else "")

    def log_to(self, logger: logging.Logger, prefix: str = "") -> None:
        """INFO for a complete load, WARNING when tensors were left out on either side."""
        logger.log(logging.INFO if self.complete else logging.WARNING, "%s%s", prefix, self)


def drop_prefixes(why: str, *prefixes: str) -> DropRule:
    """A drop rule discarding every tensor whose key starts with one of ``prefixes`` (a pre-training
    decoder and mask token: ``drop_prefixes("pre-training decoder", "decoder.", "mask_token")``)."""
    def rule(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, list[str]]:
        keys = [k for k in state if k.startswith(prefixes)]
        return {why: keys} if keys else {}
    return rule


def _select(state: StateDict, within: str, dropped: dict[str, list[str]]) -> StateDict:
    """The tensors under ``within.`` when the file holds a whole model around that sub-module."""
    prefix = within + "."
    if not any(k.startswith(prefix) for k in state):
        return state
    others = [k for k in state if not k.startswith(prefix)]
    if others:
        dropped[f"outside {prefix}* (the rest of a whole-model checkpoint: a decode head, a pre-training decoder)"] = others
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


#: model tensors a pre-training checkpoint never has (the downstream task's head)
TASK_HEADS = ("head.",)
_TWO_SIDED = re.compile(r"^(.*blocks\.(\d+)\.cross\.)attn\.rv_latents\.(weight|bias)$")
_TOKEN_UPDATE = ("attn.proj_tokens.", "mlp_norm_tokens.", "mlp_tokens.")


def fit_layer_kinds(state: StateDict, expected: Mapping[str, torch.Tensor], dropped: dict[str, list[str]]) -> StateDict:
    """A pre-training checkpoint's two-sided layers into the model's one-sided ones (a classifier's
    last layer): the latents' fused (r, v) projection keeps its r half (the channel layout is
    ``[r | v]``), the layer's token update is dropped (reported)."""
    state = dict(state)
    for key in list(state):
        match = _TWO_SIDED.match(key)
        r_key = match and f"{match.group(1)}attn.r_latents.{match.group(3)}"
        if not match or key in expected or r_key not in expected:
            continue
        state[r_key] = state.pop(key)[: expected[r_key].shape[0]]
        token_side = [k for k in state if k.startswith(tuple(match.group(1) + p for p in _TOKEN_UPDATE))
                      and k not in expected]
        if token_side:
            why = f"layer {match.group(2)}'s token update (one-sided in this model)"
            dropped.setdefault(why, []).extend(token_side)
            for k in token_side:
                del state[k]
    return state


def load_weights(
    model: nn.Module,
    checkpoint: Union[PathLike, Mapping],
    *,
    strict: bool = True,
    use_ema: bool = False,
    filter_fn: Optional[Callable[[StateDict, nn.Module], StateDict]] = None,
    within: Optional[str] = None,
    drop: Optional[DropRule] = None,
    name: Optional[str] = None,
    what: str = "model",
    hint: str = "Check that the checkpoint was made for this architecture and variant (depth, dims, latents, "
                "classes, stride)",
) -> LoadReport:
    """Load a weight file (any format of :func:`read_checkpoint`) or an already read checkpoint
    mapping / state dict into ``model`` and return a :class:`LoadReport` (nothing is logged: the
    caller logs it, e.g. with :meth:`LoadReport.log_to`).

    Order: unwrap (``use_ema``: the EMA weights) -> ``within`` (keep the ``<within>.*`` tensors of
    a whole-model checkpoint, if it has them) -> ``filter_fn`` (default: the model's own
    ``filter_checkpoint``: official keys onto ours) -> ``drop`` (what this consumer discards; a
    model tensor whose checkpoint value is dropped keeps its init and is not missing) -> for a
    pre-training checkpoint (``checkpoint["pretraining"]``, written by ``bixt.tasks.pretrain``)
    :func:`fit_layer_kinds`, and the task head (``head.*``) may be missing -> load.

    Raises ``RuntimeError`` naming the file, what differs and what the file seems to be for when a
    shape differs, when nothing would be loaded, or (``strict``) when a model tensor is missing from
    the file or a file tensor has no place in the model.
    """
    is_path = isinstance(checkpoint, (str, os.PathLike))
    source = name or (str(checkpoint) if is_path else "state dict")
    raw = read_checkpoint(checkpoint) if is_path else checkpoint
    state = unwrap_state_dict(raw, use_ema, source)
    dropped: dict[str, list[str]] = {}
    if within:
        state = _select(state, within, dropped)
    unmapped = state
    try:
        if filter_fn is not None:
            state = filter_fn(state, model)
        elif isinstance(model, MapsForeignCheckpoints):
            state = model.filter_checkpoint(state)
    except RuntimeError as err:  # the model's own rules (e.g. another token grid): add which file
        raise RuntimeError(f"{source}: {err}. The file seems to be for: {describe_checkpoint(raw, state)}") from None
    mapped = dict(state)  # the whole file in the model's layout, for the messages
    for key, why in getattr(model, "derived_checkpoint_keys", {}).items():
        if key in unmapped and key not in mapped:
            dropped[why] = [key]
    state = dict(mapped)
    for why, keys in (drop(state, model) if drop is not None else {}).items():
        keys = [k for k in keys if k in state]
        if keys:
            dropped.setdefault(why, []).extend(keys)
            for k in keys:
                del state[k]
    expected = model.state_dict()
    pretraining = raw.get("pretraining") if isinstance(raw, Mapping) else None
    if pretraining:
        state = fit_layer_kinds(state, expected, dropped)
    kept = {k for keys in dropped.values() for k in keys}
    missing = [k for k in expected if k not in state and k not in kept]
    new_head = [k for k in missing if pretraining and k.startswith(TASK_HEADS)]
    missing = [k for k in missing if k not in new_head]
    unexpected = [k for k in state if k not in expected]
    usable = {k: v for k, v in state.items() if k in expected}
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    target = f"the {what} {arch!r}" if what != "model" else arch
    if any(v.shape != expected[k].shape for k, v in usable.items()) or (usable and strict and (missing or unexpected)):
        differs = _differences(state, expected)
        lacks = f"it lacks {len(missing)} of the {len(expected)} tensors; " if missing else ""
        raise RuntimeError(
            f"{source} does not fit {target} ({differs + '; ' if differs else ''}{lacks}"
            f"{_mismatch(expected, state, missing, unexpected)}). The file seems to be for: "
            f"{describe_checkpoint(raw, mapped)}. {hint}")
    if expected and not usable:
        raise RuntimeError(
            f"{source}: none of its {len(mapped)} tensors matches a tensor of {target} (checkpoint keys "
            f"like {list(mapped)[:3]}, model keys like {list(expected)[:3]}): loading it would change nothing. "
            f"The file seems to be for: {describe_checkpoint(raw, mapped)}. Is it for another model, or "
            "saved with a wrapper prefix?")
    model.load_state_dict(usable, strict=False)  # what is missing or unexpected was checked above
    note = (f"{len(new_head)} task-head tensors ({', '.join(new_head[:3])}) are not in a pre-training "
            "checkpoint: they start from init") if new_head else ""
    return LoadReport(source, loaded=len(usable), total=len(expected), missing=missing, unexpected=unexpected,
                      dropped=dropped, what=what, note=note)


# --- write -----------------------------------------------------------------------------------------
def save_safetensors(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]], path: PathLike) -> None:
    """Write weights as safetensors (atomically: temp file then rename)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, path)
