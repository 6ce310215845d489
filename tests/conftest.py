"""Shared fixtures: every kernel test runs on the compiled kernel and on its twin."""

from __future__ import annotations

import importlib
import os

import pytest
from hypothesis import HealthCheck, settings

# Shared, noisy machines: no per-example deadlines; CI runs a few more examples.
settings.register_profile("default", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
# A long soak before a release: HYPOTHESIS_PROFILE=soak make test
settings.register_profile("soak", deadline=None, max_examples=5000,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "default"))

BARCODE_IMPLS = {"compiled": "lanecore.ext._barcode", "twin": "lanecore.ext._barcode_py"}
LOOKUP_IMPLS = {"compiled": "lanecore.ext._lookup", "twin": "lanecore.ext._lookup_py"}


@pytest.fixture(params=list(BARCODE_IMPLS))
def bc(request):
    """The barcode kernel: compiled, then twin. An unbuilt compiled kernel fails here."""
    return importlib.import_module(BARCODE_IMPLS[request.param])


@pytest.fixture(params=list(LOOKUP_IMPLS))
def lk(request):
    """The GTIN index kernel: compiled, then twin."""
    return importlib.import_module(LOOKUP_IMPLS[request.param])


@pytest.fixture(scope="session")
def both_barcode():
    """(compiled, twin) barcode kernels, for tests that compare them."""
    return tuple(importlib.import_module(m) for m in BARCODE_IMPLS.values())
