"""What `pip install .` installs: the lanecore package alone, with its compiled kernels."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lanecore

REPO = Path(__file__).parents[1]


@pytest.mark.skipif(os.environ.get("LANECORE_PURE") == "1",
                    reason="the wheel is the same whichever kernels the tests select")
def test_wheel_holds_only_lanecore_with_compiled_kernels(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(tmp_path.glob("lanecore-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"lanecore", f"lanecore-{lanecore.__version__}.dist-info"}
    for kernel in ("_barcode", "_lookup"):
        assert any(n.startswith(f"lanecore/ext/{kernel}.") and n.endswith(".so")
                   for n in names), kernel
    packages = subprocess.run(
        ["git", "ls-files", "--", "core/*__init__.py", "ext/*__init__.py",
         "drivers/*__init__.py", "gateway/*__init__.py"], cwd=REPO, check=True,
        capture_output=True, text=True).stdout.split()
    assert len(packages) >= 13 and "core/pay/__init__.py" in packages, packages
    for init in packages:                       # every room, e.g. core/pay/, gateway/net/
        assert f"lanecore/{init}" in names, init
    assert "lanecore/setup.py" not in names
    # the web console's files beside its code: every tracked template, script and catalogue
    console = subprocess.run(
        ["git", "ls-files", "--", "gateway/console/templates", "gateway/console/static",
         "gateway/console/locale"], cwd=REPO, check=True, capture_output=True,
        text=True).stdout.split()
    assert len(console) >= 10 and "gateway/console/templates/lanes.html" in console
    for path in console:
        assert f"lanecore/{path}" in names, path
    assert not any(n.startswith(("lanecore/tests/", "lanecore/bench/", "lanecore/.venv/"))
                   for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "lanecore = lanecore.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
