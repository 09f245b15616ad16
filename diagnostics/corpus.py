"""Byte-level text corpora for the language-model bench, offline and deterministic.

Default corpus
    The CPython standard library's own top-level modules: every ``*.py`` file
    directly in ``sysconfig.get_paths()["stdlib"]`` (no sub-packages, no
    ``site-packages``), sorted by file name and concatenated byte for byte.  It
    ships with every Python, so the bench needs no download; different Pythons
    ship different files, which is why :attr:`Corpus.sha256` goes into the
    results (CPython 3.11: 168 files, 4.7 MB, byte-unigram entropy 3.15 nats/byte).

Any other corpus
    A path to a file (its bytes) or a directory (every regular file below it,
    recursively, hidden files and directories excluded, sorted by relative
    POSIX path and concatenated).

Train/validation split
    The byte stream is cut into consecutive blocks of ``block`` bytes; every
    ``k``-th block (``k = round(1/val_fraction)``, counting from block ``k − 1``)
    is validation, the rest training.  The split depends on nothing but the
    bytes, is spread over the whole corpus (the sorted stdlib would otherwise put
    ``z*.py`` in validation), and the two parts never share a block.

Errors (:class:`CorpusError`, one line naming the path): a path that does not
exist, no bytes at all, or a split too small for one training window of
``context + 1`` bytes in each part.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sysconfig
from pathlib import Path

import numpy as np

from .errors import BadInput

__all__ = ["Corpus", "CorpusError", "default_files", "load_corpus", "split", "unigram_entropy"]


class CorpusError(BadInput):
    """A corpus path that is missing, empty or too small (reported in one line)."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Concatenated bytes of a corpus and where they came from.

    Attributes
    ----------
    data : numpy.ndarray of uint8
    source : str
        ``"stdlib"`` or the path given.
    n_files : int
    sha256 : str
        Hex SHA-256 of ``data``: two runs trained on the same bytes iff equal.
    """

    data: np.ndarray
    source: str
    n_files: int
    sha256: str

    @property
    def n_bytes(self) -> int:
        return int(self.data.size)


def default_files() -> list[Path]:
    """The default corpus's files: top-level ``*.py`` of the standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: p.name)


def _directory_files(root: Path) -> list[Path]:
    files = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_corpus(path: str = "") -> Corpus:
    """The corpus at ``path`` (a file or a directory); ``""`` or ``"stdlib"``: the default.

    Raises
    ------
    CorpusError
        ``path`` does not exist or holds no bytes.
    """
    if path in ("", "stdlib"):
        files, source = default_files(), "stdlib"
        if not files:
            raise CorpusError(f"corpus: no *.py files in the standard library at {sysconfig.get_paths()['stdlib']}")
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise CorpusError(f"corpus path {path!r} does not exist (give a text file or a directory)")
        files, source = ([p] if p.is_file() else _directory_files(p)), str(path)
    try:
        data = b"".join(f.read_bytes() for f in files)
    except OSError as exc:
        raise CorpusError(f"corpus {source!r}: cannot read {exc.filename}: {exc.strerror}") from None
    if not data:
        raise CorpusError(f"corpus {source!r} is empty ({len(files)} file(s), 0 bytes)")
    return Corpus(np.frombuffer(data, dtype=np.uint8).copy(), source, len(files), hashlib.sha256(data).hexdigest())


def split(corpus: Corpus, context: int, val_fraction: float = 0.1, block: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` byte arrays by interleaved blocks (see the module docstring).

    Raises
    ------
    CorpusError
        Either part is shorter than one window of ``context + 1`` bytes.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    k = max(2, round(1 / val_fraction))
    n_blocks = math.ceil(corpus.n_bytes / block)
    is_val = (np.arange(n_blocks) % k) == k - 1
    if n_blocks < k:  # fewer blocks than one period: the last block is validation
        is_val[-1] = n_blocks > 1
    owner = np.repeat(is_val, block)[: corpus.n_bytes]
    train, val = corpus.data[~owner], corpus.data[owner]
    need = context + 1
    if train.size < need or val.size < need:
        raise CorpusError(
            f"corpus {corpus.source!r} is too small: {corpus.n_bytes} bytes split into {train.size} train / "
            f"{val.size} validation bytes (blocks of {block}); one batch needs context + 1 = {need} bytes in each"
        )
    return train, val


def unigram_entropy(data: np.ndarray) -> float:
    """Entropy of the byte distribution of ``data`` in nats/byte (the loss of the best unigram model)."""
    counts = np.bincount(np.asarray(data, dtype=np.uint8), minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
