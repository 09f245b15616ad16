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

Refused for every Config (:func:`check_value`), before the Config sees the value
    an empty list where the field's default is not empty (``--set schedules=``),
    repeated items (``schedules=jordan,jordan``; pairs: a repeated first element),
    NaN or infinite numbers, and integers above a size bound (``max_steps=1e9``:
    at most :data:`SIZE_FACTOR` times the field's default or current value, and
    never less than :data:`SIZE_FLOOR`; fields named ``*seed*`` are labels, not
    sizes, and are not bounded).  A key given more than once: every value is
    checked (each on its own against the Config), the last one wins; ``NAME.KEY``
    wins over ``KEY`` for experiment ``NAME`` wherever it stands.

Scope
    ``KEY=VALUE`` applies to every selected experiment whose Config has ``KEY``
    (at least one must); ``NAME.KEY=VALUE`` to experiment ``NAME`` only.

Overrides change the Config, and the Config is part of every cell's cache key:
an overridden run never reuses the cells of another configuration.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from typing import Any

__all__ = [
    "SIZE_FACTOR",
    "SIZE_FLOOR",
    "OverrideError",
    "apply",
    "changes",
    "check_value",
    "fields_line",
    "overrides_for",
    "parse",
]

#: An integer override may be at most this many times the field's default (or current) value ...
SIZE_FACTOR = 16
#: ... and this bound is never lower than SIZE_FLOOR.
SIZE_FLOOR = 1024


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
            value = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        return value
    if tp is str or tp is Any:
        return text
    raise ValueError(f"cannot set a field of type {_type_name(tp)} from the command line")


def _ints(value: Any) -> list[int]:
    """Every integer inside ``value`` (tuples searched; booleans are not integers)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (tuple, list)):
        return [i for v in value for i in _ints(v)]
    return []


def _default_of(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def check_value(config: Any, key: str, value: Any) -> None:
    """Refuse what no Config field should get from ``--set`` (see the module docstring).

    Parameters
    ----------
    config
        The Config instance being changed (its value and its class default set the size bound).
    key, value
        The field and its converted value.

    Raises
    ------
    ValueError
        An empty list where the default is not empty, repeated items, or an integer
        above the size bound (one line saying which and the bound).
    """
    default = _default_of(type(config), key)
    current = getattr(config, key, None)
    if isinstance(value, tuple) and not value and not (isinstance(default, tuple) and not default):
        raise ValueError("empty list (give at least one value)")
    hint = typing.get_type_hints(type(config)).get(key, Any)
    if isinstance(value, tuple) and _variable_length(hint):
        keys = [v[0] if isinstance(v, tuple) and v else v for v in value]
        repeated = sorted({str(k) for k in keys if keys.count(k) > 1})
        if repeated:
            raise ValueError(f"repeated value(s) {', '.join(repeated)} (give each once)")
    if "seed" in key.lower():
        return
    reference = max([abs(i) for i in _ints(default) + _ints(current)], default=0)
    limit = max(SIZE_FLOOR, SIZE_FACTOR * reference)
    too_big = [i for i in _ints(value) if abs(i) > limit]
    if too_big:
        raise ValueError(
            f"{too_big[0]} exceeds the size bound {limit} ({SIZE_FACTOR} x the default {reference}, "
            f"at least {SIZE_FLOOR})"
        )


def _variable_length(tp: Any) -> bool:
    """``tuple[X, ...]`` (possibly inside an Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_variable_length(a) for a in args)
    return origin is tuple and len(args) == 2 and args[1] is Ellipsis


def changes(config: Any, overrides: Sequence[tuple[str, str]], experiment: str = "") -> dict[str, Any]:
    """``{field: value}`` for ``[(key, text), ...]``, every value converted and checked (nothing applied).

    A key given more than once is checked in each of its values (each alone against
    the Config); the last one is returned.

    Raises
    ------
    OverrideError
        As :func:`apply`.
    """
    cls = type(config)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    label = f" for {experiment}" if experiment else ""
    out: dict[str, Any] = {}
    for key, text in overrides:
        if key not in names:
            raise OverrideError(f"--set: unknown key {key!r}{label}; valid keys: {fields_line(cls)}")
        try:
            value = _convert(hints.get(key, Any), text)
            check_value(config, key, value)
        except ValueError as exc:
            raise OverrideError(f"--set {key}={text}{label}: {exc}; valid keys: {fields_line(cls)}") from None
        if key in out:  # an earlier value (e.g. KEY=, then NAME.KEY=): check it on its own too
            _replace(config, {key: out[key]}, label)
        out[key] = value
    return out


def _replace(config: Any, values: dict[str, Any], label: str) -> Any:
    try:
        return dataclasses.replace(config, **values)
    except (ValueError, TypeError) as exc:
        raise OverrideError(
            f"--set{label}: {str(exc).strip().splitlines()[0]}; valid keys: {fields_line(type(config))}"
        ) from None


def apply(config: Any, overrides: Sequence[tuple[str, str]], experiment: str = "", **extra: Any) -> Any:
    """A copy of ``config`` with ``[(key, text), ...]`` applied.

    ``extra`` are further field values (Python objects, not text) replaced in the same
    step, after the overrides (e.g. the command line's ``--optimizer`` entries).

    Raises
    ------
    OverrideError
        Unknown key or a value that does not parse, that :func:`check_value` refuses
        or that the Config rejects; the message lists the valid keys.
    """
    if not overrides and not extra:
        return config
    label = f" for {experiment}" if experiment else ""
    return _replace(config, {**changes(config, overrides, experiment), **extra}, label)


def overrides_for(
    parsed: Sequence[tuple[str | None, str, str]], modules: Sequence[Any]
) -> dict[str, list[tuple[str, str]]]:
    """Distribute parsed ``--set`` items over experiment modules (by ``NAME``).

    An unscoped key goes to every module whose Config has it; it is an error if
    none has.  A scoped key must name a selected experiment and comes after the
    unscoped ones (it wins).  A key given twice at the same scope: the last value
    wins and :func:`apply` checks every value.
    """
    by_name = {m.NAME: m for m in modules}
    out: dict[str, list[tuple[str, str]]] = {name: [] for name in by_name}
    scoped: dict[str, list[tuple[str, str]]] = {name: [] for name in by_name}
    for scope, key, text in parsed:
        if scope is not None:
            if scope not in by_name:
                raise OverrideError(
                    f"--set {scope}.{key}: experiment {scope!r} is not selected; selected: {', '.join(by_name)}"
                )
            scoped[scope].append((key, text))
            continue
        targets = [n for n, m in by_name.items() if key in {f.name for f in dataclasses.fields(m.Config)}]
        if not targets:
            valid = "; ".join(f"{n}: {fields_line(m.Config)}" for n, m in by_name.items())
            raise OverrideError(f"--set: unknown key {key!r}; valid keys: {valid}")
        for n in targets:
            out[n].append((key, text))
    return {n: out[n] + scoped[n] for n in by_name}  # NAME.KEY after KEY: the scoped value wins
