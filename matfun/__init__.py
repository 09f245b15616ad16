"""matfun — the matrix-function maps behind Muon-type optimizers.

Maps (numpy arrays and torch tensors of shape ``(..., H, W)``, CPU or CUDA):

* :func:`polar`, :func:`smoothed_polar` — exact (smoothed) polar factor via SVD
  (``polar(..., method="qdwh")``: :func:`qdwh_polar`, the QDWH iteration);
* :func:`newton_schulz`, :func:`newton_schulz_iterates` — full-matrix
  Newton–Schulz with the published schedules (:data:`SCHEDULES`);
* :func:`tiled_newton_schulz`, :func:`tiled_newton_schulz_many` — HiMuon's
  per-tile map, with cross-matrix batching and memory-bounded chunks;
* :func:`preconditioned_newton_schulz`, :class:`SecondMoment` — Muon²'s
  second-moment preconditioning (full or factorised);
* :func:`transfer_function` — the scalar map ``p_K`` of a schedule;
* :func:`design_schedule` — minimax-optimal (Polar Express) schedules for an interval.

Each function is a thin wrapper over a map object (:class:`Polar`,
:class:`SmoothedPolar`, :class:`NewtonSchulz`, :class:`Tiled`,
:class:`Preconditioned`) with ``__call__``,
``iterates`` and ``flops``.
"""

from ._backend import PRECISIONS
from .base import Map
from .design import DesignedSchedule, design_schedule
from .newton_schulz import NewtonSchulz, newton_schulz, newton_schulz_iterates
from .polar import Polar, SmoothedPolar, polar, smoothed_polar
from .precondition import Preconditioned, SecondMoment, precondition, preconditioned_newton_schulz
from .qdwh import QDWHInfo, qdwh_polar
from .schedules import SCHEDULES, Schedule, get_schedule, transfer_function
from .tiling import Tiled, check_tile, tiled_newton_schulz, tiled_newton_schulz_many

__all__ = [
    "PRECISIONS",
    "SCHEDULES",
    "DesignedSchedule",
    "Map",
    "NewtonSchulz",
    "Polar",
    "Preconditioned",
    "QDWHInfo",
    "Schedule",
    "SecondMoment",
    "SmoothedPolar",
    "Tiled",
    "check_tile",
    "design_schedule",
    "get_schedule",
    "newton_schulz",
    "newton_schulz_iterates",
    "polar",
    "precondition",
    "preconditioned_newton_schulz",
    "qdwh_polar",
    "smoothed_polar",
    "tiled_newton_schulz",
    "tiled_newton_schulz_many",
    "transfer_function",
]


def _version() -> str:
    """The installed distribution's version (one source: ``pyproject.toml``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("matfun")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()
