"""The documentation cannot rot: its examples run and the site builds with warnings as errors.

(a) Every ```python block of the site's pages (``docs/**/*.md``, and the README.md / figures/README.md
    fragments they ``{include}``) runs, each in a fresh namespace, in a temporary directory.  Two
    conventions, an HTML comment on the line before the block (invisible on GitHub and in the site):

    * ``<!-- skip-test: WHY -->``: not run (only for code that needs the user's own package,
      such as ``from myproject.optim import newton_schulz5``);
    * ``<!-- continue-test: ... -->``: runs in the namespace of the block before it (a second block
      that uses the first one's ``hidden``).

(b) The ``Examples`` sections of the docstrings of every module of ``matfun`` and ``diagnostics``
    run as doctests (``torch.set_num_threads(1)``).

(c) ``python -m sphinx -W --keep-going -b html docs ...`` succeeds (into a temporary directory,
    offline: ``MATFUN_DOCS_OFFLINE=1`` skips the intersphinx probe).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

sphinx = pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")


# --------------------------------------------------------------------------- (a) code blocks

_INCLUDE = re.compile(r"```\{include\}\s+(?P<path>\S+)\n(?P<options>(?::[^\n]*\n)*)```")
_OPTION = re.compile(r":(?P<key>[\w-]+):\s*(?P<value>.*)")
_FENCE = re.compile(r"^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!--\s*(?P<kind>skip-test|continue-test)\b(?P<why>[^>]*)-->\s*$")


@dataclass
class Block:
    where: str  # "README.md:57" (the file the code is written in, and its line)
    code: str
    skip: str | None  # the reason, for <!-- skip-test: ... -->
    continues: bool  # <!-- continue-test --> : the previous block's namespace


def _blocks_of(text: str, source: Path, first_line: int) -> list[Block]:
    blocks = []
    for match in _FENCE.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        blocks.append(
            Block(
                where=f"{source.relative_to(ROOT)}:{line + 1}",
                code=match.group("code"),
                skip=mark.group("why").strip(" :") or "skip-test"
                if mark and mark.group("kind") == "skip-test"
                else None,
                continues=bool(mark and mark.group("kind") == "continue-test"),
            )
        )
    return blocks


def _included(page: Path, match: re.Match) -> tuple[str, Path, int]:
    """The text a MyST ``{include}`` directive pulls in, its file and its first line (0-based)."""
    path = (page.parent / match.group("path")).resolve()
    options = {
        m.group("key"): m.group("value").strip() for m in map(_OPTION.match, match.group("options").splitlines()) if m
    }
    text = path.read_text(encoding="utf-8")
    start = 0
    if "start-after" in options:
        assert options["start-after"] in text, f"{page}: marker {options['start-after']!r} not in {path}"
        start = text.index(options["start-after"]) + len(options["start-after"])
    end = len(text)
    if "end-before" in options:
        assert options["end-before"] in text[start:], f"{page}: marker {options['end-before']!r} not in {path}"
        end = text.index(options["end-before"], start)
    return text[start:end], path, text.count("\n", 0, start)


def page_blocks() -> list[tuple[str, list[Block]]]:
    """(page, its python blocks in order) for every markdown page of the site."""
    pages = []
    for page in sorted(DOCS.rglob("*.md")):
        if "_build" in page.relative_to(DOCS).parts:
            continue
        text = page.read_text(encoding="utf-8")
        blocks: list[Block] = []
        position = 0
        for match in _INCLUDE.finditer(text):
            blocks += _blocks_of(text[position : match.start()], page, text.count("\n", 0, position))
            blocks += _blocks_of(*_included(page, match))
            position = match.end()
        blocks += _blocks_of(text[position:], page, text.count("\n", 0, position))
        if blocks:
            pages.append((str(page.relative_to(ROOT)), blocks))
    return pages


PAGES = page_blocks()


def test_the_task_pages_have_examples():
    """The extraction finds the task pages' code (a broken marker would silently test nothing)."""
    found = dict(PAGES)
    for page in ("optimizers", "monitor", "cluster", "validate-orthogonaliser", "validate-optimizer"):
        assert f"docs/tasks/{page}.md" in found, f"no python block found on docs/tasks/{page}.md"
    skipped = [b for _, blocks in PAGES for b in blocks if b.skip]
    assert all("myproject" in b.code for b in skipped), "skip-test is only for code that needs your package"


@pytest.mark.parametrize("page,blocks", PAGES, ids=[page for page, _ in PAGES])
def test_page_examples_run(page, blocks, tmp_path, monkeypatch):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # examples may write files (monitor.csv, ...)
    monkeypatch.syspath_prepend(str(ROOT))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        ran = 0
        for block in blocks:
            if block.skip:
                continue
            if not block.continues:
                namespace = {"__name__": "__docs_example__"}
            try:
                exec(compile(block.code, block.where, "exec"), namespace)
            except Exception as exc:
                raise AssertionError(
                    f"the example at {block.where} (on {page}) fails: {type(exc).__name__}: {exc}"
                ) from exc
            ran += 1
        assert ran or all(b.skip for b in blocks)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- (b) docstrings

# modules that import an optional dependency at import time: skipped only when it is missing
_OPTIONAL = {"triton", "dask", "distributed", "tensorboard", "pyarrow"}


#: modules the doctest walk must not import: matfun imports ``_triton_kernels`` at the first kernel
#: launch, and importing it decorates its kernels for the ``TRITON_INTERPRET`` setting of that
#: moment (an import here, without the interpreter, breaks the interpreted Triton tests that run
#: later in the same process); it has no examples
_NOT_IMPORTED = {"matfun._triton_kernels"}


def _modules() -> list[str]:
    names = []
    for package in ("matfun", "diagnostics"):
        module = importlib.import_module(package)
        names.append(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
    return sorted(set(names) - _NOT_IMPORTED)


MODULES = _modules()


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _OPTIONAL:
            pytest.skip(f"{name} needs {exc.name}")
        raise


def test_docstring_examples_exist():
    """A guard on the finder: the public maps' examples are collected."""
    found = {
        t.name
        for name in ("matfun.polar", "matfun.tiling", "matfun.newton_schulz")
        for t in doctest.DocTestFinder().find(importlib.import_module(name))
        if t.examples
    }
    assert {"matfun.polar.polar", "matfun.tiling.tiled_newton_schulz"} <= found, found


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    module = _import(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    if not tests:
        return
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        output: list[str] = []
        for test in tests:
            runner.run(test, out=output.append)
    finally:
        torch.set_num_threads(threads)
    assert runner.failures == 0, "".join(output)


# --------------------------------------------------------------------------- (c) the site


@pytest.mark.parametrize(
    "package,page",
    [("matfun", "matfun"), ("matfun.optim", "optim"), ("matfun.testing", "testing"), ("matfun.monitor", "monitor")],
)
def test_api_pages_list_every_public_name(package, page):
    """docs/api/PAGE.rst names each name of ``__all__`` (autosummary or autodata): say which are missing."""
    text = (DOCS / "api" / f"{page}.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^   (\w+)$", text, re.MULTILINE)) | set(
        re.findall(r"^\.\. autodata:: (\w+)$", text, re.MULTILINE)
    )
    public = set(importlib.import_module(package).__all__)
    assert not public - listed, f"add to docs/api/{page}.rst: {sorted(public - listed)}"
    assert not listed - public, f"not public in {package}: {sorted(listed - public)}"


def test_docs_build_with_warnings_as_errors(tmp_path):
    """The site builds offline with -W (about 10-20 s on a 2-core machine)."""
    env = dict(
        os.environ,
        MATFUN_DOCS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    # every public name of the four packages is documented (one page each, or a constant on its package's page)
    html = "".join(p.read_text(encoding="utf-8") for p in (out / "api").rglob("*.html"))
    for package in ("matfun", "matfun.optim", "matfun.testing", "matfun.monitor"):
        missing = [n for n in importlib.import_module(package).__all__ if f'id="{package}.{n}"' not in html]
        assert not missing, f"public names of {package} missing from the API reference: {missing}"
    assert 'id="matfun.tiled_newton_schulz"' in (
        out / "api" / "generated" / "matfun.tiled_newton_schulz.html"
    ).read_text(encoding="utf-8")
    cli = (out / "api" / "cli.html").read_text(encoding="utf-8")
    for text in ("--tolerance-profile", "validate-optimizer", "monitor-report", "design-schedule"):
        assert text in cli
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    images = re.findall(r'<img[^>]+src="([^"]+)"', gallery)
    assert len(images) >= 10
    for src in images:
        assert (out / src).is_file(), f"gallery image {src} is missing from the build"
    for page in ("optimizers", "monitor", "cluster", "validate-orthogonaliser", "validate-optimizer"):
        assert (out / "tasks" / f"{page}.html").is_file()
