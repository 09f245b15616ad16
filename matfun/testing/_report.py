"""The report every battery of :mod:`matfun.testing` returns: one row per check."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CheckResult", "Report"]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        The check's stable name (e.g. one of :data:`CHECK_NAMES`).
    passed : bool
    value : float or int or None
        The measured worst case (a count of failing cases for the yes/no
        checks, ``nan`` when nothing could be measured).
    threshold : float or int or None
        The bound ``value`` is compared with (see ``comparison``).
    detail : str
        Human-readable explanation: the worst case's name, an exception message.
    comparison : str
        ``"<="`` (value must not exceed threshold) or ``">="``.
    """

    name: str
    passed: bool
    value: float | int | None
    threshold: float | int | None
    detail: str = ""
    comparison: str = "<="
    skipped: bool = False  # could not apply (e.g. a shape the optimizer rejects): passed, shown as SKIP


@dataclass
class Report:
    """Result of a battery (:func:`check_orthogonalizer`, :func:`check_optimizer`).

    ``report.passed`` is true when every check passed; ``report.failures`` lists
    the failed :class:`CheckResult` objects; ``report.table()`` (and ``str``)
    renders a fixed-width text table.
    """

    checks: list[CheckResult] = field(default_factory=list)
    target: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    title: str = "orthogonaliser check"

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def failed_names(self) -> list[str]:
        return [c.name for c in self.failures]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks run: {[c.name for c in self.checks]}")

    def table(self) -> str:
        """A fixed-width text table, one row per check, and a summary line."""
        head = f"{self.title}: {self.target}" if self.target else self.title
        if self.settings:
            head += "  (" + ", ".join(f"{k}={v}" for k, v in self.settings.items()) + ")"
        rows = [("check", "result", "value", "threshold", "detail")]
        for c in self.checks:
            thr = "-" if c.threshold is None else f"{c.comparison} {_fmt(c.threshold)}"
            result = "SKIP" if c.skipped else "PASS" if c.passed else "FAIL"
            rows.append((c.name, result, _fmt(c.value), thr, c.detail))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [head]
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(widths[j]) for j in range(4)) + "  " + r[4])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        n_fail = len(self.failures)
        if n_fail:
            lines.append(f"FAILED: {n_fail} of {len(self.checks)} checks ({', '.join(self.failed_names)})")
        else:
            skipped = sum(c.skipped for c in self.checks)
            lines.append(f"PASSED: all {len(self.checks)} checks" + (f" ({skipped} skipped)" if skipped else ""))
        return "\n".join(line.rstrip() for line in lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4g}"


class _Worst:
    """Track the worst value of an error (``<=``) or score (``>=``) over cases."""

    def __init__(self, name: str, threshold: float, comparison: str = "<="):
        self.name, self.threshold, self.comparison = name, threshold, comparison
        self.value: float | None = None
        self.where = ""
        self.errors: list[str] = []
        self.n = 0

    def add(self, case: str, value: float) -> None:
        self.n += 1
        value = float(value)
        bad = (lambda v: -v) if self.comparison == ">=" else (lambda v: v)
        if math.isnan(value):
            value = -math.inf if self.comparison == ">=" else math.inf
        if self.value is None or bad(value) > bad(self.value):
            self.value, self.where = value, case

    def error(self, case: str, msg: str) -> None:
        self.errors.append(f"{case}: {msg}")

    def result(self, what: str) -> CheckResult:
        if self.errors:
            more = f" (+{len(self.errors) - 1} more)" if len(self.errors) > 1 else ""
            return CheckResult(self.name, False, math.nan, self.threshold, self.errors[0] + more, self.comparison)
        v = self.value
        ok = v is not None and (v >= self.threshold if self.comparison == ">=" else v <= self.threshold)
        if v is not None and math.isinf(v):
            detail = f"non-finite output on {self.where}"
            v = math.nan if self.comparison == ">=" else v  # no alignment of a NaN matrix
        else:
            detail = f"worst {what} on {self.where}" if self.n > 1 else f"{what} on {self.where}"
        return CheckResult(self.name, bool(ok), v, self.threshold, detail, self.comparison)
