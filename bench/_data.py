"""Benchmark data made fast with numpy: unique GTIN-13 keys with valid check digits."""

from __future__ import annotations

import numpy as np

from lanecore.core.scan.synth import with_check_digit


def gtin13_keys(n: int, *, seed: int) -> np.ndarray:
    """``n`` unique GTIN-13s (as uint64) under ordinary prefixes 400-969 (no in-store
    ranges), in random order."""
    rng = np.random.default_rng(seed)
    payload = np.unique(rng.integers(400_000_000_000, 970_000_000_000, size=int(n * 1.05) + 16))
    rng.shuffle(payload)
    return with_check_digit(payload[:n].astype(np.int64)).astype(np.uint64)
