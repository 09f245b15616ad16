"""Run experiments with plug-in maps, Config overrides and several seeds (the CLI and Python entry).

:func:`run` is what ``python -m diagnostics run`` / ``figures`` do, callable from
Python::

    import diagnostics
    diagnostics.run("ns_convergence", maps={"mine": my_map}, quick=True)
    diagnostics.run("transfer", set={"steps": (1, 2, 3)}, seeds=(0, 1, 2))

The seam for experiments
    An experiment takes part by following the protocol of
    :mod:`diagnostics.experiments`: its frozen ``Config`` dataclass is what
    ``--set`` / ``set=`` change (:mod:`diagnostics.overrides`, checked against the
    field names and types), and ``run_cell(config, cell, device, seed)`` receives
    each seed in turn (one full sweep per seed; the seed is part of the cache key
    and a column of every row).  With several seeds the figures show mean and
    spread (:mod:`diagnostics.seeds`) without any change to ``plot``.  To compare
    plug-in maps, ``cells(config)`` appends :func:`diagnostics.plugins.cells` and
    ``run_cell`` gets the map with :func:`diagnostics.plugins.for_cell`.

Failures
    A plug-in that breaks its contract raises :class:`~diagnostics.plugins.PluginError`;
    the cells of that plug-in already written in this run are removed (built-in
    cells stay cached) and nothing else is written for the failing experiment.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import overrides as _overrides
from . import plugins as _plugins
from . import store

__all__ = ["check_seeds", "parse_seeds", "run", "run_module"]


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → ``(0, 1, 2)``; distinct non-negative integers, else ``ValueError``."""
    try:
        seeds = tuple(int(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated non-negative integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` (an int or a sequence of ints) as a tuple of distinct non-negative ints, else ``ValueError``.

    The Python API's counterpart of :func:`parse_seeds`: ``seeds=(0, 0)`` would run the
    same sweep twice and draw one seed as the "mean of 2 seeds".
    """
    items = (seeds,) if isinstance(seeds, (int, np.integer)) else seeds
    try:
        items = tuple(items)
    except TypeError:
        raise ValueError(f"seeds must be a non-negative integer or a sequence of them, got {seeds!r}") from None
    if not items or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in items):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    if len({int(s) for s in items}) != len(items):
        raise ValueError(f"seeds must be distinct (each seed runs the whole sweep once), got {seeds!r}")
    return tuple(int(s) for s in items)


def _discard_plugin_cells(
    module: Any, config: Any, name: str, seeds: Sequence[int], device: str, results_dir: Path
) -> None:
    """Remove every cached cell of plug-in ``name`` for this config, seeds and device."""
    cells_dir = Path(results_dir) / module.NAME / "cells"
    for cell in module.cells(config):
        if cell.get("plugin") != name:
            continue
        for seed in seeds:
            digest = store.cell_hash(store.cell_key(module.NAME, config, cell, seed, device))
            for suffix in (".json", ".csv"):  # marker first: a half-removed cell never counts as cached
                (cells_dir / f"{digest}{suffix}").unlink(missing_ok=True)


def run_module(
    module: Any,
    *,
    plugins: Sequence[_plugins.Plugin] = (),
    overrides: Sequence[tuple[str, str]] = (),
    seeds: Sequence[int] = (0,),
    quick: bool = False,
    results_dir: str | os.PathLike = "results",
    figures_dir: str | os.PathLike | None = "figures",
    device: str = "cpu",
    force: bool = False,
    replot: bool = False,
    progress: bool | None = None,
    config: Any = None,
    jobs: int = 1,
    scheduler: str | None = None,
) -> store.RunResult:
    """Run one experiment module with plug-ins, ``[(key, value text), ...]`` overrides and seeds.

    ``config`` replaces the quick/full Config the overrides start from; ``jobs`` and
    ``scheduler`` go to :func:`diagnostics.store.run_experiment` (the plug-ins run on
    the Dask workers too: :mod:`diagnostics.parallel`; one that cannot be sent there
    raises :class:`~diagnostics.plugins.PluginError` before anything runs).
    """
    base = config if config is not None else store.config_for(module, quick)
    config = _overrides.apply(base, overrides, module.NAME)
    seeds = check_seeds(seeds)
    if plugins and (jobs > 1 or scheduler is not None) and not replot:
        from .parallel import ship_plugins

        ship_plugins(plugins)
    kw: dict[str, Any] = {
        "results_dir": results_dir,
        "device": device,
        "force": force,
        "replot": replot,
        "progress": progress,
        "jobs": jobs,
        "scheduler": scheduler,
    }
    start = time.perf_counter()
    with _plugins.active(plugins):
        try:
            if len(seeds) == 1:
                return store.run_experiment(module, config, figures_dir=figures_dir, seed=seeds[0], **kw)
            results = [store.run_experiment(module, config, figures_dir=None, seed=s, **kw) for s in seeds]
        except _plugins.PluginError as exc:
            if exc.plugin is not None and not replot:
                _discard_plugin_cells(module, config, exc.plugin, seeds, device, Path(results_dir))
            raise
        frame = pd.concat([r.frame for r in results], ignore_index=True)
        results_path = store.write_results(Path(results_dir) / module.NAME, frame)
        figures: list[Path] = []
        fig_dir = Path(figures_dir) / module.NAME if figures_dir is not None else results_path.parent
        if figures_dir is not None:
            from .seeds import plot_seeds

            fig_dir.mkdir(parents=True, exist_ok=True)
            for stem in plot_seeds(module, [r.frame for r in results], config, fig_dir, seeds):
                figures += [stem.with_name(stem.name + ext) for ext in (".pdf", ".png")]
    return dataclasses.replace(
        results[0],
        frame=frame,
        computed=sum(r.computed for r in results),
        cached=sum(r.cached for r in results),
        corrupt=sum(r.corrupt for r in results),
        results_path=results_path,
        figures=figures,
        figures_dir=fig_dir,
        seconds=time.perf_counter() - start,
    )


def run(
    names: str | Sequence[str],
    *,
    maps: Mapping[str, Any] | None = None,
    set: Mapping[str, Any] | None = None,
    seeds: Sequence[int] | int = 0,
    quick: bool = False,
    results_dir: str | os.PathLike | None = None,
    figures_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    force: bool = False,
    replot: bool = False,
    progress: bool | None = False,
    jobs: int = 1,
    scheduler: str | None = None,
) -> store.RunResult | list[store.RunResult]:
    """Run experiments from Python, with plug-in maps, Config overrides and seeds.

    Parameters
    ----------
    names : str or sequence of str
        Experiment name(s) (``python -m diagnostics list``).
    maps : mapping, optional
        ``{name: callable, matfun.Map, factory or "MODULE:ATTR"}`` (see
        :mod:`diagnostics.plugins`); each is probed before anything runs.
    set : mapping, optional
        Config overrides ``{key: value}`` (``"experiment.key"`` to scope one);
        values may be Python values or the command line's text.
    seeds : int or sequence of int
        One seed, or several: the figures then show mean and spread.
    quick : bool
        The tiny configuration (seconds on a CPU).
    jobs, scheduler
        Compute the uncached cells on ``jobs`` local worker processes, or on the Dask
        cluster at ``scheduler`` (:mod:`diagnostics.parallel`), plug-ins included;
        a plug-in given as a Python object is sent pickled, so it must be picklable
        by ``cloudpickle`` (closures and lambdas are).
    results_dir, figures_dir
        Roots; default ``results[/quick]`` and ``figures[/quick]`` as on the command line.

    Returns
    -------
    RunResult or list of RunResult
        One per experiment (a single one for a single name).

    Raises
    ------
    PluginError, OverrideError
        A broken plug-in (also one that cannot be sent to Dask workers) or a bad
        override (one-line messages).
    ParallelError
        The Dask cluster could not be started or reached, or a cell failed on a worker.
    """
    from . import experiments

    single = isinstance(names, str)
    modules = [experiments.get(n) for n in ([names] if isinstance(names, str) else list(names))]
    seed_list = check_seeds(seeds)
    plugins = _plugins.collect(maps)
    for p in plugins:
        if p.cache_note:
            print(p.cache_note, file=sys.stderr)
    parsed = [(*_split(k), _text(v)) for k, v in (set or {}).items()]
    per = _overrides.overrides_for(parsed, modules)
    suffix = "quick" if quick else ""
    results_root = Path(results_dir) if results_dir is not None else Path("results") / suffix
    figures_root = Path(figures_dir) if figures_dir is not None else Path("figures") / suffix
    out = [
        run_module(
            m,
            plugins=plugins,
            overrides=per[m.NAME],
            seeds=seed_list,
            quick=quick,
            results_dir=results_root,
            figures_dir=figures_root,
            device=device,
            force=force,
            replot=replot,
            progress=progress,
            jobs=jobs,
            scheduler=scheduler,
        )
        for m in modules
    ]
    return out[0] if single else out


def _split(key: str) -> tuple[str | None, str]:
    scope, dot, field = str(key).rpartition(".")
    return (scope if dot else None), field


def _text(value: Any) -> str:
    """A Python override value as the command line's text."""
    if isinstance(value, (tuple, list)):
        return ",".join(_text(v) for v in value)
    return "none" if value is None else str(value)
