"""Registry of diagnostics experiments.

Adding an experiment is one line: put its module name in :data:`MODULES`.

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

A module listed in :data:`MODULES` that fails to import, or that misses part of
the protocol, raises at import of this package: a broken experiment is a bug, not
something to skip silently.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

__all__ = ["MODULES", "REGISTRY", "check_experiment", "get", "names", "register"]

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
    if not Config.__dataclass_params__.frozen:
        raise TypeError(f"experiment module {label}: Config must be a frozen dataclass")
    if not (hasattr(Config, "quick") or hasattr(module, "QUICK")):
        raise TypeError(f"experiment module {label}: define Config.quick() or QUICK")
    for fn in ("cells", "run_cell", "plot"):
        if not callable(getattr(module, fn)):
            raise TypeError(f"experiment module {label}: {fn} must be callable")
    return module


def _load(module_name: str) -> ModuleType:
    return check_experiment(importlib.import_module(f"{__name__}.{module_name}"))


REGISTRY: dict[str, ModuleType] = {}


def register(module: ModuleType, *, replace: bool = False) -> ModuleType:
    """Add an experiment module to :data:`REGISTRY` (tests use this for fakes)."""
    check_experiment(module)
    if module.NAME in REGISTRY and not replace and REGISTRY[module.NAME] is not module:
        raise ValueError(f"experiment name {module.NAME!r} is already registered")
    REGISTRY[module.NAME] = module
    return module


for _name in MODULES:
    register(_load(_name))
del _name


def names() -> list[str]:
    """Registered experiment names, in registry order."""
    return list(REGISTRY)


def get(name: str) -> ModuleType:
    """The experiment called ``name``; ``KeyError`` listing the valid names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; valid: {', '.join(names()) or '(none)'}") from None
