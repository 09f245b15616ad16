"""A user's figures run never dirties the git tree; ``figures --quick --gallery`` refreshes the committed gallery."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import types
from pathlib import Path

import pandas as pd
import pytest

from diagnostics import cli, experiments, gallery, plotting

ROOT = Path(__file__).resolve().parents[1]
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git executable")


def git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check, timeout=60)


@dataclasses.dataclass(frozen=True)
class _Config:
    points: int = 3

    @classmethod
    def quick(cls) -> _Config:
        return cls()


def _figure_experiment() -> types.ModuleType:
    """A tiny experiment whose figure depends on the seed (so reruns with another seed change its bytes)."""
    mod = types.ModuleType("fake_experiments.tinyfig")
    mod.NAME, mod.DESCRIPTION, mod.Config = "tinyfig", "a tiny figure for the gallery tests", _Config
    mod.cells = lambda config: [{"i": 0}]
    mod.run_cell = lambda config, cell, device, seed: pd.DataFrame(
        {"x": range(config.points), "y": [seed + k * k for k in range(config.points)]}
    )

    def plot(frame, config, out_dir):
        with plotting.style():
            fig = plotting.figure("single")
            fig.axes[0].plot(frame["x"], frame["y"])
            plotting.save_figure(fig, Path(out_dir) / "tinyfig")
        (Path(out_dir) / "table.md").write_text(f"| seed | {int(frame['seed'].iloc[0])} |\n")
        return [Path(out_dir) / "tinyfig"]

    mod.plot = plot
    return experiments.check_experiment(mod)


@pytest.fixture
def tinyfig(monkeypatch):
    mod = _figure_experiment()
    monkeypatch.setitem(experiments.REGISTRY, mod.NAME, mod)
    return mod


@needs_git
def test_gitignore_covers_outputs_but_not_the_gallery():
    if git(ROOT, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        pytest.skip("not a git checkout")
    outputs = [
        "figures/quick/transfer/transfer_functions.png",
        "figures/quick/transfer/transfer_functions.pdf",
        "figures/transfer/transfer_functions.pdf",
        "figures/some_new_experiment/x.png",
        "results/quick/transfer/results.csv",
        "results/transfer/cells/abc.csv",
    ]
    tracked = [
        "figures/README.md",
        "figures/gallery/transfer/transfer_functions.png",
        "figures/gallery/preconditioning/steps_to_threshold.md",
    ]
    for path in outputs:  # --no-index: judge by the ignore rules alone, tracked or not
        assert git(ROOT, "check-ignore", "-q", "--no-index", path, check=False).returncode == 0, path
    for path in tracked:
        assert git(ROOT, "check-ignore", "-q", "--no-index", path, check=False).returncode == 1, path
    gallery_files = git(ROOT, "ls-files", "figures").stdout.split()
    assert "figures/gallery/transfer/transfer_functions.png" in gallery_files
    assert all(f == "figures/README.md" or f.startswith("figures/gallery/") for f in gallery_files), gallery_files


@needs_git
def test_runs_leave_a_clone_clean_and_gallery_refresh(tinyfig, tmp_path, monkeypatch, capsys):
    # A clone-like layout: the repository's .gitignore and gallery README, everything committed.
    shutil.copy(ROOT / ".gitignore", tmp_path / ".gitignore")
    (tmp_path / "figures").mkdir()
    shutil.copy(ROOT / "figures" / "README.md", tmp_path / "figures" / "README.md")
    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q")
    quick = ["figures", "--only", "tinyfig", "--quick", "--no-progress"]

    # A maintainer refreshes the gallery: PNG and table copied, PDF left out; then commits everything.
    assert cli.main([*quick, "--gallery"]) == 0
    assert "gallery: 2 file(s) copied" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "figures" / "gallery" / "tinyfig").iterdir()) == [
        "table.md",
        "tinyfig.png",
    ]
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "gallery")
    assert sorted(git(tmp_path, "ls-files").stdout.split()) == [
        ".gitignore",
        "figures/README.md",
        "figures/gallery/tinyfig/table.md",
        "figures/gallery/tinyfig/tinyfig.png",
    ]

    # A user's runs (other numbers: another seed; quick and full size) change no tracked file and add none.
    before = (tmp_path / "figures" / "gallery" / "tinyfig" / "tinyfig.png").read_bytes()
    assert cli.main([*quick, "--seed", "7"]) == 0
    assert cli.main(["run", "tinyfig", "--seed", "7", "--no-progress"]) == 0
    assert (tmp_path / "figures" / "quick" / "tinyfig" / "tinyfig.png").read_bytes() != before
    assert (tmp_path / "figures" / "tinyfig" / "tinyfig.pdf").exists()
    assert git(tmp_path, "status", "--porcelain").stdout == ""

    # Refreshing from that run updates the gallery (and only the gallery).
    assert cli.main([*quick, "--seed", "7", "--gallery"]) == 0
    changed = git(tmp_path, "status", "--porcelain").stdout.splitlines()
    assert sorted(line.split()[-1] for line in changed) == [
        "figures/gallery/tinyfig/table.md",
        "figures/gallery/tinyfig/tinyfig.png",
    ]


def test_gallery_needs_quick(tinyfig, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["figures", "--only", "tinyfig", "--gallery", "--no-progress"]) == 2
    assert "--gallery needs --quick" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()  # checked before anything runs


def test_refresh_removes_stale_files_and_refuses_empty_sources(tmp_path):
    src, dst = tmp_path / "figs", tmp_path / "gallery"
    (src / "a").mkdir(parents=True)
    (src / "a" / "new.png").write_bytes(b"png")
    (src / "a" / "new.pdf").write_bytes(b"pdf")
    (dst / "a").mkdir(parents=True)
    (dst / "a" / "old.png").write_bytes(b"stale")
    (dst / "a" / "notes.txt").write_text("kept: not a gallery file type")
    assert gallery.refresh(src, ["a"], dst) == [dst / "a" / "new.png"]
    assert sorted(p.name for p in (dst / "a").iterdir()) == ["new.png", "notes.txt"]
    with pytest.raises(FileNotFoundError, match=r"no .png/.md figure files"):
        gallery.refresh(src, ["a", "missing"], dst)
    assert (dst / "a" / "new.png").read_bytes() == b"png"  # nothing touched by the failed refresh
