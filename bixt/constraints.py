"""Config values checked by the signature they are passed to.

Every config node with a ``_target_`` (a data builder, a model, a tokeniser...) is checked against
its target's signature before anything is built: an unknown key, a value of the wrong type (a
string for a bool, ``abc`` for an int) or outside its range fails in one line naming the full key
(``data.scale``) and what is valid. Ranges are written once, in the signature, with
``typing.Annotated``::

    def solids_data(*, train_size: Annotated[int, Range(min=0)], augment: Annotated[Mapping, Node(augmentation)])

``Range`` / ``OneOf`` / ``Ascending`` bound a value (``Each`` applies one to every item of a list),
``Node(fn)`` checks a plain sub-dict against ``fn``'s signature. Nothing here imports the rest of
bixt: every layer may annotate with it.
"""
from __future__ import annotations

import collections.abc as cabc
import inspect
import math
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, Union

__all__ = ["Range", "OneOf", "Ascending", "Each", "Node", "PositiveInterval", "ConfigValueError", "check_node", "check_value"]

#: keys Hydra's instantiate reads itself
HYDRA_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


class ConfigValueError(ValueError):
    """A config key or value the signature it feeds refuses; the message names the full key."""


@dataclass(frozen=True)
class Range:
    """``min <= value <= max`` (``open_min`` / ``open_max``: strict), NaN refused."""

    min: Optional[float] = None
    max: Optional[float] = None
    open_min: bool = False
    open_max: bool = False

    def ok(self, value: Any) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        return self.max is None or (value < self.max if self.open_max else value <= self.max)

    def describe(self) -> str:
        low = None if self.min is None else f"{'>' if self.open_min else '>='} {self.min:g}"
        high = None if self.max is None else f"{'<' if self.open_max else '<='} {self.max:g}"
        return " and ".join(p for p in (low, high) if p)


@dataclass(frozen=True)
class OneOf:
    """One of the given values (strings compared as given)."""

    choices: tuple

    def __init__(self, *choices: Any) -> None:
        object.__setattr__(self, "choices", choices)

    def ok(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Ascending:
    """A sequence whose items do not decrease (a ``[low, high]`` range)."""

    def ok(self, value: Any) -> bool:
        return all(a <= b for a, b in zip(value, value[1:]))

    def describe(self) -> str:
        return "items in ascending order ([low, high])"


@dataclass(frozen=True)
class Each:
    """``constraint`` holds for every item of a sequence."""

    constraint: Any

    def ok(self, value: Any) -> bool:
        return all(self.constraint.ok(v) for v in value)

    def describe(self) -> str:
        return f"every item {self.constraint.describe()}"


@dataclass(frozen=True)
class Node:
    """A plain sub-dict whose keys are the keyword arguments of ``fn`` (checked like a ``_target_``)."""

    fn: Callable


#: a ``[low, high]`` range of positive numbers (e.g. random scaling), or null
PositiveInterval = Optional[Annotated[list[Annotated[float, Range(min=0.0, open_min=True)]], Ascending()]]


def _signature(target: Callable) -> tuple[dict[str, inspect.Parameter], dict[str, Any], Any]:
    """Keyword parameters, their annotations, and what ``**kwargs`` accepts: None (no ``**kwargs``),
    True (anything) or the ``Node`` its annotation names (``**pipeline: Annotated[Any, Node(fn)]``)."""
    fn = target.__init__ if inspect.isclass(target) else target
    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # an annotation that cannot be evaluated is not checked
        hints = {}
    var_kw = next((k for k, p in params.items() if p.kind is p.VAR_KEYWORD), None)
    extra: Any = None
    if var_kw is not None:
        nodes = [a for a in typing.get_args(hints.get(var_kw)) if isinstance(a, Node)]
        extra = nodes[0] if nodes else True
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return params, hints, extra


def _fail(key: str, value: Any, expected: str) -> None:
    shown = "null" if value is None else repr(value) if isinstance(value, str) else value
    raise ConfigValueError(f"{key}={shown} is not valid: expected {expected}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp in (int, float, str):
        return {int: "an integer", float: "a number", str: "a string"}[tp]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (list, tuple, cabc.Sequence):
        return "a list"
    if origin in (dict, cabc.Mapping):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _matches(tp: Any, value: Any) -> bool:
    """Does ``value`` (plain Python, from the resolved config) fit the annotation ``tp``? Unknown
    annotations (modules, callables, Any) match anything."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if origin is typing.Annotated:
        return _matches(args[0], value)
    if origin is Union or (origin is not None and type(tp).__name__ == "UnionType"):
        return any(_matches(a, value) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, cabc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(a, v) for a, v in zip(args, value))
        return not args or all(_matches(args[0], v) for v in value)
    if origin in (dict, cabc.Mapping) or tp in (dict, cabc.Mapping):
        return isinstance(value, dict)
    return True


def check_value(key: str, tp: Any, value: Any) -> None:
    """Type and constraints of one value; one line naming ``key`` when it does not fit."""
    if isinstance(value, str) and value == "???":
        return  # a required value left unset is named by whoever reads it
    if isinstance(value, dict) and "_target_" in value:
        check_node(value, key)  # a nested object: checked against its own target
        return
    if value is not None and _plain(tp) is not tp:  # Optional[X] holding a value: checked as X
        return check_value(key, _plain(tp), value)
    constraints = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        constraints = [*extra, *constraints]
    if not _matches(tp, value):
        members = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        expected = " or ".join(_type_name(m) for m in members)
        if type(None) in typing.get_args(tp):
            expected += " or null"
        _fail(key, value, expected)
    if value is None:
        return
    for c in constraints:
        if isinstance(c, Node):
            if isinstance(value, dict):
                check_keys(value, c.fn, key)
        elif hasattr(c, "ok") and not c.ok(value):
            _fail(key, value, c.describe())
    # items of a list checked by their own annotation (e.g. Sequence[Annotated[int, Range(min=1)]])
    if isinstance(value, (list, tuple)) and typing.get_origin(_plain(tp)) in (list, cabc.Sequence):
        (item_tp,) = typing.get_args(_plain(tp)) or (Any,)
        for i, item in enumerate(value):
            check_value(f"{key}[{i}]", item_tp, item)


def _plain(tp: Any) -> Any:
    """``Optional[X]`` -> ``X`` (the one non-None member), else ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) is Union and len(args) == 1 else tp


def check_keys(node: dict, target: Callable, key: str, provided: tuple[str, ...] = ()) -> None:
    """Every key of ``node`` must be a keyword argument of ``target`` and fit its annotation.
    ``provided`` names the arguments the caller adds at run time (not settable in the config)."""
    params, hints, extra = _signature(target)
    if isinstance(extra, Node):  # **kwargs forwarded to a function whose signature says what they are
        more, more_hints, extra = _signature(extra.fn)
        params, hints = {**more, **params}, {**more_hints, **hints}
    for name, value in node.items():
        if name in HYDRA_KEYS:
            continue
        full = f"{key}.{name}"
        if name not in params or name in provided:
            if extra is True and name not in provided:
                continue
            valid = ", ".join(k for k in params if k not in provided)
            raise ConfigValueError(f"unknown key {full}; valid keys of {key}: {valid}")
        check_value(full, hints.get(name, params[name].annotation), value)


def locate(path: str) -> Callable:
    """The object a ``_target_`` names (Hydra's own resolution)."""
    from hydra._internal.utils import _locate

    try:
        return _locate(path)
    except Exception as err:
        raise ConfigValueError(f"_target_ {path!r} cannot be imported ({str(err).splitlines()[0]})") from None


def check_node(node: dict, key: str, provided: tuple[str, ...] = ()) -> None:
    """Check a resolved ``_target_`` node (plain dict) and its nested ``_target_`` nodes."""
    check_keys(node, locate(node["_target_"]), key, provided)
