"""The report card: ``python -m diagnostics report MODULE:ATTR`` writes HTML (parsed here) and PDF.

The experiments run at tiny sizes (``report_card._configs`` is replaced) so the
test stays fast; the pipeline (experiments with the plug-in, battery, verdict,
rendering) is the real one.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from html.parser import HTMLParser

import pytest

from diagnostics import cli, report_card

SOURCE = """
import numpy as np
import matfun


def cubic(steps):
    def ns(G):
        X = G / np.linalg.norm(G)
        for _ in range(steps):
            X = 1.5 * X - 0.5 * X @ X.T @ X
        return X
    return ns


tiled = matfun.Tiled(matfun.NewtonSchulz(5, "polar_express"), 8)
cubic5 = cubic(5)  # the factory at the card's K, as a plain callable for validate


def broken(G):
    return G[:1]
"""

TINY = {
    "transfer": {"steps": (2, 5), "n_sigma": 24},
    "ns_convergence": {"shape": (16, 24), "condition_numbers": (10.0, 1e3), "tiles": (8,), "max_steps": 6},
    "precision": {"shape": (16, 24), "condition_numbers": (10.0, 1e3), "max_steps": 6},
    "duality": {"shape": (16, 24), "tiles": (8,), "max_steps": 6, "stream_steps": 5},
    "scaling": {"ns": (16, 32), "tiles": (8,), "warmup": 0, "repeats": 1, "min_time": 0.0},
}


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    real = report_card._configs

    def configs(quick):
        return {n: dataclasses.replace(c, **TINY[n]) for n, c in real(quick).items()}

    monkeypatch.setattr(report_card, "_configs", configs)
    name = f"reportmaps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


class Page(HTMLParser):
    """Collects images, table cells and the verdict paragraphs."""

    def __init__(self):
        super().__init__()
        self.images, self.cells, self.verdict, self.stack = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.stack.append((tag, attrs.get("class", "")))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        tags = [t for t, _ in self.stack]
        if "td" in tags:
            self.cells.append(data.strip())
        if any(c == "verdict" for _, c in self.stack) and data.strip():
            self.verdict.append(data.strip())


def build(tmp_path, target, capsys, *options):
    out = tmp_path / "card"
    code = cli.main(["report", target, "--quick", "--out", str(out), *options])
    return code, out, capsys.readouterr()


def test_report_card_html_and_pdf(tiny, tmp_path, capsys):
    code, out, io = build(tmp_path, f"{tiny}:cubic", capsys)
    assert code == 0, io.err
    page = Page()
    page.feed((out / "report.html").read_text())
    # self-contained: every figure embedded (accuracy + five experiments), nothing fetched from elsewhere
    assert len(page.images) == 6 and all(src.startswith("data:image/png;base64,") for src in page.images)
    for check in ("shape", "finite", "scale_invariance", "orthogonal_equivariance", "alignment"):
        assert check in page.cells
    assert "PASS" in page.cells or "FAIL" in page.cells
    assert any(c.startswith("<=") or c.startswith(">=") for c in page.cells)  # thresholds shown
    text = " ".join(page.verdict)
    assert "cubic is a spectral map" in text and "validation battery" in text
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    # the experiments' cells are cached next to the card: a rerun rewrites none of them
    before = {c: c.stat().st_mtime_ns for c in (out / "results").glob("*/cells/*.json")}
    code, _, io = build(tmp_path, f"{tiny}:cubic", capsys)
    assert code == 0 and "cubic" in io.out
    assert before and {c: c.stat().st_mtime_ns for c in (out / "results").glob("*/cells/*.json")} == before


def test_report_flags_a_non_spectral_map(tiny, tmp_path, capsys):
    code, out, io = build(tmp_path, f"{tiny}:tiled", capsys)
    assert code == 0, io.err
    page = Page()
    page.feed((out / "report.html").read_text())
    assert "tiled is not spectral" in " ".join(page.verdict)
    # matfun.Tiled declares its tile, so the battery judges it as a tiled map (against the
    # tile-wise polar factor, tile-grid rotations) and a correct tiled map passes every check
    assert "orthogonal_equivariance" in page.cells and "alignment" in page.cells
    assert "FAIL" not in page.cells


@pytest.mark.parametrize("target, problem", [("broken", "returned shape"), ("nothing", "has no attribute")])
def test_report_bad_plugin_is_one_line_exit_2(tiny, tmp_path, capsys, target, problem):
    code, out, io = build(tmp_path, f"{tiny}:{target}", capsys)
    assert code == 2 and len(io.err.strip().splitlines()) == 1 and problem in io.err
    assert not (out / "report.html").exists()
    assert not out.exists()  # a failed report leaves no empty output folder


def test_declared_tile_is_read_from_the_map_or_from_what_its_factory_builds():
    from types import SimpleNamespace

    import matfun

    assert report_card._declared_tile(
        SimpleNamespace(target=matfun.Tiled(matfun.NewtonSchulz(5), 8), is_factory=False)
    ) == (8, 8)
    factory = SimpleNamespace(target=lambda steps: matfun.Tiled(matfun.NewtonSchulz(steps), (4, 6)), is_factory=True)
    assert report_card._declared_tile(factory) == (4, 6)
    # a plain callable declares nothing: the card then skips orthogonal equivariance instead
    assert report_card._declared_tile(SimpleNamespace(target=lambda G: G, is_factory=False)) is None


def test_report_schedule_option_runs_the_same_battery_as_validate(tiny, tmp_path, capsys, monkeypatch):
    from matfun import testing

    seen = []
    real = testing.check_orthogonalizer

    def spy(fn, **kwargs):
        report = real(fn, **kwargs)
        seen.append((kwargs, report))
        return report

    monkeypatch.setattr(testing, "check_orthogonalizer", spy)
    code, out, io = build(tmp_path, f"{tiny}:cubic", capsys, "--schedule", "cubic", "--steps", "5")
    assert code == 0, io.err
    ((kwargs, card_battery),) = seen
    assert kwargs["schedule"] == "cubic" and kwargs["steps"] == 5
    page = Page()
    page.feed((out / "report.html").read_text())
    assert "schedule_agreement" in page.cells
    # validate --schedule cubic --steps 5 on the same map: the same checks, as many as on the card
    code = cli.main(["validate", f"{tiny}:cubic5", "--schedule", "cubic", "--steps", "5", "--seed", "0"])
    assert code in (0, 1)
    (_, validate_battery) = seen[-1]
    names = lambda r: [c.name for c in r.checks]  # noqa: E731
    assert sorted(names(card_battery)) == sorted(names(validate_battery))
    assert set(names(card_battery)) <= set(page.cells)


def test_report_unknown_schedule_is_one_line_exit_2(tiny, tmp_path, capsys):
    code, out, io = build(tmp_path, f"{tiny}:cubic", capsys, "--schedule", "nope")
    assert code == 2 and len(io.err.strip().splitlines()) == 1 and "nope" in io.err
    assert not out.exists()
