"""``.. cli-help:: [COMMAND]``: the ``--help`` text of ``python -m diagnostics [COMMAND]``.

The text is produced at build time from :func:`diagnostics.cli.build_parser` (the parser the
command itself uses), so the pages never drift from the code.  The width is fixed (100 columns)
so the output does not depend on the terminal the build runs in.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

WIDTH = 100


def help_text(command: str | None = None) -> str:
    """The ``--help`` text of the top-level parser or of one sub-command."""
    from diagnostics import cli

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        parser = cli.build_parser()
        if command:
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            if command not in sub.choices:
                raise ValueError(f"no command {command!r}; known: {', '.join(sub.choices)}")
            parser = sub.choices[command]
        return parser.format_help().rstrip() + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class CliHelp(SphinxDirective):
    optional_arguments = 1
    has_content = False
    option_spec: ClassVar[dict[str, Any]] = {"caption": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        command = self.arguments[0] if self.arguments else None
        try:
            text = help_text(command)
        except Exception as exc:  # noqa: BLE001 - reported as a (build-failing under -W) warning
            return [self.state.document.reporter.warning(f"cli-help {command}: {exc}", line=self.lineno)]
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
