"""Registry of diagnostics experiments.

Adding an experiment is one line: put its module name in :data:`MODULES`.

The registry is lazy: ``list``, ``--help`` and name checks read each module's
``NAME`` and ``DESCRIPTION`` from its source (they must be string literals) and
import nothing; :func:`get` imports the module (matplotlib, scipy, torch...) only
when the experiment is run.

Protocol — an experiment module ``diagnostics/experiments/<module>.py`` defines

``NAME`` : str
    Unique name used on the command line and as the results/figures sub-directory.
``DESCRIPTION`` : str
    One line for ``matfun-diagnostics list``.
``Config``
    A *frozen* dataclass of the sweep's parameters (numbers, strings, booleans,
    ``None`` and tuples/dicts of those: they are hashed into the cache key and
    written as columns).  Its defaults are the full-size run unless the module
    defines ``Config.full()`` or ``FULL``; the test-suite / ``--quick`` size comes
    from a ``Config.quick()`` classmethod or a ``QUICK`` instance.
``cells(config) -> list[dict]``
    The sweep: one dict per independent unit of work (e.g. one (schedule,
    condition number) pair).  Values must be JSON-able scalars; no duplicates.
``run_cell(config, cell, device, seed) -> pandas.DataFrame``
    Tidy rows (one row per measurement) for one cell.  ``device`` is ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``; ``seed`` is the run's seed (derive per-cell
    randomness with :func:`diagnostics.store.cell_seed`).  The store adds the
    config, cell, seed, device and version columns; do not add them yourself.
``plot(frame, config, out_dir) -> list[path stem]``
    Draw figures from the combined frame (as read back from CSV) into ``out_dir``
    with :func:`diagnostics.plotting.save_figure` (PDF + PNG) and return the
    stems written (paths without extension).

What every experiment gets for free from this protocol: ``--set KEY=VALUE``
checks and applies its ``Config`` fields (:mod:`diagnostics.overrides`) and
``--seeds`` runs the sweep once per seed and draws mean and spread
(:mod:`diagnostics.runner`, :mod:`diagnostics.seeds`).  To compare the user's
maps (``--map``), ``cells`` appends :func:`diagnostics.plugins.cells` and
``run_cell`` gets the map with :func:`diagnostics.plugins.for_cell`.

A module listed in :data:`MODULES` whose source lacks literal ``NAME`` /
``DESCRIPTION`` raises at import of this package; one that fails to import or
misses part of the protocol raises at :func:`get`: a broken experiment is a bug,
not something to skip silently.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
from types import ModuleType
from typing import Any, cast

__all__ = ["MODULES", "REGISTRY", "LazyExperiment", "check_experiment", "describe", "get", "names", "register"]

#: Experiment modules, in the order ``list`` and ``figures`` use.  One line each.
MODULES: tuple[str, ...] = (
    "transfer",
    "ns_convergence",
    "precision",
    "duality",
    "tile_sweep",
    "preconditioning",
    "scaling",
    "training",
    "lm",
    "design",
)

_REQUIRED = ("NAME", "DESCRIPTION", "Config", "cells", "run_cell", "plot")


def check_experiment(module: ModuleType) -> ModuleType:
    """Raise ``TypeError`` unless ``module`` follows the experiment protocol."""
    label = getattr(module, "__name__", repr(module))
    missing = [attr for attr in _REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"experiment module {label} lacks {', '.join(missing)} (see diagnostics.experiments)")
    if not isinstance(module.NAME, str) or not module.NAME.isidentifier():
        raise TypeError(f"experiment module {label}: NAME must be an identifier-like string, got {module.NAME!r}")
    if not isinstance(module.DESCRIPTION, str) or "\n" in module.DESCRIPTION.strip():
        raise TypeError(f"experiment module {label}: DESCRIPTION must be one line")
    Config = module.Config
    if not (isinstance(Config, type) and dataclasses.is_dataclass(Config)):
        raise TypeError(f"experiment module {label}: Config must be a dataclass")
    # @dataclass sets __dataclass_params__; typeshed's DataclassInstance declares only the fields.
    if not cast(Any, Config).__dataclass_params__.frozen:
        raise TypeError(f"experiment module {label}: Config must be a frozen dataclass")
    if not (hasattr(Config, "quick") or hasattr(module, "QUICK")):
        raise TypeError(f"experiment module {label}: define Config.quick() or QUICK")
    for fn in ("cells", "run_cell", "plot"):
        if not callable(getattr(module, fn)):
            raise TypeError(f"experiment module {label}: {fn} must be callable")
    return module


#: ``NAME = "..."`` / ``DESCRIPTION = "..."`` at the start of a line (a regex, not a
#: parse of the whole module: ``list`` and ``--help`` must stay fast).


@dataclasses.dataclass(frozen=True)
class LazyExperiment:
    """A registered experiment whose module is not imported yet.

    ``name`` and ``description`` are read from the module's source (the literal
    assignments ``NAME = "..."`` and ``DESCRIPTION = "..."``, parsed, not run).
    """

    module: str
    name: str
    description: str

    @classmethod
    def from_source(cls, module: str) -> LazyExperiment:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise ImportError(f"experiment module {module} not found (or not a .py file)")
        with open(spec.origin, encoding="utf-8") as fh:
            source = fh.read()
        literals: dict[str, str] = {}
        for node in ast.parse(source, filename=spec.origin).body:  # parsed, not run
            target = (
                node.targets[0]
                if isinstance(node, ast.Assign) and len(node.targets) == 1
                else (node.target if isinstance(node, ast.AnnAssign) else None)
            )
            value = getattr(node, "value", None)
            if (
                isinstance(target, ast.Name)
                and target.id in ("NAME", "DESCRIPTION")
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                literals.setdefault(target.id, value.value)
        missing = [k for k in ("NAME", "DESCRIPTION") if k not in literals]
        if missing:
            raise TypeError(
                f"experiment module {module}: {' and '.join(missing)} must be assigned a "
                "string literal at module level (read without importing, see diagnostics.experiments)"
            )
        if "\n" in literals["DESCRIPTION"].strip():
            raise TypeError(f"experiment module {module}: DESCRIPTION must be one line")
        return cls(module, literals["NAME"], literals["DESCRIPTION"].strip())

    def load(self) -> ModuleType:
        """Import the module and check it against the protocol and its source literals."""
        module = check_experiment(importlib.import_module(self.module))
        if module.NAME != self.name:
            raise TypeError(
                f"experiment module {self.module}: NAME is {module.NAME!r} at run time but {self.name!r} in its source"
            )
        return module


#: Experiment name -> module (imported) or :class:`LazyExperiment` (not yet imported).
REGISTRY: dict[str, ModuleType | LazyExperiment] = {}


def register(module: ModuleType | LazyExperiment, *, replace: bool = False) -> ModuleType | LazyExperiment:
    """Add an experiment (a module, or a :class:`LazyExperiment`) to :data:`REGISTRY`."""
    if isinstance(module, LazyExperiment):
        name = module.name
    else:
        check_experiment(module)
        name = module.NAME
    if name in REGISTRY and not replace and REGISTRY[name] is not module:
        raise ValueError(f"experiment name {name!r} is already registered")
    REGISTRY[name] = module
    return module


for _name in MODULES:
    register(LazyExperiment.from_source(f"{__name__}.{_name}"))
del _name


def names() -> list[str]:
    """Registered experiment names, in registry order."""
    return list(REGISTRY)


def describe(name: str) -> str:
    """The one-line description of experiment ``name`` (imports nothing)."""
    entry = REGISTRY[name]
    return entry.description if isinstance(entry, LazyExperiment) else entry.DESCRIPTION.strip()


def get(name: str) -> ModuleType:
    """The experiment module called ``name``, imported on first use.

    ``KeyError`` listing the valid names for an unknown name.
    """
    try:
        entry = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; valid: {', '.join(names()) or '(none)'}") from None
    if isinstance(entry, LazyExperiment):
        entry = REGISTRY[name] = entry.load()
    return entry
