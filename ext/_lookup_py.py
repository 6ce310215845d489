"""Pure-Python twin of the compiled GTIN index (``_lookup.pyx``): a dict, same answers."""

from __future__ import annotations

import sys

import numpy as np

IMPLEMENTATION = "python"
MAX_LOAD = 0.7
MAX_KEY = 99999999999999


class GtinIndex:
    """GTIN-14 key (an int below 10**14) -> row number; -1 when absent."""

    def __init__(self, keys):
        k = np.ascontiguousarray(keys, dtype=np.uint64)
        self._map: dict[int, int] = {}
        for i, key in enumerate(k.tolist()):
            if key > MAX_KEY:
                raise ValueError(f"row {i}: key {key} is not a GTIN-14")
            prev = self._map.setdefault(key, i)
            if prev != i:
                raise ValueError(f"rows {prev} and {i} share GTIN {key:014d}")

    def __len__(self) -> int:
        return len(self._map)

    @property
    def capacity(self) -> int:
        return max(8, int(len(self._map) / MAX_LOAD) + 1)

    @property
    def nbytes(self) -> int:
        return sys.getsizeof(self._map)

    def lookup(self, key) -> int:
        """Row of ``key`` (int), or -1. Anything but a GTIN-14 int is absent."""
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            return -1
        key = int(key)
        if key < 0 or key > MAX_KEY:
            return -1
        return self._map.get(key, -1)

    def __contains__(self, key) -> bool:
        return self.lookup(key) >= 0

    def lookup_many(self, keys, out=None):
        """Rows of ``keys`` (uint64 array-like) as an int32 array; -1 where absent."""
        k = np.ascontiguousarray(keys, dtype=np.uint64)
        get = self._map.get
        res = np.fromiter((get(x, -1) for x in k.tolist()), dtype=np.int32, count=len(k))
        if out is not None:
            if out.shape[0] != len(k):
                raise ValueError("out has the wrong length")
            out[:] = res
            return out
        return res
