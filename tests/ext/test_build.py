"""The compiled kernels were built, are in use, and are never silently replaced."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys

import pytest

KERNELS = ["lanecore.ext._barcode", "lanecore.ext._lookup"]


@pytest.mark.parametrize("name", KERNELS)
def test_compiled_kernel_is_an_extension_module(name):
    mod = importlib.import_module(name)   # fails the suite when the build is missing
    assert mod.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    assert mod.IMPLEMENTATION == "cython"


def test_selected_kernels_follow_the_switch():
    from lanecore.ext import barcode, lookup
    want = "python" if os.environ.get("LANECORE_PURE") == "1" else "cython"
    assert barcode.IMPLEMENTATION == want
    assert lookup.IMPLEMENTATION == want


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in ("lanecore.ext._barcode", "lanecore.ext._lookup"):
            raise ImportError("pretend the build is missing")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize("module", ["lanecore.ext.barcode", "lanecore.ext.lookup"])
def test_missing_build_is_an_error_not_a_fallback(module):
    env = {k: v for k, v in os.environ.items() if k != "LANECORE_PURE"}
    proc = subprocess.run([sys.executable, "-c", BLOCK + f"import {module}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "missing or broken" in proc.stderr and "LANECORE_PURE=1" in proc.stderr


def test_pure_switch_selects_the_twins_on_purpose():
    env = dict(os.environ, LANECORE_PURE="1")
    code = BLOCK + ("from lanecore.ext import barcode, lookup;"
                    "print(barcode.IMPLEMENTATION, lookup.IMPLEMENTATION)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "python"]
