#!/usr/bin/env bash
# Install the way a user does: build the sdist and wheel, install the wheel into a fresh virtual
# environment outside the repository, and smoke-test it there (catches files that exist in the
# checkout but not in the package). The venv sees the machine's packages (torch, numpy, ...) so
# that nothing is downloaded; matfun itself comes from the wheel, which the test asserts.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m build --no-isolation --sdist --wheel --outdir "$work/dist" . > "$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log"; echo "smoke: building the sdist/wheel failed"; exit 1; }
python -m venv --system-site-packages "$work/venv"
"$work/venv/bin/python" -m pip install -q --no-deps "$work"/dist/matfun-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib, pathlib, subprocess, sys
import numpy as np, torch

import matfun
assert pathlib.Path(matfun.__file__).is_relative_to(pathlib.Path(sys.prefix)), matfun.__file__
for name in ("matfun.optim", "matfun.testing", "matfun.testing.optimizer", "matfun.testing.sharded",
             "matfun.monitor", "diagnostics", "diagnostics.cli", "diagnostics.validate",
             "diagnostics.validate_optimizer", "diagnostics.monitor_report", "diagnostics.experiments"):
    importlib.import_module(name)
assert (pathlib.Path(matfun.__file__).parent / "py.typed").is_file(), "py.typed missing from the wheel"
G = np.random.default_rng(0).standard_normal((48, 32))
assert np.allclose(matfun.newton_schulz(G).T @ matfun.newton_schulz(G), np.eye(32), atol=0.4)
assert isinstance(matfun.polar(torch.from_numpy(G)), torch.Tensor)
torch.set_num_threads(1)
report = matfun.testing.check_orthogonalizer(matfun.polar, seed=0)
assert report.passed, report.table()
out = subprocess.run([sys.executable, "-m", "diagnostics", "list"], capture_output=True, text=True, check=True).stdout
assert "lm" in out and "transfer" in out, out
print(f"smoke: matfun {matfun.__version__} from the wheel imports, maps, validates and lists experiments")
PY
