"""Diagnostics for Muon-type orthogonalisation maps: controlled inputs, metrics, timing.

:func:`run` runs experiments from Python, with your own maps beside the built-ins::

    import diagnostics
    diagnostics.run("ns_convergence", maps={"mine": my_map}, quick=True)
"""


def run(*args, **kwargs):
    """Run experiments with plug-in maps, Config overrides and seeds (see :func:`diagnostics.runner.run`)."""
    from .runner import run as _run

    return _run(*args, **kwargs)
