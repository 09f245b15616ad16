"""``python -m diagnostics report MODULE:ATTR [--quick] [--out DIR]`` — a report card for one map.

Runs your map through the experiments that compare maps and through the
validation battery, beside matfun's Jordan and Polar Express Newton–Schulz, and
writes ``DIR/report.html`` (self-contained: figures embedded) and
``DIR/report.pdf`` (the same content); see :mod:`diagnostics.report_card` for
what the card contains and :mod:`diagnostics.plugins` for what a map may be.

Exit codes: 0 the card was written (whatever the verdict); 2 a bad plug-in or
argument (one line naming it).

This module imports nothing heavy, so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["DESCRIPTION", "EXAMPLES", "HELP", "add_arguments", "run"]

PROG = "matfun-diagnostics report"
HELP = "a report card for your map: experiments + validation battery -> HTML and PDF"
DESCRIPTION = (
    "Run your map (a callable G -> X, a factory steps -> map or a matfun.Map) through the experiments that "
    "compare maps and through the validation battery, beside matfun's Jordan and Polar Express Newton-Schulz, "
    "and write DIR/report.html (self-contained) and DIR/report.pdf with the same content. Exit 0 when the "
    "card is written (whatever its verdict), 2 for a bad plug-in or argument."
)
EXAMPLES = """
python -m diagnostics report examples.my_map:polished_ns --quick --out report/
python -m diagnostics report mypkg.ns:my_newton_schulz --name mine --device cuda
"""


# ---------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` arguments (used by :mod:`diagnostics.cli`)."""
    parser.add_argument(
        "target",
        metavar="MODULE:ATTR",
        help="your map: a callable G -> X, a factory steps -> map, or a matfun.Map (see diagnostics.plugins)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a few minutes on a 2-core CPU")
    parser.add_argument("--out", metavar="DIR", help="output directory (default report/<name>)")
    parser.add_argument("--name", help="the map's name on the card (default: ATTR)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda or cuda:N")
    parser.add_argument("--force", action="store_true", help="recompute every cell even if cached")
    parser.add_argument(
        "--schedule",
        default=None,
        metavar="NAME",
        help="the battery also checks agreement with this schedule of matfun.SCHEDULES (cubic, "
        "jordan, you, polar_express), as validate --schedule does",
    )
    parser.add_argument(
        "--steps", type=_nonneg_int, default=5, metavar="K", help="steps of the --schedule reference (default 5)"
    )


def _nonneg_int(value: str) -> int:
    from .validate import _nonneg_int as check

    return check(value)


def run(args: argparse.Namespace) -> int:
    """Build the card for parsed ``args``; returns 0 (bad input raises ``UsageError``: one line, exit 2)."""
    from . import plugins
    from .cli import UsageError, check_device
    from .report_card import build_report

    check_device(args.device)
    created: list[Path] = []  # directories this run made: removed again when the card fails
    try:
        plugin = plugins.load(args.target, args.name)
        plugin.check()  # a broken map fails before any directory is made
        out = Path(args.out) if args.out else Path("report") / plugin.name
        created = [d for d in (out, *out.parents) if not d.exists()]
        out.mkdir(parents=True, exist_ok=True)
        if args.schedule is not None:
            import matfun

            if args.schedule not in matfun.SCHEDULES:
                raise UsageError(
                    f"--schedule {args.schedule!r} is not one of matfun.SCHEDULES "
                    f"({', '.join(sorted(matfun.SCHEDULES))})"
                )
        card = build_report(
            plugin,
            out,
            quick=args.quick,
            device=args.device,
            force=args.force,
            schedule=args.schedule,
            steps=args.steps,
        )
    except BaseException as exc:
        for d in created:  # deepest first; only directories left empty
            try:
                d.rmdir()
            except OSError:
                break
        if isinstance(exc, plugins.PluginError):
            raise UsageError(str(exc)) from None
        raise
    print(f"report card for {plugin.name}: {out / 'report.html'} and {out / 'report.pdf'}")
    for sentence in card.verdict:
        print("  " + sentence)
    return 0
