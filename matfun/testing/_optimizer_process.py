"""Run :func:`matfun.testing.check_optimizer` on ``"module:function"`` targets in a child process.

The child imports the factories, runs the battery and sends the report back
as JSON (never pickle: the parent runs no code the child chose).  A target that
calls ``os._exit()``, crashes the interpreter or hangs therefore cannot end or
stall the caller: a dead child raises :class:`TargetProcessError`, one past the
deadline is killed with everything it forked and raises :class:`BatteryTimeout`.
The verdicts are computed in the child; see :mod:`matfun.testing.optimizer`.
"""

from __future__ import annotations

import json
import multiprocessing.connection
import os
from typing import Any

from ._isolation import BatteryTimeout, TargetError, TargetProcessError, _context, kill_process_tree
from ._report import CheckResult, Report

__all__ = ["check_optimizer_isolated"]

_MAX_REPLY = 1 << 22


def check_optimizer_isolated(target: str, *, timeout: float, **options: Any) -> Report:
    """:func:`check_optimizer` on ``target`` (and ``options["reference"]``, strings) in a child process."""
    import torch

    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_serve, args=(child, target, options, torch.get_num_threads()), name="matfun.testing optimizer target"
    )
    proc.start()
    child.close()
    try:
        ready = multiprocessing.connection.wait([parent, proc.sentinel], timeout)
        if not ready:
            raise BatteryTimeout(
                f"the optimizer battery did not finish within {timeout:g} s; the target process was killed"
            )
        try:
            reply = json.loads(parent.recv_bytes(_MAX_REPLY).decode())
        except (EOFError, OSError, ValueError):
            proc.join(2.0)
            hint = " (sys.exit()/os._exit() in the target?)" if proc.exitcode in (0, 1) else ""
            raise TargetProcessError(
                f"{target}: the target process ended with exit code {proc.exitcode} before the battery completed{hint}"
            ) from None
    finally:
        kill_process_tree(proc)
    kind = reply.get("kind")
    if kind == "target_error":
        raise TargetError(str(reply.get("message"))[:500])
    if kind == "value_error":
        raise ValueError(str(reply.get("message"))[:500])
    if kind != "report":
        raise TargetProcessError(f"{target}: malformed reply from the target process ({kind!r})")
    checks = [
        CheckResult(**{k: c[k] for k in ("name", "passed", "value", "threshold", "detail", "comparison", "skipped")})
        for c in reply["checks"]
    ]
    return Report(checks, target=str(reply["target"]), settings=dict(reply["settings"]), title=str(reply["title"]))


def _serve(conn: Any, target: str, options: dict[str, Any], threads: int) -> None:
    def send(message: dict[str, Any]) -> None:
        conn.send_bytes(json.dumps(message, default=str).encode())

    try:
        os.setsid()  # its own session: the parent kills everything it forks
    except OSError:
        pass
    os.dup2(2, 1)  # the target's prints go to stderr, never near the parent's table
    try:
        import torch

        from .optimizer import check_optimizer

        torch.set_num_threads(threads)
        report = check_optimizer(target, timeout=None, **options)
        send(
            {
                "kind": "report",
                "target": report.target,
                "settings": report.settings,
                "title": report.title,
                "checks": [_plain(c) for c in report.checks],
            }
        )
    except TargetError as exc:
        send({"kind": "target_error", "message": " ".join(str(exc).split())})
    except (ValueError, TypeError) as exc:
        send({"kind": "value_error", "message": " ".join(str(exc).split())})
    except BaseException as exc:  # noqa: BLE001 - e.g. SystemExit at import of the reference
        send({"kind": "target_error", "message": f"{target}: {type(exc).__name__}: {exc}"})
    finally:
        os._exit(0)


def _plain(c: CheckResult) -> dict[str, Any]:
    def number(v: Any) -> Any:
        return v if v is None or isinstance(v, (bool, int, str)) else float(v)

    return {
        "name": c.name,
        "passed": bool(c.passed),
        "value": number(c.value),
        "threshold": number(c.threshold),
        "detail": c.detail,
        "comparison": c.comparison,
        "skipped": bool(c.skipped),
    }
