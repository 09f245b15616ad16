"""``--set KEY=VALUE``: change an experiment's Config from the command line.

Every experiment declares its parameters as a frozen ``Config`` dataclass (see
:mod:`diagnostics.experiments`); this module turns ``KEY=VALUE`` strings into a
new Config with :func:`dataclasses.replace`, checked against the field names and
their annotated types, so any experiment with a Config gets ``--set`` for free.

Values
    ``int``, ``float``, ``str`` and ``bool`` (``true``/``false``/``1``/``0``)
    fields parse as such; ``tuple[...]`` fields take comma-separated items
    (``--set tiles=16,32``, ``--set shape=64,128``; ``--set schedules=jordan``
    for a one-item tuple), pairs inside them on ``:`` (``--set lrs=adamw:3e-3,muon:0.02``);
    ``Optional`` fields take ``none``.  The Config's own
    ``__post_init__`` checks then apply (an unknown schedule name, a negative
    size).

Scope
    ``KEY=VALUE`` applies to every selected experiment whose Config has ``KEY``
    (at least one must); ``NAME.KEY=VALUE`` to experiment ``NAME`` only.

Overrides change the Config, and the Config is part of every cell's cache key:
an overridden run never reuses the cells of another configuration.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = ["OverrideError", "parse", "fields_line", "apply", "overrides_for"]


class OverrideError(ValueError):
    """A bad ``--set`` (one line that lists the valid keys)."""


def fields_line(config_cls: type) -> str:
    """``"valid keys for NAME: a (int), b (tuple[str, ...]), ..."`` on one line."""
    hints = typing.get_type_hints(config_cls)
    return ", ".join(f"{f.name} ({_type_name(hints.get(f.name, Any))})" for f in dataclasses.fields(config_cls))


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


def parse(items: Sequence[str]) -> list[tuple[str | None, str, str]]:
    """``["a=1", "transfer.b=2"]`` → ``[(None, "a", "1"), ("transfer", "b", "2")]``."""
    out = []
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise OverrideError(f"--set {item!r}: expected KEY=VALUE (or EXPERIMENT.KEY=VALUE)")
        scope, dot, field = key.rpartition(".")
        out.append((scope if dot else None, field, value.strip()))
    return out


def _convert(tp: Any, text: str, inner: bool = False) -> Any:
    """``text`` as a value of type ``tp``; tuples split on ``,`` (tuples inside them on ``:``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, text, inner)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if origin is tuple:
        body = text.strip("()[] ")
        items = [t.strip() for t in body.split(":" if inner else ",") if t.strip()] if body else []
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], t, True) for t in items)
        if args and len(items) != len(args):
            raise ValueError(f"expected {len(args)} {'colon' if inner else 'comma'}-separated values, got {len(items)}")
        return tuple(_convert(a, t, True) for a, t in zip(args, items)) if args else tuple(items)
    if tp is bool:
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if tp is int:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {text!r}")
        return int(value)
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if tp is str or tp is Any:
        return text
    raise ValueError(f"cannot set a field of type {_type_name(tp)} from the command line")


def apply(config: Any, overrides: Sequence[tuple[str, str]], experiment: str = "") -> Any:
    """A copy of ``config`` with ``[(key, text), ...]`` applied.

    Raises
    ------
    OverrideError
        Unknown key or a value that does not parse or that the Config rejects;
        the message lists the valid keys.
    """
    if not overrides:
        return config
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    label = f" for {experiment}" if experiment else ""
    changes = {}
    for key, text in overrides:
        if key not in names:
            raise OverrideError(f"--set: unknown key {key!r}{label}; valid keys: {fields_line(cls)}")
        try:
            changes[key] = _convert(hints.get(key, Any), text)
        except ValueError as exc:
            raise OverrideError(f"--set {key}={text}{label}: {exc}; valid keys: {fields_line(cls)}") from None
    try:
        return dataclasses.replace(config, **changes)
    except (ValueError, TypeError) as exc:
        raise OverrideError(f"--set{label}: {str(exc).strip().splitlines()[0]}; valid keys: {fields_line(cls)}") from None


def overrides_for(parsed: Sequence[tuple[str | None, str, str]], modules: Sequence[Any]) -> dict[str, list[tuple[str, str]]]:
    """Distribute parsed ``--set`` items over experiment modules (by ``NAME``).

    An unscoped key goes to every module whose Config has it; it is an error if
    none has.  A scoped key must name a selected experiment.
    """
    by_name = {m.NAME: m for m in modules}
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in by_name}
    for scope, key, text in parsed:
        if scope is not None:
            if scope not in by_name:
                raise OverrideError(f"--set {scope}.{key}: experiment {scope!r} is not selected; "
                                    f"selected: {', '.join(by_name)}")
            out[scope].append((key, text))
            continue
        targets = [n for n, m in by_name.items() if key in {f.name for f in dataclasses.fields(m.Config)}]
        if not targets:
            valid = "; ".join(f"{n}: {fields_line(m.Config)}" for n, m in by_name.items())
            raise OverrideError(f"--set: unknown key {key!r}; valid keys: {valid}")
        for n in targets:
            out[n].append((key, text))
    return out
