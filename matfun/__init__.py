"""matfun — the matrix-function maps behind Muon-type optimizers.

Maps (numpy arrays and torch tensors of shape ``(..., H, W)``, CPU or CUDA):

* :func:`polar`, :func:`smoothed_polar` — exact (smoothed) polar factor via SVD;
* :func:`newton_schulz`, :func:`newton_schulz_iterates` — full-matrix
  Newton–Schulz with the published schedules (:data:`SCHEDULES`);
* :func:`transfer_function` — the scalar map ``p_K`` of a schedule.

Each function is a thin wrapper over a map object (:class:`Polar`,
:class:`SmoothedPolar`, :class:`NewtonSchulz`) with ``__call__``,
``iterates`` and ``flops``.
"""

from .base import Map
from .newton_schulz import NewtonSchulz, newton_schulz, newton_schulz_iterates
from .polar import Polar, SmoothedPolar, polar, smoothed_polar
from .schedules import SCHEDULES, Schedule, get_schedule, transfer_function
from ._backend import PRECISIONS

__all__ = [
    "Map",
    "NewtonSchulz",
    "Polar",
    "SmoothedPolar",
    "Schedule",
    "SCHEDULES",
    "PRECISIONS",
    "get_schedule",
    "newton_schulz",
    "newton_schulz_iterates",
    "polar",
    "smoothed_polar",
    "transfer_function",
]
__version__ = "0.1.0"
