"""The committed figure gallery, kept apart from what a run writes.

A run (``python -m diagnostics figures --quick``) writes its figures into
``figures/quick/NAME/`` (full-size runs: ``figures/NAME/``); git ignores both, so a
user's run never shows up as modified tracked files.  The gallery that
``figures/README.md`` shows is a separate, committed copy in ``figures/gallery/NAME/``:
the PNGs and markdown tables of a ``--quick`` run.  A maintainer refreshes it with::

    python -m diagnostics figures --quick --gallery

which runs the experiments as usual and then calls :func:`refresh`.

Why a copy and not the run's own output: figure files are byte-identical between
reruns on one machine only.  On another machine, even one of the same kind, they
differ by thousands of PNG pixels (also for figures with no timing in them: last-bit
floating-point differences, e.g. from other BLAS kernels or thread counts, move
antialiased lines), so tracked outputs would show up as modified after every run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["DEFAULT_DIR", "GALLERY_SUFFIXES", "refresh"]

#: Where the committed gallery lives, relative to the repository root.
DEFAULT_DIR = Path("figures") / "gallery"
#: The files of a figure directory that go into the gallery (PDFs stay out: they are for papers).
GALLERY_SUFFIXES = (".png", ".md")


def refresh(
    figures_dir: str | os.PathLike, names: Iterable[str], gallery_dir: str | os.PathLike = DEFAULT_DIR
) -> list[Path]:
    """Copy the gallery files of experiments ``names`` from ``figures_dir`` into ``gallery_dir``.

    For each name, every file of ``figures_dir/NAME/`` whose suffix is in
    :data:`GALLERY_SUFFIXES` replaces its copy in ``gallery_dir/NAME/``, and gallery
    files the run no longer produces are removed (a renamed figure leaves nothing stale).

    Parameters
    ----------
    figures_dir : path
        The figures root the run wrote into (e.g. ``figures/quick``).
    names : iterable of str
        Experiment names (sub-directories of ``figures_dir``).
    gallery_dir : path, default ``figures/gallery``
        The gallery root.

    Returns
    -------
    list of Path
        The gallery files written, in order.

    Raises
    ------
    FileNotFoundError
        If ``figures_dir/NAME`` holds no gallery file for some name (checked for
        every name before anything is copied, so a failed refresh changes nothing).
    """
    figures_dir, gallery_dir = Path(figures_dir), Path(gallery_dir)
    sources: dict[str, list[Path]] = {}
    for name in names:
        src = figures_dir / name
        files = sorted(p for p in src.glob("*") if p.is_file() and p.suffix in GALLERY_SUFFIXES) if src.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no {'/'.join(GALLERY_SUFFIXES)} figure files in '{src}' to put into the gallery")
        sources[name] = files
    written = []
    for name, files in sources.items():
        dst = gallery_dir / name
        dst.mkdir(parents=True, exist_ok=True)
        keep = {p.name for p in files}
        for old in dst.iterdir():
            if old.is_file() and old.suffix in GALLERY_SUFFIXES and old.name not in keep:
                old.unlink()
        for p in files:
            target = dst / p.name
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(p, tmp)
            os.replace(tmp, target)
            written.append(target)
    return written
