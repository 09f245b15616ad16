"""Sphinx configuration of matfun's documentation.

Build (warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The build needs no network: intersphinx inventories (numpy, scipy, torch) are used only when a
short probe reaches them, and the build never fails without them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # autodoc imports this checkout, not another install
sys.path.insert(0, str(DOCS / "_ext"))

import matfun  # noqa: E402

project = "matfun"
author = "matfun contributors"
copyright = "matfun contributors"
release = matfun.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
    "numpydoc",
    "myst_parser",
    "cli_help",  # docs/_ext/cli_help.py: the diagnostics commands' --help text
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# ---------------------------------------------------------------- autodoc / numpydoc
autodoc_member_order = "bysource"
autosummary_generate = True  # one page per public name: docs/api/generated/ (not tracked)
autosummary_imported_members = True
autodoc_typehints = "none"  # the numpydoc "Parameters" sections say the types
autodoc_default_options = {"show-inheritance": True}
numpydoc_show_class_members = False  # members are listed by autodoc, not by autosummary tables
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# ---------------------------------------------------------------- MyST
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3  # GitHub-style anchors, as the READMEs link them

# ---------------------------------------------------------------- intersphinx (only when reachable)
_INVENTORIES = {
    "numpy": "https://numpy.org/doc/stable/",
    "scipy": "https://docs.scipy.org/doc/scipy/",
    "torch": "https://docs.pytorch.org/docs/stable/",
}


def _reachable(url: str, timeout: float = 2.0) -> bool:
    try:
        request = urllib.request.Request(url + "objects.inv", method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status < 400
    except Exception:  # noqa: BLE001 - offline, DNS failure, proxy, timeout: build without it
        return False


if os.environ.get("MATFUN_DOCS_OFFLINE"):
    intersphinx_mapping: dict[str, tuple[str, None]] = {}
else:
    intersphinx_mapping = {name: (url, None) for name, url in _INVENTORIES.items() if _reachable(url)}
intersphinx_timeout = 5


class _InventoryUnreachable(logging.Filter):
    """An inventory that answered the probe but then fails to download is an (untyped) warning in
    Sphinx, which -W would turn into a failed build: say it on stderr and build without it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to reach any of the inventories" in str(record.msg):
            print("intersphinx: inventories unreachable, building without them", file=sys.stderr)
            return False
        return True


logging.getLogger("sphinx.sphinx.ext.intersphinx").addFilter(_InventoryUnreachable())  # intersphinx._shared.LOGGER

# ---------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"matfun {release}"
html_static_path = ["_static"]
html_css_files = ["matfun.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],  # not on the one-object API pages (their template)
    "header_links_before_dropdown": 3,
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": []}
html_show_sourcelink = False

# ---------------------------------------------------------------- README fragments
# The task pages include sections of README.md (between ``<!-- docs:NAME:start -->`` and
# ``<!-- docs:NAME:end -->`` markers), and the gallery includes figures/README.md: one source.
# Links in them are written for GitHub; rewrite those that point outside docs/.
# (files of the repository that are not pages of the site keep their text, without the link)
_LINKS = [
    (re.compile(r"\]\(figures/README\.md(#[^)]*)?\)"), lambda m: f"](/gallery.md{m.group(1) or ''})"),
    (re.compile(r"\[([^\]]*)\]\((?:examples|tests|benchmarks)/[^)]*\)"), lambda m: m.group(1)),
]


# figures/README.md links the gallery's tables and extra PNGs: served as downloads
_GALLERY_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(gallery/([^)]*)\)")


def _rewrite_links(app, relative_path, parent_docname, content):
    path = Path(relative_path).as_posix()
    text = content[0]
    if path.endswith("figures/README.md"):
        # its figures are ### sections under the page's title: one level up in the site
        text = re.sub(r"^### ", "## ", text, flags=re.MULTILINE)
        text = _GALLERY_LINK.sub(lambda m: f"[{m.group(1)}](path:../figures/gallery/{m.group(2)})", text)
    elif path.endswith("README.md"):
        for pattern, replace in _LINKS:
            text = pattern.sub(replace, text)
    content[0] = text


def setup(app):
    app.connect("include-read", _rewrite_links)
    return {"parallel_read_safe": True}
