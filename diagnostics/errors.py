"""The exception an experiment raises for unusable user input.

An experiment that reads user-supplied things (a corpus path, a plug-in
optimizer) raises :class:`BadInput` when one of them cannot be used; the command
line reports the message in one line and exits with status 2.  Raised inside
``run_cell``, it also means the failed cell is not cached.
"""

from __future__ import annotations

__all__ = ["BadInput"]


class BadInput(ValueError):
    """User input an experiment cannot use; the message names the input and the problem."""
