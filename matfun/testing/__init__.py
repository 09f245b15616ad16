"""Validate Muon-type numerics in your own CI.

Batteries (one module each; every public name is importable from here):

:mod:`matfun.testing.orthogonalizer`
    :func:`check_orthogonalizer` / :func:`assert_orthogonalizer`: is a
    ``matrix → matrix`` function an orthogonaliser (and, if declared, the
    Newton–Schulz schedule it claims)?  Its module docstring documents every
    check, threshold and calibration.
:mod:`matfun.testing.optimizer`
    :func:`check_optimizer` / :func:`assert_optimizer`: is a torch optimizer's
    update rule Muon's — orthogonalised momentum, its step-size rule, decoupled
    weight decay, all-or-nothing steps, bf16, checkpoints?  Measured from the
    outside, so it works on any ``torch.optim.Optimizer``.
:mod:`matfun.testing.sharded`
    :func:`check_sharded_optimizer`: does an optimizer give the same parameters
    sharded (FSDP2/DTensor) as unsharded?  Loaded on first use (it imports
    ``torch.distributed``).

Each returns a :class:`Report` (``passed``, ``failures``, ``failed_names``,
``table()``).  A ``"module:function"`` target runs in a child process that
cannot end, hang or fool the battery (:mod:`matfun.testing._isolation`).
"""

from __future__ import annotations

from typing import Any

from ._isolation import DEFAULT_TIMEOUT, BatteryTimeout, TargetError, TargetProcessError
from ._report import CheckResult, Report
from .optimizer import LR_RULES, OPTIMIZER_CHECK_NAMES, assert_optimizer, check_optimizer
from .orthogonalizer import (
    BF16_COEFFICIENT_TOL,
    CHECK_NAMES,
    PROFILES,
    Thresholds,
    assert_orthogonalizer,
    check_orthogonalizer,
)

__all__ = [
    "BF16_COEFFICIENT_TOL",
    "CHECK_NAMES",
    "DEFAULT_TIMEOUT",
    "LR_RULES",
    "OPTIMIZER_CHECK_NAMES",
    "PROFILES",
    "BatteryTimeout",
    "CheckResult",
    "Report",
    "ShardedReport",
    "TargetError",
    "TargetProcessError",
    "Thresholds",
    "assert_optimizer",
    "assert_orthogonalizer",
    "assert_sharded_optimizer",
    "check_optimizer",
    "check_orthogonalizer",
    "check_sharded_optimizer",
]


def __getattr__(name: str) -> Any:
    # the sharded check imports torch.distributed: load it on first use only
    if name in ("check_sharded_optimizer", "assert_sharded_optimizer", "ShardedReport"):
        from . import sharded

        return getattr(sharded, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
