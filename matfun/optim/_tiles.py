"""Tile specifications of HiMuon and tiled Muon², and the small-matrix rule.

A specification is ``None`` (full matrices), ``T`` or ``(Th, Tw)``, a callable
``step ↦ tile``, or a schedule ``[(start_step, tile), ...]`` starting at step 0.
"""

from __future__ import annotations

import itertools
from typing import Any

import matfun

Tile = tuple[int, int] | None

#: How a parameter no larger than one tile (``H·W ≤ Th·Tw``) is treated.
SMALL_MATRIX_MODES = ("full", "tile")


def _check_tile_value(tile: Any) -> Tile:
    """``None`` (full matrices), ``T`` or ``(Th, Tw)`` → ``None`` or ``(Th, Tw)``."""
    if tile is None:
        return None
    return matfun.check_tile(tuple(tile) if isinstance(tile, list) else tile)


def _is_schedule(spec: Any) -> bool:
    return (
        isinstance(spec, (list, tuple))
        and len(spec) > 0
        and all(isinstance(e, (list, tuple)) and len(e) == 2 for e in spec)
    )


def check_tile_spec(spec: Any) -> None:
    """Validate a tile specification (see :class:`matfun.optim.HiMuon`); raises ``ValueError``."""
    if spec is None or callable(spec):
        return
    if _is_schedule(spec):
        starts = []
        for start, tile in spec:
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise ValueError(f"tile schedule start steps must be integers >= 0, got {start!r}")
            _check_tile_value(tile)
            starts.append(start)
        if starts[0] != 0:
            raise ValueError(f"a tile schedule must start at step 0, got {list(spec)!r}")
        if any(b <= a for a, b in itertools.pairwise(starts)):
            raise ValueError(f"tile schedule start steps must increase strictly, got {starts}")
        return
    _check_tile_value(spec)


def check_tiling(group: dict[str, Any]) -> None:
    """Validate a group's ``tile``, ``small_matrix`` and ``step_count``."""
    check_tile_spec(group["tile"])
    if group["small_matrix"] not in SMALL_MATRIX_MODES:
        raise ValueError(f"small_matrix must be one of {SMALL_MATRIX_MODES}, got {group['small_matrix']!r}")
    count = group["step_count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"step_count must be an integer >= 0, got {count!r}")


def resolve_tile(spec: Any, step: int) -> Tile:
    """The tile in force at (0-based) optimizer step ``step``: ``None`` or ``(Th, Tw)``."""
    if callable(spec):
        return _check_tile_value(spec(step))
    if _is_schedule(spec):
        current = None
        for start, tile in spec:
            if start <= step:
                current = tile
        return _check_tile_value(current)
    return _check_tile_value(spec)


def effective_tile(tile: Tile, shape: tuple[int, int]) -> tuple[int, int]:
    """``min(Th, H) × min(Tw, W)`` (the whole matrix for ``tile=None``)."""
    H, W = shape
    if tile is None:
        return H, W
    return min(tile[0], H), min(tile[1], W)


def tile_plan(tile: Tile, shape: tuple[int, int], small_matrix: str = "full") -> tuple[Tile, tuple[int, int]]:
    """``(tile to run, shape for the lr rule)`` for an ``H × W`` matrix.

    ``small_matrix="full"`` (the official HiMuon optimizer): a matrix with
    ``H·W ≤ Th·Tw`` gets one full Newton–Schulz (tile ``None``) and the lr rule
    of its own shape.  Otherwise (and always with ``"tile"``) the matrix is
    tiled and the lr rule applies to the effective tile.
    """
    if tile is None or (small_matrix == "full" and shape[0] * shape[1] <= tile[0] * tile[1]):
        return None, shape
    return tile, effective_tile(tile, shape)
