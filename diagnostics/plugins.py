"""Plug-in maps: run a user's orthogonaliser through every diagnostics experiment.

A plug-in is any callable ``G -> X`` (or a :class:`matfun.Map`), named on the
command line as ``--map NAME=MODULE:ATTR`` or passed in Python as
``diagnostics.run("ns_convergence", maps={"mine": fn})``.  The experiments that
compare maps (``ns_convergence``, ``precision``, ``duality``, ``tile_sweep``,
``transfer``, ``scaling``) draw every plug-in beside the built-in maps.

What a plug-in may declare (attributes on the callable; all optional)
----------------------------------------------------------------------
``array_library``
    ``"numpy"`` (default) or ``"torch"``: the library of the arrays it receives.
    Undeclared, a map that fails on numpy arrays but works on torch tensors (as
    ``validate`` and ``assert_orthogonalizer`` feed it) is detected by the probe
    and fed torch tensors (a note says so), so one map works in every instrument.
    A :class:`matfun.Map` receives whatever the experiment has (both work).
``batched``
    ``True`` if it accepts a batch ``(..., H, W)``; by default a plug-in is
    taken to be 2-D only and is looped over the batch (tiled experiments hand
    the per-tile map a batch of tiles).
step count
    * an ``iterates(G)`` method yielding ``X_0 … X_K`` (as :class:`matfun.Map`
      has): curves against ``K`` from one run;
    * a *factory*: a callable whose only parameter is named ``steps``
      (``def my_ns(steps): return lambda G: ...``): called once per ``K``;
    * a plain callable: one point at its own ``K`` (its ``steps`` attribute) or,
      without one, a horizontal level (``K`` unknown).
``flops(shape)``
    Matrix-product FLOPs of one call (``scaling`` counts them with torch's FLOP
    counter otherwise).

Contract checked on every call: the output is a numpy array or torch tensor of
the input's shape, of a real floating dtype, finite for a finite input.  An
output of another library or float dtype is converted back to the input's and
the conversion is noted (:attr:`Plugin.notes`).  Anything else — and a missing
module or attribute, something not callable, an exception inside the map —
raises :class:`PluginError`, one line naming the plug-in.

Identity: :attr:`Plugin.identity` is ``module:attr@<12 hex digits>`` of the
SHA-256 of what the map computes with (:func:`identify`): its source, and for a
closure, a ``functools.partial``, a bound method or a configured object also the
values it closes over, its arguments or its settings; the experiments put it in
the plug-in's cells, so the cache key changes when any of them changes (only that
plug-in's cells are recomputed).  A map that cannot be identified (a lambda
without readable source, a closure over a lock) gets ``@unidentified``: its cells
are computed every run and never cached, with a one-line note on stderr.
Helpers the map calls are not part of the hash: after editing one, rerun with
``--force``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from matfun.base import Map

__all__ = [
    "Plugin",
    "PluginError",
    "PluginMap",
    "active",
    "builtin_rows",
    "cacheable",
    "cells",
    "collect",
    "color",
    "current",
    "for_cell",
    "from_object",
    "identify",
    "load",
    "name_problem",
    "names_in",
    "parse_map_option",
]

LIBRARIES = ("numpy", "torch")
#: Colours of plug-in curves (none used by a built-in curve), in order of the names; plug-in curves also
#: carry star markers, so they stay distinct without colour.
COLORS = ("#B2182B", "#6A3D9A", "#8C564B", "#17BECF", "#000000")
#: The identity suffix of a plug-in that cannot be identified (its cells are never cached).
UNIDENTIFIED = "unidentified"
#: Size of the probe matrix every plug-in is checked on before an experiment runs.
PROBE_SHAPE = (24, 40)


#: What a failure of user code may raise: any ``Exception`` and ``SystemExit`` (``sys.exit()`` in a map is a
#: failure of that map, not the end of the command).  ``KeyboardInterrupt`` stays an interrupt.
USER_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit)


def _raised(exc: BaseException) -> str:
    """``"TypeError: message"`` (``"SystemExit(0)"`` for ``sys.exit(0)``)."""
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (sys.exit() called)"
    return f"{type(exc).__name__}: {exc}"


class PluginError(ValueError):
    """A plug-in that cannot be loaded or that broke its contract (one line, names the plug-in).

    ``plugin`` is the plug-in's name when the error comes from running it.
    """

    def __init__(self, message: str, plugin: str | None = None):
        super().__init__(message)
        self.plugin = plugin


def _one_line(text: object) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


class _Unidentifiable(Exception):
    """Raised inside :func:`_fingerprint`: the message says what could not be identified."""


_PLAIN = (type(None), bool, int, float, complex, str, bytes)


def _getsource(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        raise _Unidentifiable(f"the source of {getattr(obj, '__qualname__', obj)!r} cannot be read") from None


def _fingerprint(obj: Any, seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-able description of everything ``obj`` computes with that can be read (see :func:`_source_hash`).

    Plain values (numbers, strings, None), containers and arrays of them, functions
    (source, closure cells, defaults), ``functools.partial`` (function, arguments),
    bound methods (function and instance), classes (source), modules (name) and
    objects (class source and ``repr``, or their attributes when the ``repr`` shows an
    address).  Anything else raises :class:`_Unidentifiable`.
    """
    if id(obj) in seen:
        return "<recursive>"
    seen = seen | {id(obj)}
    if isinstance(obj, _PLAIN):
        return [type(obj).__name__, repr(obj)]
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [_fingerprint(v, seen) for v in obj]]
    if isinstance(obj, (set, frozenset)):
        return ["set", sorted(json.dumps(_fingerprint(v, seen)) for v in obj)]
    if isinstance(obj, dict):
        return ["dict", sorted([json.dumps(_fingerprint(k, seen)), _fingerprint(v, seen)] for k, v in obj.items())]
    if isinstance(obj, (np.ndarray, np.generic, torch.Tensor)):
        a = (
            obj.detach().cpu().float().numpy()
            if isinstance(obj, torch.Tensor) and obj.dtype == torch.bfloat16
            else (obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else np.asarray(obj))
        )
        return ["array", str(a.dtype), list(a.shape), hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()]
    if isinstance(obj, functools.partial):
        return ["partial", _fingerprint(obj.func, seen), _fingerprint(obj.args, seen), _fingerprint(obj.keywords, seen)]
    if inspect.ismethod(obj):
        return ["method", _fingerprint(obj.__func__, seen), _fingerprint(obj.__self__, seen)]
    if inspect.isfunction(obj):
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(_fingerprint(cell.cell_contents, seen))
            except ValueError:  # an empty cell
                cells.append("<empty>")
        return [
            "function",
            _getsource(obj),
            cells,
            _fingerprint(obj.__defaults__, seen),
            _fingerprint(obj.__kwdefaults__, seen),
        ]
    if inspect.isbuiltin(obj) or inspect.ismethoddescriptor(obj) or isinstance(obj, type(np.add)):
        return ["builtin", getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", repr(obj))]
    if inspect.ismodule(obj):
        return ["module", obj.__name__]
    if inspect.isclass(obj):
        try:
            return ["class", obj.__module__, obj.__qualname__, inspect.getsource(obj)]
        except (OSError, TypeError):  # built-in or C classes: their name
            return ["class", obj.__module__, obj.__qualname__]
    text = repr(obj)
    try:
        source = inspect.getsource(type(obj))
    except (OSError, TypeError):
        source = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if " at 0x" in text or not hasattr(obj, "__dict__"):
            raise _Unidentifiable(f"a {type(obj).__qualname__} object cannot be identified") from None
    if " at 0x" not in text:
        return ["object", source, text]
    if not hasattr(obj, "__dict__"):
        raise _Unidentifiable(f"a {type(obj).__qualname__} object shows no settings")
    return ["object", source, _fingerprint(vars(obj), seen)]


def identify(obj: Any) -> tuple[str | None, str | None]:
    """``(hash, None)``: 12 hex digits identifying ``obj``; ``(None, reason)`` when it cannot be identified.

    A module-level function is identified by its source (as before); a closure also
    by the values it closes over, a ``functools.partial`` by its function and
    arguments, a bound method by its function and instance, an instance (a
    configured :class:`matfun.Map`, a callable object) by its class's source and its
    ``repr`` (its attributes when the ``repr`` shows only an address).  A lambda or
    function whose source cannot be read, or one that closes over an object that
    cannot be identified (a lock, a file), cannot be identified: such a plug-in is
    run uncached (:attr:`Plugin.cacheable`).
    """
    plain_function = inspect.isfunction(obj) and not obj.__closure__ and not obj.__defaults__ and not obj.__kwdefaults__
    try:
        if plain_function or inspect.isclass(obj):  # the hash of earlier versions: caches stay valid
            return hashlib.sha256(_getsource(obj).encode()).hexdigest()[:12], None
        if isinstance(obj, Map) or not (
            inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, functools.partial)
        ):
            text = repr(obj)
            if " at 0x" not in text:  # an instance showing its settings: class source + repr, as before
                source = inspect.getsource(type(obj)) if not inspect.isbuiltin(obj) else text
                return hashlib.sha256((source + "\n" + text).encode()).hexdigest()[:12], None
        data = json.dumps(_fingerprint(obj), sort_keys=True, separators=(",", ":"))
    except _Unidentifiable as exc:
        return None, str(exc)
    except (OSError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {_one_line(exc)}"
    except RecursionError:
        return None, "it is nested too deeply"
    return hashlib.sha256(data.encode()).hexdigest()[:12], None


def _source_hash(obj: Any) -> str | None:
    """12 hex digits identifying ``obj`` (:func:`identify`), ``None`` when it cannot be identified."""
    return identify(obj)[0]


def _is_factory(obj: Any) -> bool:
    """A callable whose only parameter is named ``steps`` (``steps -> map``)."""
    if hasattr(obj, "iterates"):
        return False
    try:
        params = list(inspect.signature(obj).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].name == "steps"


def _library_of(X: Any) -> str | None:
    if isinstance(X, np.ndarray):
        return "numpy"
    if type(X).__module__.startswith("torch") and hasattr(X, "detach"):
        return "torch"
    return None


def _dtype_name(X: Any) -> str:
    return str(X.dtype).replace("torch.", "")


def _to_library(G: Any, library: str) -> Any:
    """``G`` in ``library`` (numpy has no bfloat16: bf16 tensors become float32 arrays)."""
    if library == "any" or _library_of(G) == library:
        return G
    if library == "torch":
        return torch.from_numpy(np.ascontiguousarray(G))
    G = G.detach().cpu()
    return (G.float() if G.dtype == torch.bfloat16 else G).numpy()


def _like(X: Any, G: Any) -> Any:
    """``X`` converted to ``G``'s library, device and dtype."""
    if isinstance(G, np.ndarray):
        if _library_of(X) == "torch":
            X = X.detach().cpu()
            X = (X.float() if X.dtype == torch.bfloat16 else X).numpy()
        return np.asarray(X).astype(G.dtype, copy=False)
    if _library_of(X) == "numpy":
        X = torch.from_numpy(np.ascontiguousarray(X))
    return X.to(device=G.device, dtype=G.dtype)


def name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a plug-in (``None`` if it can).

    A name is non-empty ASCII letters, digits, ``_``, ``-`` or ``.``, starts with a
    letter, and reads back from a CSV cell as the same string: ``nan``, ``NA``,
    ``None``, ``null``, ``inf``, ``True`` (any case) would come back as a missing value,
    a number or a boolean and the rows would look like a built-in map's.
    """
    if not isinstance(name, str) or not name or not all((c.isascii() and c.isalnum()) or c in "_-." for c in name):
        return "must be non-empty letters, digits, '_', '-' or '.'"
    if not name[0].isalpha():
        return "must start with a letter"
    import io

    import pandas as pd

    back = pd.read_csv(io.StringIO(f"name\n{name}\n\n"), skip_blank_lines=False)["name"]
    if not (isinstance(back.iloc[0], str) and back.iloc[0] == name):
        return "would not read back from the results CSV as a name (it reads as a missing value, number or boolean)"
    if name.lower() in ("nan", "na", "nat", "none", "null", "inf", "infinity", "true", "false"):
        return "is a missing-value, number or boolean word in a CSV; choose another"
    return None


class Plugin:
    """A user's map, adapted to the experiments (see the module docstring).

    Parameters
    ----------
    name : str
        The name shown in rows, legends and the report.
    target : callable
        The map, a factory ``steps -> map``, or a :class:`matfun.Map`.
    module, attr : str
        Where it came from (for :attr:`identity`).
    from_spec : bool
        Made by :func:`load`: a Dask worker re-imports it by ``module:attr``.
    """

    def __init__(self, name: str, target: Any, module: str, attr: str, from_spec: bool = False):
        problem = name_problem(name)
        if problem:
            raise PluginError(f"plug-in name {name!r} {problem}")
        self.name = name
        self.module = module
        self.attr = attr
        if not callable(target):
            raise PluginError(f"plug-in {name!r} ({self.spec}) is not callable (it is a {type(target).__name__})")
        self.target = target
        self.is_factory = _is_factory(target)
        self.has_iterates = callable(getattr(target, "iterates", None))
        library = self._declared(target, "array_library", None)
        self.library = library or ("any" if self._is_map(target) else "numpy")
        #: whether the library was declared (else :meth:`check` may detect torch)
        self.library_declared = library is not None or self._is_map(target)
        if self.library not in (*LIBRARIES, "any"):
            raise PluginError(
                f"plug-in {name!r} ({self.spec}): array_library must be 'numpy' or 'torch', got {self.library!r}"
            )
        self.batched = bool(self._declared(target, "batched", self._is_map(target)))
        steps = getattr(target, "steps", None)
        self.steps = int(steps) if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) else None
        self.source_hash, why = identify(target)
        #: ``False`` when the plug-in cannot be identified (:func:`identify`): its cells are never cached.
        self.cacheable = self.source_hash is not None
        #: Why it cannot be identified (``None`` when it can).
        self.unidentified = why
        #: True when made by :func:`load` (importable by its spec; a Dask worker re-loads it from there).
        self.from_spec = from_spec
        self.notes: set[str] = set()
        self._made: dict[int, Any] = {}

    # ------------------------------------------------------------------ identity
    @staticmethod
    def _is_map(obj: Any) -> bool:
        return isinstance(obj, Map)

    @staticmethod
    def _declared(obj: Any, attr: str, default: Any) -> Any:
        value = getattr(obj, attr, None)
        return default if value is None else value

    @property
    def spec(self) -> str:
        """``module:attr`` of the plug-in."""
        return f"{self.module}:{self.attr}"

    @property
    def identity(self) -> str:
        """``module:attr@hash`` (``@unidentified`` when it cannot be identified: never cached)."""
        return f"{self.spec}@{self.source_hash or UNIDENTIFIED}"

    @property
    def cache_note(self) -> str | None:
        """One line saying the plug-in runs uncached, and why (``None`` when it is cached)."""
        if self.cacheable:
            return None
        return (
            f"note: plug-in {self.name!r} ({self.spec}) cannot be identified ({self.unidentified}): its cells "
            "are computed every run and never cached"
        )

    @property
    def kind(self) -> str:
        """``"iterates"``, ``"factory"`` or ``"plain"``: how the plug-in exposes its step count."""
        return "iterates" if self.has_iterates else "factory" if self.is_factory else "plain"

    @property
    def step_count_description(self) -> str:
        """How the plug-in exposes its step count, in words (for the report)."""
        return {
            "iterates": "curves from iterates()",
            "factory": "factory steps -> map",
            "plain": f"plain callable (K = {self.steps})" if self.steps else "plain callable (K unknown)",
        }[self.kind]

    def error(self, problem: str) -> PluginError:
        """A :class:`PluginError` naming this plug-in."""
        return PluginError(f"plug-in {self.name!r} ({self.spec}): {_one_line(problem)}", plugin=self.name)

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, {self.identity!r}, kind={self.kind!r}, library={self.library!r})"

    # ---------------------------------------------------------------- calling
    def _map_for(self, steps: int | None) -> Any:
        if not self.is_factory:
            return self.target
        if steps is None:
            raise self.error("is a factory steps -> map; this experiment needs a step count")
        if steps not in self._made:
            try:
                made = self.target(int(steps))
            except USER_ERRORS as exc:  # any failure of user code is the plug-in's
                raise self.error(f"factory raised {_raised(exc)} (steps={steps})") from None
            if not callable(made):
                raise self.error(f"factory returned a {type(made).__name__} for steps={steps}, not a callable")
            self._made[steps] = made
        return self._made[steps]

    def _call_2d_or_batched(self, fn: Any, G: Any, library: str, batched: bool) -> Any:
        Gl = _to_library(G, library)
        if batched or Gl.ndim == 2:
            return self._checked(self._invoke(fn, Gl), Gl)
        flat = Gl.reshape((-1, *tuple(Gl.shape[-2:])))
        outs = [_like(self._checked(self._invoke(fn, flat[i]), flat[i]), flat[i]) for i in range(flat.shape[0])]
        xp = np if _library_of(Gl) == "numpy" else torch
        return xp.stack(outs).reshape(Gl.shape)

    def _invoke(self, fn: Any, G: Any) -> Any:
        try:
            return fn(G)
        except USER_ERRORS as exc:  # any failure of user code is the plug-in's
            raise self.error(f"raised {_raised(exc)}") from None

    def _checked(self, X: Any, G: Any) -> Any:
        """Check the output contract; note conversions; return ``X`` in ``G``'s library/dtype."""
        lib = _library_of(X)
        if lib is None:
            raise self.error(f"returned a {type(X).__name__}, not a numpy array or torch tensor")
        if lib == "torch":
            if X.is_meta:
                raise self.error("returned a tensor on the meta device (it holds no values)")
            if X.layout != torch.strided:
                raise self.error(
                    f"returned a tensor of layout {X.layout} (sparse?); a dense (strided) tensor is required"
                )
        if tuple(X.shape) != tuple(G.shape):
            raise self.error(f"returned shape {tuple(X.shape)} for an input of shape {tuple(G.shape)}")
        name = _dtype_name(X)
        if not (name.startswith("float") or name == "bfloat16"):
            raise self.error(f"returned dtype {name}; a real floating dtype is required")
        finite = bool(np.isfinite(X).all()) if lib == "numpy" else bool(torch.isfinite(X).all())
        if not finite:
            raise self.error(f"returned non-finite values (NaN or Inf) for a finite {tuple(G.shape)} input")
        if lib != _library_of(G):
            self.notes.add(f"returns {lib} for {_library_of(G)} input: converted back")
        if name != _dtype_name(G):
            self.notes.add(f"returns {name} for {_dtype_name(G)} input: converted back to {_dtype_name(G)}")
        return _like(X, G)

    def __call__(self, G: Any, steps: int | None = None) -> Any:
        """Apply the map (``steps`` for a factory) to ``G``; output in ``G``'s library, device and dtype."""
        fn = self._map_for(steps)
        library = self.library
        batched = self.batched
        if self.is_factory:  # what the made map declares wins
            library = self._declared(fn, "array_library", None) or ("any" if self._is_map(fn) else library)
            batched = bool(self._declared(fn, "batched", self._is_map(fn) or batched))
        if library not in (*LIBRARIES, "any"):
            raise self.error(f"array_library must be 'numpy' or 'torch', got {library!r}")
        note = None
        if library == "numpy" and _dtype_name(G) == "bfloat16":
            note = "numpy has no bfloat16: fed bfloat16 values as float32"
        X = self._call_2d_or_batched(fn, G, library, batched)
        if note:
            self.notes.add(note)
        return _like(X, G)

    def curve(self, G: Any, max_steps: int, ks: Any = None) -> list[tuple[float, Any]]:
        """``[(K, X_K), ...]``: every iterate (``iterates``), ``K`` in ``ks`` or ``1..max_steps`` (factory),
        or one ``(own K or NaN, X)`` (plain callable)."""
        if self.has_iterates:
            Gl = _to_library(G, self.library)
            try:
                iterates = list(self.target.iterates(Gl))
            except USER_ERRORS as exc:  # any failure of user code is the plug-in's
                raise self.error(f"iterates() raised {_raised(exc)}") from None
            if not iterates:
                raise self.error("iterates() yielded nothing")
            return [(float(k), _like(self._checked(X, Gl), G)) for k, X in enumerate(iterates[: max_steps + 1])]
        if self.is_factory:
            ks = range(1, max_steps + 1) if ks is None else ks
            return [(float(k), self(G, steps=int(k))) for k in ks]
        return [(float(self.steps) if self.steps else math.nan, self(G))]

    def raw(self, steps: int | None = None) -> Callable[[Any], Any]:
        """The user's own callable (made with ``steps`` for a factory), unchecked and unconverted (for timing)."""
        return self._map_for(steps if self.is_factory else None)

    def final(self, G: Any, steps: int | None) -> Any:
        """The map's output: at ``steps`` for a factory, else its own output (``steps`` ignored)."""
        return self(G, steps=steps if self.is_factory else None)

    def flops(self, shape: tuple[int, ...], steps: int | None = None) -> float:
        """FLOPs of one call: the map's ``flops(shape)`` if it has one, else ``nan``."""
        fn = self._map_for(steps) if self.is_factory else self.target
        method = getattr(fn, "flops", None)
        if not callable(method):
            return math.nan
        try:
            return float(method(tuple(shape)))
        except USER_ERRORS as exc:
            raise self.error(f"flops({tuple(shape)}) raised {_raised(exc)}") from None

    def check(self) -> None:
        """Probe the map on a seeded float64 ``24×40`` matrix; raise :class:`PluginError` if it breaks its contract.

        A map that declares no ``array_library`` is fed numpy arrays; when that fails and
        torch tensors work (a map written for ``validate``, ``2-D tensor -> 2-D tensor``),
        it is fed torch tensors from then on, with a note.  When both fail, the message
        says how to declare the library.
        """
        G = np.random.default_rng(0).standard_normal(PROBE_SHAPE)
        try:
            self._probe(G)
        except PluginError as numpy_error:
            if self.library_declared or self.library != "numpy":
                raise
            self.library = "torch"
            try:
                self._probe(G)
            except PluginError:
                self.library = "numpy"
                raise PluginError(
                    f"{numpy_error} (it was fed numpy arrays, then torch tensors; declare "
                    "the library it takes with fn.array_library = 'numpy' or 'torch')",
                    plugin=self.name,
                ) from None
            self.notes.add(
                "failed on numpy arrays and works on torch tensors: fed torch tensors "
                "(declare fn.array_library = 'torch' to say so)"
            )

    def _probe(self, G: Any) -> None:
        if self.has_iterates:
            self.curve(G, 10**9)
        self.final(G, 5)


# ---------------------------------------------------------------------- loading


def load(spec: str, name: str | None = None, directory: str | os.PathLike | None = None) -> Plugin:
    """Import ``MODULE:ATTR`` (dotted attributes allowed) as a :class:`Plugin` named ``name`` (default ATTR).

    ``directory`` (default: the current directory, as ``python -m`` does) is put on
    ``sys.path`` first.

    Raises
    ------
    PluginError
        Malformed spec, module not importable, attribute missing, not callable.
    """
    label = repr(name) if name else repr(spec)
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise PluginError(f"plug-in {label}: expected MODULE:ATTR, got {spec!r}")
    module_name, attr_path = spec.split(":")
    parts = attr_path.split(".")
    if not module_name or not all(p.isidentifier() for p in module_name.split(".") + parts):
        raise PluginError(f"plug-in {label}: bad MODULE:ATTR {spec!r}")
    name = name or parts[-1]
    if directory is not None:
        if os.fspath(directory) not in sys.path:
            sys.path.insert(0, os.fspath(directory))
    elif os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise PluginError(f"plug-in {name!r} ({spec}): no module named {exc.name!r}") from None
        raise PluginError(f"plug-in {name!r} ({spec}): importing {module_name!r} failed: {exc}") from None
    except USER_ERRORS as exc:  # a broken user module is a bad plug-in
        raise PluginError(
            f"plug-in {name!r} ({spec}): importing {module_name!r} failed: {_one_line(_raised(exc))}"
        ) from None
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = ".".join([module_name, *parts[:i]])
            raise PluginError(f"plug-in {name!r} ({spec}): {where!r} has no attribute {part!r}") from None
    return Plugin(name, obj, module_name, attr_path, from_spec=True)


def parse_map_option(text: str) -> Plugin:
    """Parse one ``--map NAME=MODULE:ATTR`` (or ``MODULE:ATTR``, named after ATTR)."""
    name, sep, spec = text.partition("=")
    if not sep:
        name, spec = "", text
    if sep and not name:
        raise PluginError(f"--map {text!r}: empty NAME; expected NAME=MODULE:ATTR")
    return load(spec, name or None)


def from_object(name: str, obj: Any) -> Plugin:
    """A :class:`Plugin` for a Python object (identity from its ``__module__`` and ``__qualname__``)."""
    if isinstance(obj, Plugin):
        return obj
    named = obj.func if isinstance(obj, functools.partial) else obj  # a partial is named after its function
    module = getattr(named, "__module__", None) or type(named).__module__
    attr = getattr(named, "__qualname__", None) or type(named).__qualname__
    return Plugin(name, obj, str(module), str(attr))


def collect(maps: Mapping[str, Any] | None = None, options: list[str] | None = None) -> list[Plugin]:
    """Plug-ins from a ``{name: callable or "MODULE:ATTR"}`` mapping and ``--map`` options, probed.

    Raises :class:`PluginError` for a duplicate name or a plug-in that fails its probe.
    """
    out: list[Plugin] = []
    for name, obj in (maps or {}).items():
        out.append(load(obj, name) if isinstance(obj, str) else from_object(name, obj))
    out += [parse_map_option(text) for text in options or []]
    seen: set[str] = set()
    for p in out:
        if p.name in seen:
            raise PluginError(f"plug-in name {p.name!r} given twice")
        seen.add(p.name)
    for p in out:
        p.check()
    return out


# ------------------------------------------------------------- the active set

_ACTIVE: contextvars.ContextVar[tuple[Plugin, ...]] = contextvars.ContextVar("diagnostics_plugins", default=())


@contextlib.contextmanager
def active(plugins: Sequence[Plugin]) -> Iterator[None]:
    """Make ``plugins`` the maps experiments add to their sweeps inside the block."""
    token = _ACTIVE.set(tuple(plugins))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current() -> tuple[Plugin, ...]:
    """The active plug-ins (empty outside :func:`active`)."""
    return _ACTIVE.get()


def cells(**fixed: Any) -> list[dict]:
    """One cell per active plug-in: ``{"plugin": name, "plugin_id": identity, **fixed}``.

    The identity in the cell puts the plug-in's source hash into its cache key.
    """
    return [{"plugin": p.name, "plugin_id": p.identity, **fixed} for p in current()]


def for_cell(cell: Mapping[str, Any]) -> Plugin | None:
    """The active plug-in a cell belongs to (``None`` for a built-in cell)."""
    name = cell.get("plugin")
    if name is None:
        return None
    for p in current():
        if p.name == name:
            if p.identity != cell.get("plugin_id"):
                raise PluginError(f"plug-in {name!r}: cell is for {cell.get('plugin_id')}, active is {p.identity}")
            return p
    raise PluginError(f"plug-in {name!r} is not active (pass it with --map or maps=)")


def cacheable(cell: Mapping[str, Any]) -> bool:
    """Whether a cell may be read from and written to the cache: ``False`` for the cells of a
    plug-in that cannot be identified (:attr:`Plugin.cacheable`), ``True`` for every other cell."""
    plugin_id = cell.get("plugin_id")
    return not (isinstance(plugin_id, str) and plugin_id.endswith("@" + UNIDENTIFIED))


def names_in(frame: Any) -> list[str]:
    """Plug-in names present in a results frame, in order of first appearance."""
    if "plugin" not in getattr(frame, "columns", ()):
        return []
    return [str(n) for n in dict.fromkeys(frame["plugin"].dropna())]


def color(name: str, names: list[str]) -> str:
    """The colour of plug-in ``name`` among ``names``."""
    return COLORS[names.index(name) % len(COLORS)] if name in names else COLORS[0]


def builtin_rows(frame: Any) -> Any:
    """The rows of built-in maps (no ``plugin`` value)."""
    return frame[frame["plugin"].isna()] if "plugin" in frame.columns else frame


class PluginMap(Map):
    """A plug-in as a one-shot :class:`matfun.Map` (e.g. the per-tile map of :class:`matfun.Tiled`).

    ``steps`` is passed to a factory plug-in; the input's precision is kept.
    """

    precision = None
    prefers_torch = True

    def __init__(self, plugin: Plugin, steps: int | None = None):
        self.plugin = plugin
        self.steps = steps

    def _compute_iterates(self, X: Any, precision: Any) -> Iterator[Any]:
        yield self.plugin.final(X, self.steps)

    def flops(self, shape: tuple[int, ...]) -> int:
        value = self.plugin.flops(shape, self.steps)
        return 0 if math.isnan(value) else int(value)
